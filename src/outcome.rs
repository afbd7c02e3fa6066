//! The one decision about a message: [`Outcome`]. The worker computes it; carrying it out
//! (ack, republish, dead-letter) is mechanical and lives in `worker::carry_out`.

use std::time::Duration;

/// Why a message went to the dead-letter queue: the `wxnotify-reason` header (CONTRACT §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    InvalidEvent,
    NoTemplate,
    RenderFailed,
    PermanentError,
    RetriesExhausted,
    DeliveryLimit,
    Ambiguous,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
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

/// A dead letter's readable cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: DeadReason,
    pub errcode: Option<i64>,
    /// One line, no secrets.
    pub error: String,
}

/// The fate of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: sent now, or a copy of a delivery that is already final.
    Ack,
    /// Back to the work queue now (the token was replaced); the retry budget is untouched.
    Requeue,
    /// Through a retry queue after `delay`; `counted` uses up one attempt of the budget.
    RetryLater { delay: Duration, counted: bool },
    /// To the dead-letter queue with its reason, once.
    DeadLetter(DeadLetter),
}

impl Outcome {
    pub fn dead(reason: DeadReason, errcode: Option<i64>, error: impl Into<String>) -> Self {
        let error: String = error.into();
        let one_line = error.replace(['\n', '\r'], " ");
        Outcome::DeadLetter(DeadLetter {
            reason,
            errcode,
            error: crate::event::truncate(&one_line, 500).to_string(),
        })
    }

    /// A label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Requeue => "requeue",
            Outcome::RetryLater { .. } => "retry",
            Outcome::DeadLetter(d) => d.reason.as_str(),
        }
    }
}
