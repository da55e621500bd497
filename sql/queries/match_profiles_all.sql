-- Every enabled profile, for the inverted index rebuild.
SELECT p.profile_id, p.owner, p.filter
FROM killboard.profiles p
WHERE p.enabled
