//! Worker liveness: each worker beats every few seconds; claims of a worker that stopped beating
//! (killed, frozen, cut off) are taken over by whoever receives the redelivered message.

use super::Ledger;

impl Ledger {
    /// The send of claimed delivery `id` starts: until [`Ledger::sent`], its outcome is unknown
    /// if this worker stops.
    pub(crate) fn sending(&self, id: i64) {
        self.sending.lock().expect("sending set").insert(id);
    }

    /// The outcome of delivery `id`'s send is recorded (or was never in question).
    pub(crate) fn sent(&self, id: i64) {
        self.sending.lock().expect("sending set").remove(&id);
    }

    /// Registers or refreshes this worker's heartbeat; the live workers, this one included (the
    /// fleet's rate limit is shared among them). One statement: the count reads the table as it
    /// was before this beat, so it counts the others and adds this one.
    pub(crate) async fn heartbeat(&self) -> Result<u64, sqlx::Error> {
        let live: i64 = sqlx::query_scalar(
            "WITH beat AS (
                INSERT INTO workers (id) VALUES ($1)
                ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
             )
             SELECT 1 + count(*) FROM workers
              WHERE id <> $1 AND heartbeat_at > now() - make_interval(secs => $2)",
        )
        .bind(&self.worker_id)
        .bind(self.liveness.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(live).unwrap_or(1))
    }

    /// On exit: forget this worker and hand back any claim it still holds. A claim whose send had
    /// started (and whose outcome was not recorded) was cut off by the shutdown grace period: its
    /// outcome is unknown, so it is marked in doubt. One that never reached its send is not.
    pub(crate) async fn retire(&self) -> Result<(), sqlx::Error> {
        let sending: Vec<i64> = self.sending.lock().expect("sending set").iter().copied().collect();
        sqlx::query(
            "UPDATE deliveries SET owner = NULL, lease_until = NULL,
                    in_doubt_since = CASE WHEN id = ANY($2) THEN COALESCE(in_doubt_since, claimed_at)
                                          ELSE in_doubt_since END
             WHERE owner = $1 AND status IN ('pending', 'retrying')",
        )
        .bind(&self.worker_id)
        .bind(&sending)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(&self.worker_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
