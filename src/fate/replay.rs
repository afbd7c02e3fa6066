//! What a `dlq replay` copy may do to a `dead` delivery (docs/interface.md §3).

use chrono::{DateTime, Utc};

/// What a `dlq replay` copy may do, from its row in `dlq_replays` (looked up by the copy's replay
/// id and event id; no row: the copy is an ordinary duplicate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reopen {
    /// Not a replay: a `dead` delivery stays dead.
    No,
    /// Reopen a `dead` delivery; any doubt stays (the judge dead-letters it again if in doubt).
    KeepDoubt,
    /// Reopen and clear a doubt older than the replay: an operator replayed reason `ambiguous` by
    /// name at `replayed_at`. A doubt the replay's own send created is newer, and stays: a copy of
    /// the replay redelivered later does not resend behind anyone's back.
    ClearDoubtBefore(DateTime<Utc>),
}

/// A copy's `dlq_replays` row: the dead letter's reason, the reason the operator filtered by (if
/// any), and when the replay was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplayRow {
    pub dead_reason: String,
    pub by_reason: Option<String>,
    pub replayed_at: DateTime<Utc>,
}
