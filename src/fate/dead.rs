//! Why a message went to the dead-letter queue, and the readable cause it carries.

/// Why a message went to the dead-letter queue: the `wxnotify-reason` header
/// (docs/interface.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadReason {
    InvalidEvent,
    NoTemplate,
    RenderFailed,
    PermanentError,
    RetriesExhausted,
    DeliveryLimit,
    Ambiguous,
    /// A third-party platform's merchant that is not `active` (docs/interface.md §10): replayable
    /// once it authorizes again.
    Unauthorized,
}

impl DeadReason {
    /// Every reason, for metrics registered at start-up.
    pub(crate) const ALL: [DeadReason; 8] = [
        DeadReason::InvalidEvent,
        DeadReason::NoTemplate,
        DeadReason::RenderFailed,
        DeadReason::PermanentError,
        DeadReason::RetriesExhausted,
        DeadReason::DeliveryLimit,
        DeadReason::Ambiguous,
        DeadReason::Unauthorized,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeadReason::InvalidEvent => "invalid_event",
            DeadReason::NoTemplate => "no_template",
            DeadReason::RenderFailed => "render_failed",
            DeadReason::PermanentError => "permanent_error",
            DeadReason::RetriesExhausted => "retries_exhausted",
            DeadReason::DeliveryLimit => "delivery_limit",
            DeadReason::Ambiguous => "ambiguous",
            DeadReason::Unauthorized => "unauthorized",
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
