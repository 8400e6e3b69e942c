//! What `GET /metrics` reads from the database at each scrape: counts every replica shares (the
//! run queue, machines by health) and this replica's pool.

use super::{Store, StoreResult, on_db};
use crate::metrics::PoolState;

impl Store {
    /// `(kind, status, count)` of the runs queued or running now, across every replica.
    pub async fn active_run_counts(&self) -> StoreResult<Vec<(String, String, i64)>> {
        Ok(on_db!(self, |pool| sqlx::query_as(
            "SELECT kind, status, COUNT(*) FROM runs WHERE status IN ('queued', 'running') \
             GROUP BY kind, status"
        )
        .fetch_all(pool)
        .await)?)
    }

    /// `(health, count)` of the machines of deployments that are not destroyed.
    pub async fn machine_health_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(on_db!(self, |pool| {
            sqlx::query_as(
            "SELECT m.status, COUNT(*) FROM machines m JOIN deployments d ON d.id = m.deployment_id \
             WHERE d.status <> 'destroyed' GROUP BY m.status"
        )
        .fetch_all(pool)
        .await
        })?)
    }

    /// The pool's open, idle and most connections.
    pub fn pool_state(&self) -> PoolState {
        on_db!(self, |pool| PoolState {
            open: pool.size(),
            idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
            max: pool.options().get_max_connections(),
        })
    }
}
