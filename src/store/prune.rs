//! Retention: removing old activities whose every delivery succeeded.

use super::{Store, StoreResult, writer};
use crate::domain::Timestamp;

impl Store {
    /// Deletes up to `batch` activities inserted before `cutoff` that had deliveries
    /// and whose deliveries are all `delivered` (the deliveries go with them).
    /// Activities that never had a delivery, and any with a pending or failed one, are
    /// kept. Returns how many activities were deleted.
    pub async fn prune_delivered_batch(&self, cutoff: Timestamp, batch: i64) -> StoreResult<u64> {
        const SQL: &str = "DELETE FROM activities WHERE id IN (\
             SELECT a.id FROM activities a WHERE a.inserted_at < $1 \
             AND EXISTS (SELECT 1 FROM deliveries d WHERE d.activity_id = a.id) \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.activity_id = a.id AND d.status <> 'delivered') \
             ORDER BY a.inserted_at LIMIT $2)";
        Ok(writer!(self, |pool| {
            sqlx::query(SQL)
                .bind(cutoff)
                .bind(batch)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?)
    }

    /// Prunes in batches until nothing before `cutoff` is left to prune; returns the
    /// number of activities deleted. Batches keep each transaction short.
    pub async fn prune_delivered(&self, cutoff: Timestamp, batch: i64) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let deleted = self.prune_delivered_batch(cutoff, batch).await?;
            total += deleted;
            if deleted < batch as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}
