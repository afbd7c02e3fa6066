//! A delivery's state in the ledger: its [`Status`], and the [`Finish`] a step writes.

use super::dead::{DeadReason, one_line};

/// A delivery's status column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Pending,
    Sent,
    Retrying,
    Dead,
    /// Waiting for its `due_at` (docs/interface.md §8).
    Scheduled,
    Cancelled,
    Expired,
    /// Not sent: the user unfollowed (docs/interface.md §9), or gave no consent (§12).
    Suppressed,
}

impl Status {
    const ALL: [Status; 8] = [
        Status::Pending,
        Status::Sent,
        Status::Retrying,
        Status::Dead,
        Status::Scheduled,
        Status::Cancelled,
        Status::Expired,
        Status::Suppressed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Retrying => "retrying",
            Status::Dead => "dead",
            Status::Scheduled => "scheduled",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::Suppressed => "suppressed",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Nothing more will be sent for a delivery in this state by a copy of its message. A
    /// `scheduled` delivery is the due-delivery loop's to release: a copy is a duplicate too.
    pub(crate) fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Retrying)
    }
}

/// Whether this step's send may have reached WeChat without us knowing (timeout, reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Doubt {
    /// WeChat answered, or nothing was sent.
    Settled,
    /// No usable answer: WeChat may have delivered it.
    MayHaveArrived,
}

/// The event that cancelled a delivery (its template's `cancelled_by`, docs/interface.md §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CancelledBy {
    pub event_id: String,
    pub event_type: String,
}

/// Why a delivery was not sent although nothing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Suppressed {
    /// The recipient does not follow the account (a template message; docs/interface.md §9).
    Unfollowed,
    /// No subscription consent left for the template (a subscribe message; §12).
    NoConsent,
}

/// `last_error` of a delivery suppressed for want of consent (the views count it by this text).
const NO_CONSENT: &str = "no subscription consent";

/// The delivery's state after a step: exactly the states a step can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finish {
    /// WeChat accepted it (with its msgid, when it gave one).
    Sent { msgid: Option<i64> },
    /// Waits for another attempt.
    Retrying {
        errcode: Option<i64>,
        /// One line, bounded (see [`one_line`]).
        error: String,
        doubt: Doubt,
    },
    /// Given up: dead-lettered with its reason.
    Dead {
        reason: DeadReason,
        errcode: Option<i64>,
        error: String,
        doubt: Doubt,
    },
    /// Not sent, and not a failure (ledger only, no dead letter).
    Suppressed(Suppressed),
    /// Not sent before the template's `not_after` (ledger only, no dead letter).
    Expired { error: String },
    /// Not sent: an event of its template's `cancelled_by` came first (ledger only).
    Cancelled(CancelledBy),
}

impl Finish {
    pub(crate) fn retrying(errcode: Option<i64>, error: &str, doubt: Doubt) -> Self {
        Finish::Retrying {
            errcode,
            error: one_line(error),
            doubt,
        }
    }

    pub(crate) fn dead(reason: DeadReason, errcode: Option<i64>, error: &str, doubt: Doubt) -> Self {
        Finish::Dead {
            reason,
            errcode,
            error: one_line(error),
            doubt,
        }
    }

    pub(crate) fn expired(error: &str) -> Self {
        Finish::Expired { error: one_line(error) }
    }

    pub(crate) fn status(&self) -> Status {
        match self {
            Finish::Sent { .. } => Status::Sent,
            Finish::Retrying { .. } => Status::Retrying,
            Finish::Dead { .. } => Status::Dead,
            Finish::Suppressed(_) => Status::Suppressed,
            Finish::Expired { .. } => Status::Expired,
            Finish::Cancelled(_) => Status::Cancelled,
        }
    }

    /// WeChat accepted it and said so with a msgid: this record wins over any other.
    pub(crate) fn is_proven_sent(&self) -> bool {
        matches!(self, Finish::Sent { msgid: Some(_) })
    }

    pub(crate) fn msgid(&self) -> Option<i64> {
        match self {
            Finish::Sent { msgid } => *msgid,
            _ => None,
        }
    }

    pub(crate) fn errcode(&self) -> Option<i64> {
        match self {
            Finish::Retrying { errcode, .. } | Finish::Dead { errcode, .. } => *errcode,
            _ => None,
        }
    }

    /// The row's `last_error`.
    pub(crate) fn error(&self) -> Option<String> {
        match self {
            Finish::Retrying { error, .. } | Finish::Dead { error, .. } | Finish::Expired { error } => {
                Some(error.clone())
            }
            Finish::Suppressed(Suppressed::Unfollowed) => {
                Some("the recipient does not follow the account (unsubscribe push or 43004); not sent".into())
            }
            Finish::Suppressed(Suppressed::NoConsent) => Some(NO_CONSENT.into()),
            Finish::Cancelled(by) => Some(format!("cancelled by {} {}", by.event_type, by.event_id)),
            Finish::Sent { .. } => None,
        }
    }

    /// The row's `cancelled_by`: the cancelling event's id.
    pub(crate) fn cancelled_by(&self) -> Option<&str> {
        match self {
            Finish::Cancelled(by) => Some(&by.event_id),
            _ => None,
        }
    }

    pub(crate) fn dead_reason(&self) -> Option<DeadReason> {
        match self {
            Finish::Dead { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    pub(crate) fn doubt(&self) -> Doubt {
        match self {
            Finish::Retrying { doubt, .. } | Finish::Dead { doubt, .. } => *doubt,
            _ => Doubt::Settled,
        }
    }
}
