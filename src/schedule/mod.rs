//! Deliveries that wait for their time (docs/interface.md §8), in one place:
//!
//! - [`timing`]: the rules a template gives (`send_at`, `not_after`, quiet hours), pure;
//! - [`due()`]: the judge's part, what becomes of a delivery when its time comes, pure;
//! - `store`: holding an event's waiting deliveries and cancellations in the ledger, and taking
//!   due rows (`FOR UPDATE SKIP LOCKED`);
//! - `holds`: the events in flight hold theirs in one transaction, batched;
//! - `release`: the loop that publishes due deliveries back to the work queue.
//!
//! A delivery that goes is sent by the ordinary trip (`crate::delivery`), with every guarantee.

mod holds;
pub(crate) mod release;
mod store;
pub(crate) mod timing;

use chrono::{DateTime, Utc};

use crate::fate::DueFate;
pub(crate) use holds::{HoldRequest, Holds};
pub(crate) use release::Releaser;
pub(crate) use store::{Cancellation, Waiting};
pub(crate) use timing::QuietHours;

/// A waiting delivery whose `due_at` came: released to the work queue (sent as its own message),
/// deferred to the end of quiet hours, or expired when it cannot go out before `not_after`.
pub(crate) fn due(not_after: Option<DateTime<Utc>>, quiet_hours: Option<QuietHours>, now: DateTime<Utc>) -> DueFate {
    let go = quiet_hours.map_or(now, |q| q.release(now));
    match not_after {
        Some(limit) if go > limit => DueFate::Expired,
        _ if go > now => DueFate::Deferred(go),
        _ => DueFate::Released,
    }
}
