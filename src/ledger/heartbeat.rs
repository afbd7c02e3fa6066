//! Worker liveness: each worker beats every few seconds; claims of a worker that stopped beating
//! (killed, frozen, cut off) are taken over by whoever receives the redelivered message.

use super::Ledger;

impl Ledger {
    /// Registers or refreshes this worker's heartbeat.
    pub async fn heartbeat(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO workers (id) VALUES ($1)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(&self.worker_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// On exit: forget this worker and hand back any claim it still holds. Such a claim belongs to a
    /// send cut off by the shutdown grace period, so its outcome is unknown: it is marked in doubt.
    pub async fn retire(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE deliveries SET owner = NULL, lease_until = NULL,
                    in_doubt_since = COALESCE(in_doubt_since, claimed_at)
             WHERE owner = $1 AND status IN ('pending', 'retrying')",
        )
        .bind(&self.worker_id)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(&self.worker_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
