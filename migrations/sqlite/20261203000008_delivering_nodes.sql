-- Whether a node runs delivery workers (CONVERGER_DELIVERY_ENABLED). A channel's
-- rate_limit is shared among the live nodes that deliver: a node serving the API
-- alone takes no share. Rows written before this column are taken to deliver, as
-- every node did. Kept in step with
-- migrations/postgres/20261203000008_delivering_nodes.sql.
ALTER TABLE nodes ADD COLUMN delivers BOOLEAN NOT NULL DEFAULT TRUE;
