-- Sentinel relations of the profile and SDE caches, and the owner whose rights
-- the caches use to read every profile (row security applies per user, the
-- caches are per backend).
SELECT c.oid AS profiles_oid, 'killboard.sde_types'::regclass::oid AS sde_oid, c.relowner AS owner_oid
FROM pg_catalog.pg_class c
WHERE c.oid = 'killboard.profiles'::regclass
