//! The idempotency ledger in Postgres: one row per delivery key (`deliveries`), one per HTTP
//! attempt (`delivery_attempts`), and the live workers whose claims are respected (`workers`).
//!
//! A delivery's life: [`Ledger::claim`] (one atomic `INSERT … ON CONFLICT`), then exactly one
//! [`Ledger::record`] (attempt and outcome in one statement) by the claim's holder.

mod claim;
mod heartbeat;
mod record;

use std::time::Duration;

use sqlx::PgPool;

pub use claim::{Claim, ClaimRequest, Claimed};
pub use record::{AttemptRecord, Finish};

/// A delivery's status column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Sent,
    Retrying,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Retrying => "retrying",
            Status::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Status::Pending, Status::Sent, Status::Retrying, Status::Dead]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

#[derive(Clone)]
pub struct Ledger {
    pool: PgPool,
    worker_id: String,
    /// How long a claim protects a delivery from other workers, whatever happens to its holder.
    lease: Duration,
    /// A holder that has not beaten this long is presumed dead; its claims are taken over.
    liveness: Duration,
}

impl Ledger {
    pub fn new(pool: PgPool, worker_id: String) -> Self {
        Self {
            pool,
            worker_id,
            lease: Duration::from_secs(120),
            liveness: Duration::from_secs(10),
        }
    }

    /// How often [`Ledger::heartbeat`] should run so the worker stays "alive" to others.
    pub fn heartbeat_interval(&self) -> Duration {
        self.liveness / 4
    }
}
