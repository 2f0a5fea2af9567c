//! Routing rule queries, scoped by tenant.

use std::collections::{HashMap, HashSet};

use super::{Store, StoreError, StoreResult, reader, writer};
use crate::domain::{ChannelId, ChannelType, Route, RouteDirection, RouteId, TenantId, Timestamp};

/// One forwarding target of a channel.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RouteTarget {
    pub target_channel_id: ChannelId,
    #[sqlx(try_from = "String")]
    pub direction: RouteDirection,
    #[sqlx(try_from = "String")]
    pub target_type: ChannelType,
}

/// The name under which [`Store::insert_route`] reports a route that would
/// close a cycle, as if it were a constraint of the schema (which cannot express it).
const ROUTES_ACYCLIC: &str = "routes_acyclic";

const COLUMNS: &str =
    "id, tenant_id, source_channel_id, target_channel_id, direction, inserted_at, updated_at";

impl Store {
    /// Inserts a route unless it would close a directed cycle in the tenant's route
    /// graph (whatever the direction filters), which fails with
    /// `Conflict { constraint: "routes_acyclic" }`. The caller has checked both channels
    /// belong to the tenant. There is no insert without the check: a route graph with
    /// a cycle is one the API could not have built.
    ///
    /// The check and the insert share one transaction that first touches the tenant's
    /// row: that takes the row lock (PostgreSQL) or the database write lock (SQLite),
    /// so two concurrent inserts cannot each pass the check and together close a cycle.
    pub async fn insert_route(
        &self,
        tenant_id: TenantId,
        source: ChannelId,
        target: ChannelId,
        direction: RouteDirection,
    ) -> StoreResult<Route> {
        // Not `SELECT ... FOR UPDATE`, which SQLite lacks. A key-preserving update takes
        // PostgreSQL's `FOR NO KEY UPDATE` lock, which does not block the foreign-key
        // checks of concurrent inserts referencing the tenant.
        const LOCK_TENANT: &str = "UPDATE tenants SET updated_at = updated_at WHERE id = $1";
        const EDGES: &str =
            "SELECT source_channel_id, target_channel_id FROM routes WHERE tenant_id = $1";
        const INSERT: &str = const_format::concatcp!(
            "INSERT INTO routes (id, tenant_id, source_channel_id, target_channel_id, direction, inserted_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING ",
            COLUMNS
        );
        writer!(self, |pool| {
            let mut tx = pool.begin().await?;
            let locked = sqlx::query(LOCK_TENANT)
                .bind(tenant_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if locked == 0 {
                tx.rollback().await?;
                return Err(StoreError::NotFound);
            }
            let edges: Vec<(ChannelId, ChannelId)> = sqlx::query_as(EDGES)
                .bind(tenant_id)
                .fetch_all(&mut *tx)
                .await?;
            if reaches(&edges, target, source) {
                tx.rollback().await?;
                return Err(StoreError::Conflict {
                    constraint: ROUTES_ACYCLIC.to_owned(),
                });
            }
            let route: Route = sqlx::query_as(INSERT)
                .bind(RouteId::new())
                .bind(tenant_id)
                .bind(source)
                .bind(target)
                .bind(direction.as_str())
                .bind(Timestamp::now())
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            self.cache().invalidate();
            Ok(route)
        })
    }

    /// A page of a tenant's routes, oldest first: those from `source` when given, after
    /// the route `after` (ids are time-ordered).
    pub async fn list_routes(
        &self,
        tenant_id: TenantId,
        source: Option<ChannelId>,
        after: Option<RouteId>,
        limit: i64,
    ) -> StoreResult<Vec<Route>> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM routes WHERE tenant_id = $1 AND ($2 IS NULL OR source_channel_id = $2) \
             AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4"
        );
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(source)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Where activities of conversations on `source` are forwarded: the targets of its
    /// routes whose channel is active; served from the read cache when this node read
    /// them within the last second.
    pub async fn list_route_targets(
        &self,
        tenant_id: TenantId,
        source: ChannelId,
    ) -> StoreResult<Vec<RouteTarget>> {
        const SQL: &str = "SELECT r.target_channel_id, r.direction, t.type AS target_type \
             FROM routes r JOIN channels t ON t.id = r.target_channel_id \
             WHERE r.tenant_id = $1 AND r.source_channel_id = $2 AND t.status = 'active' ORDER BY r.id";
        let cache = &self.cache().routes;
        let generation = self.cache().generation();
        if let Some(targets) = cache.get(&(tenant_id, source), generation) {
            return Ok(targets);
        }
        let targets: Vec<RouteTarget> = reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(source)
                .fetch_all(pool)
                .await
        })?;
        cache.put((tenant_id, source), targets.clone(), generation);
        Ok(targets)
    }

    /// Deletes a route of a tenant.
    pub async fn delete_route(&self, tenant_id: TenantId, id: RouteId) -> StoreResult<()> {
        let done = writer!(self, |pool| {
            sqlx::query("DELETE FROM routes WHERE tenant_id = $1 AND id = $2")
                .bind(tenant_id)
                .bind(id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        self.cache().invalidate();
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

/// Whether `to` can be reached from `from` along the directed `edges` (source, target).
/// A channel reaches itself.
fn reaches(edges: &[(ChannelId, ChannelId)], from: ChannelId, to: ChannelId) -> bool {
    let mut next: HashMap<ChannelId, Vec<ChannelId>> = HashMap::new();
    for &(source, target) in edges {
        next.entry(source).or_default().push(target);
    }
    let mut seen = HashSet::from([from]);
    let mut stack = vec![from];
    while let Some(channel) = stack.pop() {
        if channel == to {
            return true;
        }
        for &target in next.get(&channel).into_iter().flatten() {
            if seen.insert(target) {
                stack.push(target);
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachability_follows_directed_edges() {
        let [a, b, c, d] = [(); 4].map(|()| ChannelId::new());
        let edges = [(a, b), (b, c), (d, c)];
        assert!(reaches(&edges, a, c));
        assert!(reaches(&edges, a, a));
        assert!(!reaches(&edges, c, a), "edges are directed");
        assert!(!reaches(&edges, a, d));
        // A diamond and a back edge elsewhere terminate.
        let edges = [(a, b), (a, c), (b, d), (c, d), (d, c)];
        assert!(reaches(&edges, a, d));
        assert!(!reaches(&edges, d, a));
    }
}
