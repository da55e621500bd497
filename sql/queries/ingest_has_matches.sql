-- Whether any of the killmails ingest has just stored already has match rows
-- (left by a delete that bypassed the cascade triggers, or written by hand):
-- then matches go in with ON CONFLICT DO NOTHING.
SELECT EXISTS (SELECT 1 FROM killboard.profile_matches m WHERE m.killmail_id = ANY ($1::int8[]))
