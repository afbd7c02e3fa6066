//! One message, start to decision: parse → template → render → claim → token → send → [`Plan`].
//! No broker I/O here; [`super::carry_out`] executes the plan.

use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::BasicProperties;

use super::Context;
use crate::event::{BookingEvent, DeliveryKey};
use crate::ledger::{AttemptRecord, Claim, ClaimRequest, Finish};
use crate::outcome::{DeadReason, Outcome};
use crate::queue::headers;
use crate::retry::Decision;
use crate::token::TokenError;
use crate::wechat::errcode::classify_send;
use crate::wechat::{ErrorClass, SendError};

/// WeChat drops a resend with the same `client_msg_id` for 10 minutes. We stay clear of the edge:
/// a delivery in doubt for longer than this is not resent but dead-lettered `ambiguous`.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(9 * 60 + 30);

/// The ledger write that goes with an outcome.
#[derive(Debug)]
pub struct Record {
    pub delivery_id: i64,
    pub attempt: Option<AttemptRecord>,
    pub finish: Finish,
}

/// What to do with a message, decided.
#[derive(Debug)]
pub struct Plan {
    pub outcome: Outcome,
    pub record: Option<Record>,
    pub event_id: Option<String>,
    /// Counted failed attempts, after this one (goes into `wxnotify-attempts`).
    pub attempts: u32,
}

/// The worker is stopping while the database is unreachable: leave the message unacked; the
/// broker hands it out again.
#[derive(Debug)]
pub struct Abandoned;

impl Plan {
    fn new(outcome: Outcome, event_id: Option<String>, attempts: u32) -> Self {
        Self {
            outcome,
            record: None,
            event_id,
            attempts,
        }
    }
}

/// Retries a database call until it works or the worker must stop. A database outage stalls
/// deliveries (unacked, bounded by the prefetch) instead of losing or dead-lettering them.
pub(super) async fn with_db<T, E, F, Fut>(ctx: &Context, what: &str, mut op: F) -> Result<T, Abandoned>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => {
                ctx.health.set_db(true);
                return Ok(v);
            }
            Err(e) => {
                ctx.health.set_db(false);
                metrics::counter!("wxnotify_db_errors_total").increment(1);
                tracing::warn!(error = %e, what, retry_in_ms = delay.as_millis() as u64, "database call failed; retrying");
                tokio::select! {
                    _ = ctx.hard_stop.cancelled() => return Err(Abandoned),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

pub async fn decide(ctx: &Context, body: &[u8], props: &BasicProperties) -> Result<Plan, Abandoned> {
    let failed_before = headers::attempts(props);
    let event = match BookingEvent::parse(body) {
        Ok(e) => e,
        Err(e) => {
            let id = BookingEvent::sniff_event_id(body);
            return Ok(Plan::new(
                Outcome::dead(DeadReason::InvalidEvent, None, e.to_string()),
                id,
                failed_before,
            ));
        }
    };
    let id = Some(event.event_id.clone());
    let app_id = event.app_id.clone().unwrap_or_else(|| ctx.default_app.clone());
    if !ctx.tokens.knows(&app_id) {
        let msg = format!("unknown app_id {app_id:?} (neither WECHAT_APP_ID nor in [[apps]])");
        return Ok(Plan::new(
            Outcome::dead(DeadReason::InvalidEvent, None, msg),
            id,
            failed_before,
        ));
    }
    let Some(template) = ctx.catalog.find(&app_id, &event.event_type) else {
        let msg = format!("no template for event type {:?} of app {app_id}", event.event_type);
        return Ok(Plan::new(
            Outcome::dead(DeadReason::NoTemplate, None, msg),
            id,
            failed_before,
        ));
    };
    let key = DeliveryKey {
        event_id: event.event_id.clone(),
        template_id: template.template_id.clone(),
        openid: event.openid.clone(),
    };
    let client_msg_id = key.client_msg_id();
    let message = match ctx.catalog.render(template, &event, client_msg_id.clone()) {
        Ok(m) => m,
        Err(e) => {
            let msg = format!("template {}: {e}", template.label);
            with_db(ctx, "record render failure", || {
                ctx.ledger.record_unsendable(
                    &event,
                    &app_id,
                    &template.template_id,
                    &client_msg_id,
                    "render_failed",
                    &msg,
                )
            })
            .await?;
            return Ok(Plan::new(
                Outcome::dead(DeadReason::RenderFailed, None, msg),
                id,
                failed_before,
            ));
        }
    };

    let request = ClaimRequest {
        event: &event,
        app_id: &app_id,
        template_id: &template.template_id,
        client_msg_id: &client_msg_id,
        reopen_dead: headers::text(props, headers::REPLAY).is_some(),
    };
    let claimed = match with_db(ctx, "claim", || ctx.ledger.claim(&request)).await? {
        Claim::Owned(c) => c,
        Claim::AlreadyFinal { status, .. } => {
            metrics::counter!("wxnotify_duplicates_total", "status" => status.as_str()).increment(1);
            tracing::debug!(event_id = %event.event_id, status = status.as_str(), "duplicate of a final delivery; acking");
            return Ok(Plan::new(Outcome::Ack, id, failed_before));
        }
        Claim::HeldElsewhere => {
            metrics::counter!("wxnotify_duplicates_total", "status" => "held").increment(1);
            let delay = ctx.retry.hold_delay;
            return Ok(Plan::new(
                Outcome::RetryLater { delay, counted: false },
                id,
                failed_before,
            ));
        }
    };
    let record = |attempt: Option<AttemptRecord>, finish: Finish| {
        Some(Record {
            delivery_id: claimed.id,
            attempt,
            finish,
        })
    };

    if let Some(since) = claimed.in_doubt_since {
        let age = (claimed.now - since).to_std().unwrap_or_default();
        if age > DEDUP_WINDOW {
            let msg = format!(
                "an earlier send may have reached WeChat {}s ago, beyond its 10-minute client_msg_id window; not resending",
                age.as_secs()
            );
            return Ok(Plan {
                outcome: Outcome::dead(DeadReason::Ambiguous, None, msg.clone()),
                record: record(None, Finish::dead("ambiguous", None, msg)),
                event_id: id,
                attempts: failed_before,
            });
        }
        tracing::info!(event_id = %event.event_id, in_doubt_secs = age.as_secs(), "resending a delivery whose earlier send is in doubt; WeChat drops it if it arrived");
    }

    let token = match ctx.tokens.get(&app_id).await {
        Ok(t) => t,
        Err(e) => return Ok(token_unavailable(ctx, e, claimed.id, id, failed_before)),
    };
    let started_at = Utc::now();
    let started = Instant::now();
    let reply = ctx.wechat.send(&message, token.secret()).await;
    let duration_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    metrics::histogram!("wxnotify_send_seconds").record(started.elapsed().as_secs_f64());

    let (class, errcode, error, attempt, in_doubt) = match reply {
        Ok(r) if r.errcode == 0 => {
            metrics::counter!("wxnotify_sends_total", "result" => "ok").increment(1);
            let attempt = AttemptRecord {
                started_at,
                duration_ms,
                http_status: Some(i32::from(r.http_status)),
                errcode: Some(0),
                errmsg: Some(r.errmsg.clone()),
            };
            return Ok(Plan {
                outcome: Outcome::Ack,
                record: record(Some(attempt), Finish::sent(r.msgid)),
                event_id: id,
                attempts: failed_before,
            });
        }
        Ok(r) => {
            metrics::counter!("wxnotify_sends_total", "result" => "errcode", "errcode" => r.errcode.to_string())
                .increment(1);
            let attempt = AttemptRecord {
                started_at,
                duration_ms,
                http_status: Some(i32::from(r.http_status)),
                errcode: Some(r.errcode),
                errmsg: Some(r.errmsg.clone()),
            };
            let error = format!("WeChat errcode {}: {}", r.errcode, r.errmsg);
            (classify_send(r.errcode), Some(r.errcode), error, attempt, false)
        }
        Err(e) => {
            metrics::counter!("wxnotify_sends_total", "result" => "transport").increment(1);
            let attempt = AttemptRecord {
                started_at,
                duration_ms,
                http_status: e.http_status().map(i32::from),
                errcode: None,
                errmsg: Some(e.to_string()),
            };
            let in_doubt = matches!(e, SendError::Unknown { .. });
            (ErrorClass::Transient, None, e.to_string(), attempt, in_doubt)
        }
    };

    if class == ErrorClass::Token {
        // Always: the token that failed is replaced if it is still the current one (once, for
        // every task and process). Skipping this for a message's later rejections would leave a
        // revoked token in use for as long as nothing else fails with it.
        tracing::info!(app = %app_id, generation = token.generation, errcode, "token rejected; refreshing it if still current");
        if let Err(e) = ctx.tokens.invalidate(&token).await {
            tracing::warn!(app = %app_id, error = %e, "could not replace the rejected token; the message waits and retries");
            return Ok(Plan {
                record: record(Some(attempt), Finish::retrying(errcode, error)),
                ..token_unavailable(ctx, e, claimed.id, id, failed_before)
            });
        }
    }
    // The message itself is requeued at once twice; from its third rejection on it waits like
    // any transient failure, so a token WeChat keeps refusing does not spin.
    let class = if class == ErrorClass::Token && headers::int(props, headers::TOKEN_REQUEUES).unwrap_or(0) >= 2 {
        ErrorClass::Transient
    } else {
        class
    };
    let decision = ctx.retry.decide(class, failed_before);
    let (outcome, finish, attempts) = match decision {
        Decision::Requeue => (Outcome::Requeue, Finish::retrying(errcode, &error), failed_before),
        Decision::RetryLater { delay, counted } => (
            Outcome::RetryLater { delay, counted },
            Finish::retrying(errcode, &error),
            failed_before + u32::from(counted),
        ),
        Decision::Exhausted => {
            let msg = format!("gave up after {} attempts; last: {error}", failed_before + 1);
            (
                Outcome::dead(DeadReason::RetriesExhausted, errcode, &msg),
                Finish::dead("retries_exhausted", errcode, msg),
                failed_before + 1,
            )
        }
        Decision::Permanent => (
            Outcome::dead(DeadReason::PermanentError, errcode, &error),
            Finish::dead("permanent_error", errcode, &error),
            failed_before + 1,
        ),
    };
    Ok(Plan {
        outcome,
        record: record(Some(attempt), Finish { in_doubt, ..finish }),
        event_id: id,
        attempts,
    })
}

/// No token to send with: release the claim and wait, as the error says.
fn token_unavailable(
    ctx: &Context,
    err: TokenError,
    delivery_id: i64,
    event_id: Option<String>,
    failed_before: u32,
) -> Plan {
    let (delay, counted) = match &err {
        TokenError::DailyQuota { .. } => (ctx.retry.daily_quota_delay, false),
        e => match e.retry_at() {
            // Credentials: wait for the pause others respect too; each such wait uses an attempt,
            // so a message ends in the DLQ (replayable) if nobody fixes the secret.
            Some(at) => (
                (at - Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .max(Duration::from_secs(30)),
                true,
            ),
            None => (ctx.retry.backoff(failed_before), true),
        },
    };
    let error = format!("token: {err}");
    if counted && failed_before + 1 >= ctx.retry.max_attempts {
        let msg = format!("gave up after {} attempts; last: {error}", failed_before + 1);
        return Plan {
            outcome: Outcome::dead(DeadReason::RetriesExhausted, None, &msg),
            record: Some(Record {
                delivery_id,
                attempt: None,
                finish: Finish::dead("retries_exhausted", None, msg),
            }),
            event_id,
            attempts: failed_before + 1,
        };
    }
    Plan {
        outcome: Outcome::RetryLater {
            delay: delay.min(ctx.retry.daily_quota_delay),
            counted,
        },
        record: Some(Record {
            delivery_id,
            attempt: None,
            finish: Finish::retrying(None, error),
        }),
        event_id,
        attempts: failed_before + u32::from(counted),
    }
}
