-- The notifications of matches ingest wrote, payloads built as the deferred
-- trigger (_match_on_write) builds them, in order.
SELECT pg_catalog.count(pg_catalog.pg_notify('killboard_match', p)) FROM unnest($1::text[]) AS p
