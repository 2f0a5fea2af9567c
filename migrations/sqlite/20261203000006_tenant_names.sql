-- Tenant names are unique, compared without case: the CLI and the admin panel find a
-- tenant by name, so two tenants called `acme` and `Acme` could not be told apart.
--
-- Existing duplicates are renamed first, deterministically: in each group of names
-- equal without case, the oldest tenant (by creation time, then id) keeps its name
-- and the others get `-2`, `-3`, ... in creation order. Should such a name be taken
-- already, the tenant's id (hex) is appended as well. Nothing else changes: ids, API
-- keys and everything the tenants own stay as they were.
CREATE TEMP TABLE tenant_renames AS
SELECT id, name || '-' || n AS candidate
FROM (
    SELECT id, name,
           ROW_NUMBER() OVER (PARTITION BY lower(name) ORDER BY inserted_at, id) AS n
    FROM tenants
)
WHERE n > 1;

UPDATE tenant_renames
SET candidate = candidate || '-' || lower(hex(id))
WHERE lower(candidate) IN (SELECT lower(name) FROM tenants);

UPDATE tenants
SET name = (SELECT candidate FROM tenant_renames WHERE tenant_renames.id = tenants.id)
WHERE id IN (SELECT id FROM tenant_renames);

DROP TABLE tenant_renames;

-- SQLite's lower() folds ASCII letters only; PostgreSQL's folds every letter.
CREATE UNIQUE INDEX tenants_name_key ON tenants (lower(name));
