//! The vocabulary of a message's fate, owned here and only here: [`Plan`] (everything to do with
//! one message), [`Outcome`] (what happens to the broker message), [`Finish`] (the delivery's
//! new state in the ledger, with its [`Status`]), [`DeadReason`], [`DueFate`] (a waiting
//! delivery's fate when it falls due) and [`Reopen`] (what a replay copy may do).
//!
//! The judge (`crate::delivery::judge`) makes plans from these words; the ledger flattens a
//! [`Finish`] into its columns; carry-out executes the plan. This module imports none of them.

mod dead;
mod due;
mod finish;
mod replay;

use std::time::Duration;

#[cfg(test)]
pub(crate) use dead::ERROR_TEXT_MAX;
pub(crate) use dead::{DeadLetter, DeadReason, one_line};
pub(crate) use due::DueFate;
pub(crate) use finish::{CancelledBy, Doubt, Finish, Status, Suppressed};
pub(crate) use replay::{Reopen, ReplayRow};

/// What happens to the broker message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done: sent now, or a copy of a delivery that is already final.
    Ack,
    /// Back to the work queue now (the token was replaced); the retry budget is untouched.
    Requeue,
    /// Through a retry queue after `delay`.
    RetryLater { delay: Duration },
    /// To the dead-letter queue with its reason, once.
    DeadLetter(DeadLetter),
    /// Handed back to the broker as it is (nack with requeue): our own step failed, another
    /// delivery of it decides again.
    Release,
}

impl Outcome {
    pub(crate) fn dead(reason: DeadReason, errcode: Option<i64>, error: &str) -> Self {
        Outcome::DeadLetter(DeadLetter {
            reason,
            errcode,
            error: one_line(error),
        })
    }

    /// Every label [`Outcome::label`] can give: the values of `wxnotify_messages_total{outcome}`.
    pub(crate) fn labels() -> impl Iterator<Item = &'static str> {
        ["ack", "requeue", "retry", "release"]
            .into_iter()
            .chain(DeadReason::ALL.iter().map(|r| r.as_str()))
    }

    /// A label for metrics and logs.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Requeue => "requeue",
            Outcome::RetryLater { .. } => "retry",
            Outcome::DeadLetter(d) => d.reason.as_str(),
            Outcome::Release => "release",
        }
    }
}

/// Everything to do with one message, decided.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub outcome: Outcome,
    /// The ledger write for the claimed delivery (or, before any claim, the dead row of a
    /// delivery that cannot be sent); `None`: nothing to record.
    pub finish: Option<Finish>,
    /// Replace this token generation of the delivery's app, if it is still the current one.
    pub replace_token: Option<i64>,
    /// Counted failed attempts after this step (the `wxnotify-attempts` header).
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_label_is_listed_once() {
        let labels: Vec<_> = Outcome::labels().collect();
        let mut unique = labels.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), labels.len());
        for o in [
            Outcome::Ack,
            Outcome::Requeue,
            Outcome::RetryLater { delay: Duration::ZERO },
            Outcome::Release,
            Outcome::dead(DeadReason::Ambiguous, None, "x"),
        ] {
            assert!(labels.contains(&o.label()), "{o:?}");
        }
    }
}
