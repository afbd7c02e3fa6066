//! One message's trip: [`intake`] → claim → token → send → [`judge`] → [`carry_out`]; or, for an
//! event whose deliveries wait (docs/interface.md §8), [`intake`] → store them in the ledger → ack.
//!
//! `deliver` is the whole pipeline. Intake and the judge are pure; the steps between them do the
//! I/O (claim in the ledger, the shared token, the HTTP send) and ask the judge at each gate;
//! carry-out is the only code that touches the broker for a message. Every log line of a trip
//! carries its span: event id, delivery key, attempt.

pub(crate) mod carry_out;
mod db_retry;
pub(crate) mod intake;
pub(crate) mod judge;
pub(crate) mod rate;

use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::Instrument;

use crate::fate::Plan;
use crate::fate::{Outcome, Reopen};
use crate::ids::{AppId, OpenId};
use crate::ledger::consent::{ConsentKey, Credit};
use crate::ledger::{AttemptRecord, Claim, ClaimRequest, Claimed, Ledger};
use crate::platform::client::CallError;
use crate::queue::{Message, Session, Topology};
use crate::retry::RetryPolicy;
use crate::schedule::HoldRequest;
use crate::token::{AccessToken, TokenError, TokenProvider};
use crate::wechat::errcode::INVALID_TEMPLATE_ID;
use crate::wechat::{OutgoingMessage, SendError, SendReply, WechatClient};
pub(crate) use db_retry::DbRetry;
use intake::{Delivery, Hold, Intake, Meta, Rules};
use judge::{Answer, ClaimSeen, ConsentSeen, Facts, Gate, Step};

/// Longest wait for the app's token: a refresh by another process (its WeChat call bounded by
/// `WXNOTIFY_HTTP_TIMEOUT_SECS`) and the database calls around it. Past it the delivery waits
/// in a retry queue without using an attempt, like any database trouble.
const TOKEN_WAIT: Duration = Duration::from_secs(45);

/// What every trip shares, fixed for the worker's life.
pub(crate) struct Context {
    pub rules: Rules,
    pub policy: RetryPolicy,
    pub topology: Topology,
    pub ledger: Ledger,
    /// Events' waiting deliveries and cancellations, stored in batches.
    pub holds: crate::schedule::Holds,
    pub tokens: TokenProvider,
    /// The merchants' library template ids (docs/interface.md §10); with platforms only.
    pub merchant_templates: Option<std::sync::Arc<crate::platform::templates::MerchantTemplates>>,
    pub wechat: WechatClient,
    /// Database calls on the delivery path wait out an outage (until the grace period is over).
    pub db: DbRetry,
    /// `WXNOTIFY_RATE_LIMIT`: this worker's share of the fleet's sends a second per app.
    pub rate: Option<rate::RateLimit>,
}

impl Context {
    /// `live` workers share the fleet's rate limit now (from the heartbeat).
    pub(crate) fn share_rate(&self, live: u64) {
        if let Some(rate) = &self.rate {
            rate.set_workers(live);
        }
    }

    /// Waits for this send's slot (the rate limit), right before it goes: whatever stalled this
    /// delivery since its dispatch (a token wait, a slow claim, a database retry), the sends keep
    /// the rate. Short: the scheduler dispatches a paced app's deliveries at the same rate.
    async fn pace(&self, app_id: &str) {
        let Some(rate) = &self.rate else {
            return;
        };
        let wait = rate.reserve_send(app_id);
        if !wait.is_zero() {
            let started = Instant::now();
            tokio::time::sleep(wait).await;
            stage("rate", started);
        }
    }
}

/// The message is left unacked: the worker is stopping while the database is unreachable, or
/// the channel died under an ack. The broker hands it out again.
#[derive(Debug)]
pub(crate) struct Abandoned;

/// What the trip gathered that carry-out needs besides the plan.
#[derive(Default)]
pub(crate) struct Trip {
    pub event_id: Option<String>,
    /// Set once the message is one delivery that reached the claim.
    pub delivery: Option<DeliveryTrip>,
}

/// One delivery's trip past its claim.
pub(crate) struct DeliveryTrip {
    /// The delivery's template: a copy of the message makes this delivery only.
    pub template_id: String,
    /// What the judge knew last, to ask it again when carrying out fails.
    pub facts: Facts,
    /// The claimed delivery's row (`None`: not claimed by this worker).
    pub delivery_id: Option<i64>,
    /// The send, once made.
    pub sent: Option<Sent>,
    /// The delivery holds a consent credit (docs/interface.md §12): given back unless it is sent.
    pub credit: Option<(AppId, OpenId)>,
}

/// A send that was made: its attempt, the token it used (a rejected one is replaced), and what
/// WeChat said of the recipient.
pub(crate) struct Sent {
    pub attempt: AttemptRecord,
    pub token: AccessToken,
    /// WeChat said this (app, openid) does not follow the account (43004): recorded after this
    /// delivery's own outcome, so that a crash in between leaves the delivery to be decided again
    /// (and dead-lettered with its errcode), not suppressed.
    pub left_the_account: Option<(AppId, OpenId)>,
}

/// Time spent in one stage of a delivery (`wxnotify_stage_seconds{stage}`): where the latency
/// goes, for the latency benchmark and dashboards.
pub(crate) fn stage(name: &'static str, since: Instant) {
    metrics::histogram!("wxnotify_stage_seconds", "stage" => name).record(since.elapsed().as_secs_f64());
}

/// Takes one message from consume to ack.
pub(crate) async fn deliver(ctx: &Context, session: &Session, msg: &Message) {
    let meta = Meta::read(&msg.properties);
    let span = tracing::info_span!(
        "delivery",
        event_id = tracing::field::Empty,
        template = tracing::field::Empty,
        openid = tracing::field::Empty,
        attempt = meta.failed_before,
        redelivered = msg.redelivered,
    );
    async {
        let mut trip = Trip::default();
        let plan = match intake::intake(&msg.data, &meta, &ctx.rules, Utc::now()) {
            Intake::Reject {
                reason,
                error,
                event_id,
            } => {
                if let Some(id) = &event_id {
                    tracing::Span::current().record("event_id", id.as_str());
                }
                trip.event_id = event_id;
                judge::reject(reason, &error, meta.failed_before)
            }
            Intake::Deliver(d) => match one(ctx, &d, &meta, &mut trip).await {
                Ok(plan) => plan,
                Err(Abandoned) => return,
            },
            Intake::Hold(h) => {
                let Hold {
                    event_id,
                    waiting,
                    cancellations,
                    now,
                } = *h;
                tracing::Span::current().record("event_id", event_id.as_str());
                trip.event_id = Some(event_id);
                let request = std::sync::Arc::new(HoldRequest { waiting, cancellations });
                let stored = match hold(ctx, request, &meta).await {
                    Ok(plan) => plan,
                    Err(Abandoned) => return,
                };
                // Stored and committed: the delivery that goes at once goes now, on this trip.
                match &now {
                    Some(d) if stored.outcome == Outcome::Ack => match one(ctx, d, &meta, &mut trip).await {
                        Ok(plan) => plan,
                        Err(Abandoned) => return,
                    },
                    _ => stored,
                }
            }
        };
        let _ = carry_out::carry_out(ctx, session, msg, &meta, plan, trip).await;
    }
    .instrument(span)
    .await
}

/// One delivery on this trip: [`decide`], and what the trip records of it.
async fn one(ctx: &Context, d: &Delivery, meta: &Meta, trip: &mut Trip) -> Result<Plan, Abandoned> {
    // From the booking app's `occurred_at` to here: broker, prefetch and permit wait.
    if let Ok(queued) = (Utc::now() - d.event.occurred().with_timezone(&Utc)).to_std() {
        metrics::histogram!("wxnotify_stage_seconds", "stage" => "queued").record(queued.as_secs_f64());
    }
    let span = tracing::Span::current();
    span.record("event_id", d.key.event_id.as_str());
    span.record("template", d.key.template_id.as_str());
    span.record("openid", d.key.openid.as_str());
    trip.event_id = Some(d.key.event_id.clone());
    if let Ok(message) = &d.message {
        for key in &message.shortened {
            let labels = [("template", message.template_id.clone()), ("key", key.clone())];
            metrics::counter!("wxnotify_values_shortened_total", &labels).increment(1);
        }
    }
    decide(ctx, d, meta, trip).await
}

/// Claim, token, send, each gate asked of the judge: the plan for this delivery.
async fn decide(ctx: &Context, d: &Delivery, meta: &Meta, trip: &mut Trip) -> Result<Plan, Abandoned> {
    let mut facts = Facts {
        render_error: d.message.as_ref().err().cloned().or_else(|| library_for_app(ctx, d)),
        not_after: d.not_after,
        quiet_hours: d.quiet_hours,
        ..Facts::new(d.api, meta, Utc::now())
    };
    let reopen = reopen(ctx, d, meta).await?;
    let claim_started = Instant::now();
    let (seen, claimed) = claim(ctx, d, reopen).await?;
    stage("claim", claim_started);
    facts.in_doubt_for = claimed.as_ref().and_then(Held::doubt);
    facts.unfollowed = claimed.as_ref().is_some_and(|c| c.claimed.unfollowed);
    facts.cancelled_by = claimed.as_ref().and_then(|c| c.claimed.cancelled_by.clone());
    let t = trip.delivery.insert(DeliveryTrip {
        template_id: d.key.template_id.clone(),
        facts: facts.clone(),
        delivery_id: claimed.as_ref().map(|c| c.claimed.id),
        sent: None,
        credit: None,
    });
    if let Some(plan) = judge::stop_before_send(&facts, Gate::Claimed(&seen), &ctx.policy) {
        return Ok(plan);
    }
    let (Some(held), Ok(message)) = (claimed, &d.message) else {
        unreachable!("the judge lets only an owned, rendered delivery through");
    };
    if d.consent_tracked {
        facts.consent = take_credit(ctx, d, held.claimed.id).await?;
        t.credit = (facts.consent == ConsentSeen::Taken).then(|| (d.app_id.clone(), d.key.openid.clone()));
        t.facts = facts.clone();
        if let Some(plan) = judge::stop_before_send(&facts, Gate::BeforeSend, &ctx.policy) {
            return Ok(plan);
        }
    }
    if facts.in_doubt_for.is_some() {
        tracing::info!("resending a delivery whose earlier send is in doubt; WeChat drops it if it arrived");
    }

    let token = match token(ctx, &d.app_id).await {
        Ok(t) => t,
        Err(e) => return Ok(judge::judge(&facts, Step::NoToken(&e), &ctx.policy)),
    };
    // The token wait may have been long: the window is checked again right before the send.
    facts.in_doubt_for = held.doubt();
    facts.now = Utc::now();
    t.facts = facts.clone();
    if let Some(plan) = judge::stop_before_send(&facts, Gate::BeforeSend, &ctx.policy) {
        return Ok(plan);
    }
    let (answer, attempt) = send_as_merchant(ctx, d, message, &token, held.claimed.id).await?;
    let generation = token.generation;
    t.sent = Some(Sent {
        attempt,
        token,
        left_the_account: judge::left_the_account(d.api, &answer).then(|| (d.app_id.clone(), d.key.openid.clone())),
    });
    let step = Step::Answered {
        answer: &answer,
        generation,
    };
    Ok(judge::judge(&facts, step, &ctx.policy))
}

/// A library template is added to merchants' accounts only: for an app of the configuration,
/// why its delivery cannot be made.
fn library_for_app(ctx: &Context, d: &Delivery) -> Option<String> {
    let library = d.library.as_ref()?;
    ctx.rules.apps.contains(&d.app_id).then(|| {
        format!(
            "template {} is a library template: only a merchant's account (third-party platform) can add it, and {} is an app of the configuration",
            library.library_id, d.app_id
        )
    })
}

/// The message as this merchant's account knows it: a library template gets the merchant's own
/// id (added with `api_add_template` if the fleet has none yet). `Err`: WeChat's answer to the
/// add, judged like a send's (a refusal dead-letters with its errcode, a token error replaces
/// the token).
async fn merchant_template<'m>(
    ctx: &Context,
    d: &Delivery,
    message: &'m OutgoingMessage,
    token: &AccessToken,
) -> Result<Result<std::borrow::Cow<'m, OutgoingMessage>, (Answer, AttemptRecord)>, Abandoned> {
    let (Some(library), Some(templates)) = (&d.library, &ctx.merchant_templates) else {
        return Ok(Ok(std::borrow::Cow::Borrowed(message)));
    };
    let started_at = Utc::now();
    let started = Instant::now();
    let answer = ctx
        .db
        .retry("find the merchant's template id", || {
            templates.template_id(&d.app_id, library, token.secret())
        })
        .await?;
    stage("template", started);
    let error = match answer {
        Ok(id) => {
            let mut message = message.clone();
            message.template_id = id;
            return Ok(Ok(std::borrow::Cow::Owned(message)));
        }
        Err(e) => e,
    };
    let elapsed = started.elapsed();
    let (answer, errcode) = match &error {
        CallError::WeChat { errcode, errmsg } => (
            Answer::Refused {
                errcode: *errcode,
                errmsg: format!("api_add_template: {errmsg}"),
            },
            Some(*errcode),
        ),
        CallError::Transport(e) => (
            Answer::NotSent {
                error: format!("api_add_template: {e}"),
            },
            None,
        ),
    };
    let attempt = AttemptRecord {
        started,
        started_at,
        duration_ms: millis(elapsed),
        http_status: None,
        errcode,
        errmsg: Some(format!("api_add_template: {error}")),
    };
    Ok(Err((answer, attempt)))
}

/// Sends the delivery's message, a library template with the merchant's own id of it. An id
/// WeChat no longer knows on the merchant's account (40037: the merchant deleted the template in
/// its console) is forgotten, the template added again and the send made again, once: a 40037 is
/// a refusal, nothing reached the user.
async fn send_as_merchant(
    ctx: &Context,
    d: &Delivery,
    message: &OutgoingMessage,
    token: &AccessToken,
    delivery_id: i64,
) -> Result<(Answer, AttemptRecord), Abandoned> {
    let mut again = false;
    loop {
        // A library template's path is rare and its future large: boxed, so that every other
        // delivery's future (one per message in flight) does not carry its size.
        let message = match d.library {
            None => std::borrow::Cow::Borrowed(message),
            Some(_) => match Box::pin(merchant_template(ctx, d, message, token)).await? {
                Ok(message) => message,
                Err(not_added) => return Ok(not_added),
            },
        };
        ctx.pace(&d.app_id).await;
        ctx.ledger.sending(delivery_id);
        let (answer, attempt) = send(ctx, &message, token).await;
        let gone = matches!(
            answer,
            Answer::Refused {
                errcode: INVALID_TEMPLATE_ID,
                ..
            }
        );
        let (Some(library), Some(templates), true, false) = (&d.library, &ctx.merchant_templates, gone, again) else {
            return Ok((answer, attempt));
        };
        tracing::warn!(template = %message.template_id, "the merchant's template is gone (40037); adding it again");
        ctx.db
            .retry("forget the merchant's template id", || {
                templates.forget(&d.app_id, library, &message.template_id)
            })
            .await?;
        again = true;
    }
}

/// The app's shared token, waited for at most [`TOKEN_WAIT`].
async fn token(ctx: &Context, app_id: &AppId) -> Result<AccessToken, TokenError> {
    let started = Instant::now();
    let token = match tokio::time::timeout(TOKEN_WAIT, ctx.tokens.get(app_id)).await {
        Ok(result) => result?,
        Err(_) => return Err(TokenError::Db(format!("no token within {} s", TOKEN_WAIT.as_secs()))),
    };
    stage("token", started);
    Ok(token)
}

/// Takes one of the user's consent credits for the claimed delivery `id`, as the judge sees it.
async fn take_credit(ctx: &Context, d: &Delivery, id: i64) -> Result<ConsentSeen, Abandoned> {
    let key = ConsentKey {
        app_id: &d.app_id,
        openid: &d.key.openid,
        template_id: &d.key.template_id,
        delivery_id: id,
    };
    let credit = ctx
        .db
        .retry("take a consent credit", || ctx.ledger.take_credit(key))
        .await?;
    let age = (Utc::now() - d.event.occurred().with_timezone(&Utc))
        .to_std()
        .unwrap_or_default();
    let (result, seen) = match credit {
        Credit::Taken => ("taken", ConsentSeen::Taken),
        Credit::Missing { blocked } => (
            if blocked { "blocked" } else { "missing" },
            ConsentSeen::Missing { blocked, age },
        ),
    };
    metrics::counter!("wxnotify_consent_checks_total", "result" => result).increment(1);
    Ok(seen)
}

/// Stores an event's waiting deliveries and applies its cancellations (one transaction); the
/// message is acked once they are committed. A value Postgres refuses is the message's verdict.
async fn hold(ctx: &Context, request: std::sync::Arc<HoldRequest>, meta: &Meta) -> Result<Plan, Abandoned> {
    let stored = ctx
        .db
        .retry("store waiting deliveries", || async {
            match ctx.holds.hold(request.clone()).await {
                Err(e) if e.is_data_error() => Ok(Err(e.to_string())),
                other => other.map(Ok),
            }
        })
        .await?;
    if let Ok(held) = &stored {
        for (status, n) in [
            ("scheduled", held.scheduled),
            ("cancelled", held.cancelled),
            ("expired", held.expired),
            ("cancelled_other", held.cancelled_others),
        ] {
            metrics::counter!("wxnotify_held_total", "status" => status).increment(n);
        }
        tracing::debug!(?held, "waiting deliveries stored");
    }
    Ok(judge::stored(
        stored.as_ref().map(|_| ()).map_err(String::as_str),
        meta.failed_before,
    ))
}

/// A replay copy reopens a `dead` delivery only if its run is recorded (and keeps its doubt
/// unless the operator replayed reason `ambiguous` by name): the judge's rule.
async fn reopen(ctx: &Context, d: &Delivery, meta: &Meta) -> Result<Reopen, Abandoned> {
    let Some(replay_id) = &meta.replay_id else {
        return Ok(Reopen::No);
    };
    let row = ctx
        .db
        .retry("look up the replay", || {
            ctx.ledger.replay_row(replay_id, &d.key.event_id)
        })
        .await?;
    Ok(judge::reopen(row.as_ref()))
}

/// A claim this worker holds, and when it was taken on this process's monotonic clock.
struct Held {
    claimed: Claimed,
    at: Instant,
}

impl Held {
    /// How long the doubt has lasted, by the database's clock: its time at the claim plus the
    /// time since, on this process's monotonic clock.
    fn doubt(&self) -> Option<Duration> {
        let c = &self.claimed;
        c.in_doubt_since
            .map(|since| (c.now - since).to_std().unwrap_or_default() + self.at.elapsed())
    }
}

/// Claims the delivery key; a value Postgres refuses is this delivery's verdict, not a retry.
async fn claim(ctx: &Context, d: &Delivery, reopen: Reopen) -> Result<(ClaimSeen, Option<Held>), Abandoned> {
    let request = ClaimRequest {
        key: &d.key,
        event_type: d.event.event_type(),
        app_id: &d.app_id,
        occurred_at: d.event.occurred().with_timezone(&Utc),
        client_msg_id: &d.client_msg_id,
        reopen,
    };
    let claim = ctx
        .db
        .retry("claim", || async {
            match ctx.ledger.claim(&request).await {
                Err(e) if e.is_data_error() => Ok(Err(e.to_string())),
                other => other.map(Ok),
            }
        })
        .await?;
    Ok(match claim {
        Ok(Claim::Owned(claimed)) => (
            ClaimSeen::Owned,
            Some(Held {
                claimed,
                at: Instant::now(),
            }),
        ),
        Ok(Claim::AlreadyFinal { status }) => {
            metrics::counter!("wxnotify_duplicates_total", "status" => status.as_str()).increment(1);
            (ClaimSeen::Final, None)
        }
        Ok(Claim::HeldElsewhere) => {
            metrics::counter!("wxnotify_duplicates_total", "status" => "held").increment(1);
            (ClaimSeen::Held, None)
        }
        Err(refused) => (ClaimSeen::Refused(refused), None),
    })
}

/// One HTTP send: WeChat's answer, and the attempt as it happened.
async fn send(ctx: &Context, message: &OutgoingMessage, token: &AccessToken) -> (Answer, AttemptRecord) {
    let started_at = Utc::now();
    let started = Instant::now();
    let reply = ctx.wechat.send(message, token.secret()).await;
    let elapsed = started.elapsed();
    metrics::histogram!("wxnotify_send_seconds").record(elapsed.as_secs_f64());
    stage("send", started);
    let answer = answer(&reply);
    metrics::counter!("wxnotify_sends_total", "result" => answer_label(&answer)).increment(1);
    (answer, attempt_record(&reply, started, started_at, elapsed))
}

fn answer(reply: &Result<SendReply, SendError>) -> Answer {
    match reply {
        Ok(r) if r.errcode == 0 => Answer::Accepted { msgid: r.msgid },
        Ok(r) => Answer::Refused {
            errcode: r.errcode,
            errmsg: r.errmsg.clone(),
        },
        Err(e) if e.maybe_delivered() => Answer::Unknown { error: e.to_string() },
        Err(e) => Answer::NotSent { error: e.to_string() },
    }
}

fn answer_label(answer: &Answer) -> &'static str {
    match answer {
        Answer::Accepted { .. } => "ok",
        Answer::Refused { .. } => "errcode",
        Answer::NotSent { .. } | Answer::Unknown { .. } => "transport",
    }
}

fn attempt_record(
    reply: &Result<SendReply, SendError>,
    started: Instant,
    started_at: chrono::DateTime<Utc>,
    elapsed: Duration,
) -> AttemptRecord {
    let (http_status, errcode, errmsg) = match reply {
        Ok(r) => (Some(i32::from(r.http_status)), Some(r.errcode), Some(r.errmsg.clone())),
        Err(e) => (e.http_status().map(i32::from), None, Some(e.to_string())),
    };
    AttemptRecord {
        started,
        started_at,
        duration_ms: millis(elapsed),
        http_status,
        errcode,
        errmsg,
    }
}

/// A duration in whole milliseconds, as `delivery_attempts.duration_ms` holds it.
fn millis(elapsed: Duration) -> i32 {
    i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX)
}
