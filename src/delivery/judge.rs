//! The judge: every decision about a message, here and nowhere else. It sees what is known about
//! the delivery ([`Facts`]) and what just happened, applies the policy ([`RetryPolicy`]) and
//! answers with a [`Plan`] that says everything to do. Two questions, two pure functions:
//! [`stop_before_send`] at the gates before a send ([`Gate`]), [`judge`] after a step ended ([`Step`]);
//! and for a delivery waiting in the ledger, [`crate::schedule::due`] when its time comes.
//! No I/O, no clock, no context: unit tests call them over the whole fate table.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::intake::Meta;
use crate::fate::{CancelledBy, DeadReason, Doubt, DueFate, Finish, Outcome, Plan, Reopen, ReplayRow, Suppressed};
use crate::retry::{Backoff, ErrorClass, RetryPolicy, classify_send};
use crate::schedule::{QuietHours, due};
use crate::token::TokenError;
use crate::wechat::Api;

/// What is known about the message and its delivery when the judge is asked.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub api: Api,
    /// Counted failed attempts before this step (`wxnotify-attempts`).
    pub failed_before: u32,
    /// Times this message went straight back to the work queue for a rejected token.
    pub token_requeues: u32,
    /// Times the broker handed this message out before without it being settled.
    pub redeliveries: u32,
    /// How long an earlier send of this delivery may have been with WeChat, by the database's
    /// clock; `None` when no send is in doubt.
    pub in_doubt_for: Option<Duration>,
    /// Why the delivery's message could not be rendered (a retry copy after a template change).
    pub render_error: Option<String>,
    /// The template's `not_after` for this delivery: not sent after it (docs/interface.md §8).
    pub not_after: Option<DateTime<Utc>>,
    /// The template's quiet hours: not sent inside them.
    pub quiet_hours: Option<QuietHours>,
    /// The recipient does not follow the app (docs/interface.md §9): template messages are not sent.
    pub unfollowed: bool,
    /// An event of the template's `cancelled_by` cancelled this delivery while it was being
    /// sent or dead (docs/interface.md §8): never sent, whichever copy comes (a retry, a replay).
    pub cancelled_by: Option<CancelledBy>,
    /// What the consent ledger said (docs/interface.md §12).
    pub consent: ConsentSeen,
    /// The current time, for errors that say until when to wait, expiry and quiet hours.
    pub now: DateTime<Utc>,
}

/// A subscribe delivery's consent, as the ledger answered (docs/interface.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsentSeen {
    /// Not tracked (a template message, or a template not marked `consent = "tracked"`), or not
    /// asked yet.
    NotTracked,
    /// This delivery holds one of the user's credits.
    Taken,
    /// No credit. `blocked`: switched off in the settings; `age`: how long ago the event occurred.
    Missing { blocked: bool, age: Duration },
}

impl Facts {
    /// What the message's headers say, before anything is known of its delivery.
    pub(crate) fn new(api: Api, meta: &Meta, now: DateTime<Utc>) -> Self {
        Facts {
            api,
            failed_before: meta.failed_before,
            token_requeues: meta.token_requeues,
            redeliveries: meta.redeliveries,
            in_doubt_for: None,
            render_error: None,
            not_after: None,
            quiet_hours: None,
            unfollowed: false,
            cancelled_by: None,
            consent: ConsentSeen::NotTracked,
            now,
        }
    }
}

/// What the claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimSeen {
    /// This worker holds the delivery now.
    Owned,
    /// The delivery is final already: this copy is a duplicate.
    Final,
    /// Another live worker holds it.
    Held,
    /// Postgres refused this delivery's values (a data error): it can never be stored.
    Refused(String),
}

/// WeChat's answer to a send, as far as the judge cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Accepted {
        msgid: Option<i64>,
    },
    Refused {
        errcode: i64,
        errmsg: String,
    },
    /// The request never reached WeChat (connection refused).
    NotSent {
        error: String,
    },
    /// No usable answer (timeout, reset, 5xx, garbage): WeChat may have delivered it.
    Unknown {
        error: String,
    },
}

/// Where the pipeline asks whether it may send.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Gate<'a> {
    /// The claim statement answered.
    Claimed(&'a ClaimSeen),
    /// About to send, after waiting for the token: the doubt is checked again.
    BeforeSend,
}

/// The step that ended without a send, or with one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step<'a> {
    /// No token to send with (or the rejected one could not be replaced).
    NoToken(&'a TokenError),
    /// WeChat answered the send made with token generation `generation`.
    Answered { answer: &'a Answer, generation: i64 },
    /// Carrying out `plan` failed at its dead-letter publish.
    DeadLetterFailed(&'a Plan),
}

/// A message that cannot become a delivery (intake): dead-lettered with its reason, once.
pub(crate) fn reject(reason: DeadReason, error: &str, failed_before: u32) -> Plan {
    Plan {
        outcome: Outcome::dead(reason, None, error),
        finish: None,
        replace_token: None,
        attempts: failed_before,
    }
}

/// WeChat's answer says the recipient does not follow the account (43004 to a template message):
/// it is recorded, so that later template messages to it end `suppressed` without a call.
pub(crate) fn left_the_account(api: Api, answer: &Answer) -> bool {
    api == Api::Template && matches!(answer, Answer::Refused { errcode: 43004, .. })
}

/// An event whose deliveries wait in the ledger: acked once they are stored; a value the ledger
/// refuses (`Err`) can never be stored, so it is dead-lettered.
pub(crate) fn stored(result: Result<(), &str>, failed_before: u32) -> Plan {
    match result {
        Ok(()) => Plan {
            outcome: Outcome::Ack,
            finish: None,
            replace_token: None,
            attempts: failed_before,
        },
        Err(error) => reject(
            DeadReason::InvalidEvent,
            &format!("the ledger refused this event's values: {error}"),
            failed_before,
        ),
    }
}

/// The replay rule (docs/interface.md §3): only a replay of reason `ambiguous` by name resends a delivery
/// whose earlier send may have arrived.
pub(crate) fn reopen(row: Option<&ReplayRow>) -> Reopen {
    let ambiguous = DeadReason::Ambiguous.as_str();
    match row {
        None => Reopen::No,
        Some(r) if r.dead_reason == ambiguous && r.by_reason.as_deref() == Some(ambiguous) => {
            Reopen::ClearDoubtBefore(r.replayed_at)
        }
        Some(_) => Reopen::KeepDoubt,
    }
}

/// `None`: send now. `Some(plan)`: do not send; the plan says what to do instead.
pub(crate) fn stop_before_send(facts: &Facts, gate: Gate<'_>, policy: &RetryPolicy) -> Option<Plan> {
    let j = Judge { facts, policy };
    match gate {
        Gate::Claimed(ClaimSeen::Owned) | Gate::BeforeSend => j.before_send(),
        Gate::Claimed(ClaimSeen::Final) => Some(j.plan(Outcome::Ack, None)),
        Gate::Claimed(ClaimSeen::Held) => Some(j.plan(
            Outcome::RetryLater {
                delay: policy.hold_delay,
            },
            None,
        )),
        Gate::Claimed(ClaimSeen::Refused(error)) => Some(reject(
            DeadReason::InvalidEvent,
            &format!("the ledger refused this delivery's values: {error}"),
            facts.failed_before,
        )),
    }
}

/// The plan after `step`.
pub(crate) fn judge(facts: &Facts, step: Step<'_>, policy: &RetryPolicy) -> Plan {
    let j = Judge { facts, policy };
    match step {
        Step::NoToken(err) => j.no_token(err),
        Step::Answered { answer, generation } => j.answered(answer, generation),
        Step::DeadLetterFailed(plan) => j.dead_letter_failed(plan),
    }
}

/// Whether a step uses one of the delivery's attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    Attempt,
    Free,
}

struct Judge<'a> {
    facts: &'a Facts,
    policy: &'a RetryPolicy,
}

impl Judge<'_> {
    fn plan(&self, outcome: Outcome, finish: Option<Finish>) -> Plan {
        Plan {
            outcome,
            finish,
            replace_token: None,
            attempts: self.facts.failed_before,
        }
    }

    fn dead(&self, reason: DeadReason, errcode: Option<i64>, error: &str, charge: Charge, doubt: Doubt) -> Plan {
        Plan {
            outcome: Outcome::dead(reason, errcode, error),
            finish: Some(Finish::dead(reason, errcode, error, doubt)),
            replace_token: None,
            attempts: self.facts.failed_before + u32::from(charge == Charge::Attempt),
        }
    }

    /// Owned, about to send: only a send that cannot duplicate a message may go.
    fn before_send(&self) -> Option<Plan> {
        let f = self.facts;
        if let Some(by) = &f.cancelled_by {
            return Some(self.plan(Outcome::Ack, Some(Finish::Cancelled(by.clone()))));
        }
        if f.redeliveries + 1 >= self.policy.delivery_limit {
            let error = format!(
                "handed out {} times without being settled (it stalls or crashes workers); not trying again",
                f.redeliveries + 1
            );
            return Some(self.dead(DeadReason::DeliveryLimit, None, &error, Charge::Free, Doubt::Settled));
        }
        if let Some(error) = &f.render_error {
            return Some(self.dead(DeadReason::RenderFailed, None, error, Charge::Free, Doubt::Settled));
        }
        if f.unfollowed && f.api == Api::Template {
            return Some(self.plan(Outcome::Ack, Some(Finish::Suppressed(Suppressed::Unfollowed))));
        }
        match due(f.not_after, f.quiet_hours, f.now) {
            DueFate::Released => {}
            DueFate::Expired => {
                let error = format!(
                    "not sent before its not_after ({})",
                    f.not_after.map(|t| t.to_rfc3339()).unwrap_or_default()
                );
                return Some(self.plan(Outcome::Ack, Some(Finish::expired(&error))));
            }
            // Waits out the quiet hours without using an attempt (in the longest retry tier,
            // again if the window is longer).
            DueFate::Deferred(until) => {
                let wait = (until - f.now).to_std().unwrap_or_default();
                let error = format!("quiet hours until {}", until.to_rfc3339());
                return Some(self.uncounted(wait, None, &error));
            }
        }
        if let ConsentSeen::Missing { blocked, age } = f.consent {
            return Some(self.no_consent(blocked, age));
        }
        // Not in doubt: nothing can be duplicated, send.
        let age = f.in_doubt_for?;
        if f.api == Api::Subscribe {
            let error = format!(
                "an earlier send may have reached WeChat {}s ago; subscribe messages have no client_msg_id dedup, so it is not resent",
                age.as_secs()
            );
            return Some(self.dead(DeadReason::Ambiguous, None, &error, Charge::Free, Doubt::Settled));
        }
        if age > self.policy.dedup_window {
            let error = format!(
                "an earlier send may have reached WeChat {}s ago, beyond its 10-minute client_msg_id window; not resending",
                age.as_secs()
            );
            return Some(self.dead(DeadReason::Ambiguous, None, &error, Charge::Free, Doubt::Settled));
        }
        None
    }

    /// No consent credit: `suppressed`, unless the event is so recent that the user's `accept`
    /// may still be on its way (then a look again a second later, not counted).
    fn no_consent(&self, blocked: bool, age: Duration) -> Plan {
        if !blocked && age < self.policy.consent_wait {
            let error = "no subscription consent yet; looking again (the accept may be on its way)";
            return self.uncounted(Duration::from_secs(1), None, error);
        }
        self.plan(Outcome::Ack, Some(Finish::Suppressed(Suppressed::NoConsent)))
    }

    /// A counted failure: wait as the backoff says (at least `min`), or give up.
    fn counted(&self, errcode: Option<i64>, error: &str, min: Duration, doubt: Doubt) -> Plan {
        let f = self.facts;
        match self.policy.after_failure(f.failed_before, min) {
            Backoff::Wait(delay) => Plan {
                outcome: Outcome::RetryLater { delay },
                finish: Some(Finish::retrying(errcode, error, doubt)),
                replace_token: None,
                attempts: f.failed_before + 1,
            },
            Backoff::Exhausted => {
                let error = format!("gave up after {} attempts; last: {error}", f.failed_before + 1);
                self.dead(DeadReason::RetriesExhausted, errcode, &error, Charge::Attempt, doubt)
            }
        }
    }

    /// Wait without using an attempt.
    fn uncounted(&self, delay: Duration, errcode: Option<i64>, error: &str) -> Plan {
        self.plan(
            Outcome::RetryLater { delay },
            Some(Finish::retrying(errcode, error, Doubt::Settled)),
        )
    }

    fn no_token(&self, err: &TokenError) -> Plan {
        let error = format!("token: {err}");
        let p = self.policy;
        match err {
            // Our own database, not the delivery: it waits without using an attempt.
            TokenError::Db(_) => self.uncounted(p.backoff(0), None, &error),
            TokenError::DailyQuota { .. } => self.uncounted(p.daily_quota_delay, None, &error),
            TokenError::UnknownApp { .. } => {
                self.dead(DeadReason::InvalidEvent, None, &error, Charge::Free, Doubt::Settled)
            }
            // Not sent; replayable (`dlq replay --reason unauthorized`) once it authorizes again.
            TokenError::Unauthorized { .. } => {
                self.dead(DeadReason::Unauthorized, None, &error, Charge::Free, Doubt::Settled)
            }
            // Another process found the token API unusable for a while (the daily quota, a
            // backoff): wait until then without using an attempt, like 45009 itself.
            TokenError::Blocked {
                until,
                credentials: false,
                ..
            } => {
                let wait = (*until - self.facts.now)
                    .to_std()
                    .unwrap_or_default()
                    .clamp(Duration::from_secs(1), p.daily_quota_delay);
                self.uncounted(wait, None, &error)
            }
            // Credentials: wait for the pause others respect too; each such wait uses an
            // attempt, so a message ends in the DLQ (replayable) if nobody fixes the secret.
            TokenError::Credentials { until, .. } | TokenError::Blocked { until, .. } => {
                let wait = (*until - self.facts.now)
                    .to_std()
                    .unwrap_or_default()
                    .clamp(Duration::from_secs(30), p.daily_quota_delay);
                self.counted(None, &error, wait, Doubt::Settled)
            }
            TokenError::Transient { .. } => self.counted(None, &error, Duration::ZERO, Doubt::Settled),
        }
    }

    fn answered(&self, answer: &Answer, generation: i64) -> Plan {
        let f = self.facts;
        match answer {
            Answer::Accepted { msgid } => self.plan(Outcome::Ack, Some(Finish::Sent { msgid: *msgid })),
            Answer::NotSent { error } => self.counted(None, error, Duration::ZERO, Doubt::Settled),
            Answer::Unknown { error } if f.api == Api::Subscribe => {
                let error = format!(
                    "{error}; WeChat may have delivered it and subscribe messages have no client_msg_id dedup, so it is not resent"
                );
                self.dead(
                    DeadReason::Ambiguous,
                    None,
                    &error,
                    Charge::Attempt,
                    Doubt::MayHaveArrived,
                )
            }
            Answer::Unknown { error } => self.counted(None, error, Duration::ZERO, Doubt::MayHaveArrived),
            Answer::Refused { errcode, errmsg } => {
                let code = Some(*errcode);
                let error = format!("WeChat errcode {errcode}: {errmsg}");
                match classify_send(*errcode) {
                    // Always replace the token (if still current), whatever this message does
                    // next: skipping it would leave a revoked token in use for everyone.
                    ErrorClass::Token if f.token_requeues < self.policy.token_requeues => Plan {
                        replace_token: Some(generation),
                        ..self.plan(Outcome::Requeue, Some(Finish::retrying(code, &error, Doubt::Settled)))
                    },
                    ErrorClass::Token => Plan {
                        replace_token: Some(generation),
                        ..self.counted(code, &error, Duration::ZERO, Doubt::Settled)
                    },
                    ErrorClass::Transient => self.counted(code, &error, Duration::ZERO, Doubt::Settled),
                    ErrorClass::MinuteQuota => {
                        self.counted(code, &error, self.policy.minute_quota_delay, Doubt::Settled)
                    }
                    ErrorClass::DailyQuota => self.uncounted(self.policy.daily_quota_delay, code, &error),
                    ErrorClass::Permanent => self.dead(
                        DeadReason::PermanentError,
                        code,
                        &error,
                        Charge::Attempt,
                        Doubt::Settled,
                    ),
                }
            }
        }
    }

    /// The dead-letter publish failed: hand the claim back (keeping the attempt and any doubt)
    /// and the message to the broker; its next delivery decides again.
    fn dead_letter_failed(&self, failed: &Plan) -> Plan {
        let finish = failed.finish.as_ref().map(|f| {
            let error = f.error().unwrap_or_else(|| "dead-letter publish failed".into());
            Finish::retrying(f.errcode(), &error, f.doubt())
        });
        Plan {
            outcome: Outcome::Release,
            finish,
            replace_token: failed.replace_token,
            attempts: self.facts.failed_before,
        }
    }
}

#[cfg(test)]
mod tests;
