-- One enabled profile's filter, on a compiled-profile cache miss.
SELECT p.filter::text FROM killboard.profiles p WHERE p.profile_id = $1 AND p.enabled
