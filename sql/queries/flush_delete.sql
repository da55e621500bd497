-- Stats rows the flush holds locked and emptied, by the ctid it locked them
-- at (a TID scan: no plan that could scan the store per key).
DELETE FROM killboard.stats WHERE ctid = ANY($1::tid[])
