//! A waiting delivery's fate when its `due_at` comes (docs/interface.md §8).

use chrono::{DateTime, Utc};

/// What becomes of one due row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DueFate {
    /// Published to the work queue: the row waits there as `pending`.
    Released,
    /// Inside quiet hours: due again at this instant.
    Deferred(DateTime<Utc>),
    /// Past `not_after`: never sent.
    Expired,
}

impl DueFate {
    /// The label of `wxnotify_due_total{fate}`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            DueFate::Released => "released",
            DueFate::Deferred(_) => "deferred",
            DueFate::Expired => "expired",
        }
    }
}
