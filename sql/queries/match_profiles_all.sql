-- Every enabled profile, for the inverted index rebuild; id order makes the
-- index's slot order id order.
SELECT p.profile_id, p.owner, p.filter::text
FROM killboard.profiles p
WHERE p.enabled
ORDER BY p.profile_id
