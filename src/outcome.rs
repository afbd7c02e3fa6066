//! The vocabulary of a message's fate: [`Plan`] (everything to do), [`Outcome`] (what happens to
//! the broker message), [`DeadReason`]. Only [`crate::delivery::judge`] makes plans;
//! [`crate::delivery::carry_out`] executes them.

use std::time::Duration;

use crate::ledger::Finish;

/// Why a message went to the dead-letter queue: the `wxnotify-reason` header (CONTRACT §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadReason {
    InvalidEvent,
    NoTemplate,
    RenderFailed,
    PermanentError,
    RetriesExhausted,
    DeliveryLimit,
    Ambiguous,
}

impl DeadReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeadReason::InvalidEvent => "invalid_event",
            DeadReason::NoTemplate => "no_template",
            DeadReason::RenderFailed => "render_failed",
            DeadReason::PermanentError => "permanent_error",
            DeadReason::RetriesExhausted => "retries_exhausted",
            DeadReason::DeliveryLimit => "delivery_limit",
            DeadReason::Ambiguous => "ambiguous",
        }
    }
}

/// Longest error text in a header or a ledger row, in characters.
pub(crate) const ERROR_TEXT_MAX: usize = 500;

/// An error text fit for a header and a ledger row: one line, no NUL, at most
/// [`ERROR_TEXT_MAX`] characters.
pub(crate) fn one_line(error: &str) -> String {
    let cleaned: String = error
        .chars()
        .map(|c| if c == '\n' || c == '\r' || c == '\0' { ' ' } else { c })
        .collect();
    crate::event::truncate(&cleaned, ERROR_TEXT_MAX).to_string()
}

/// A dead letter's readable cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub reason: DeadReason,
    pub errcode: Option<i64>,
    /// One line, no secrets.
    pub error: String,
}

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
