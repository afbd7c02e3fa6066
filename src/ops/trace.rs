//! `wxnotify trace`: "did the customer get it?" One delivery's whole story from the ledger
//! (docs/interface.md §4, §5): every delivery of an event (or of a user since a time), its
//! attempts with errcodes and workers, doubt, the dead letter, replays, cancellation (by which
//! event), schedule and lateness, WeChat's receipt, whether the user follows the account, and a
//! subscribe delivery's consent history up to its outcome (§12).
//!
//! Read from Postgres only: the dead-letter queue itself is not read (`wxnotify dlq list` shows
//! it); a dead letter appears as the ledger's `dead` row and as the `dlq_replays` records of the
//! event. Nothing secret is in these tables, and the stored event (`payload`) is not read.
//!
//! Every query is indexed: deliveries by `deliveries_key` (event_id first), attempts by
//! `delivery_attempts_delivery`, replays by `dlq_replays_event`, receipts, cancellations and
//! followers by their primary keys, consent by `consent_log_key`. `--openid` has no index of its own (none on
//! `deliveries (openid, …)`): it scans `deliveries_created_at` from `--since`, and stops at
//! `--limit`.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use sqlx::PgPool;

/// What to trace: the deliveries of these events, or of this user since then (at most `limit`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Query {
    EventIds {
        event_ids: Vec<String>,
    },
    Openid {
        openid: String,
        since: DateTime<Utc>,
        limit: i64,
    },
}

/// One HTTP send of a delivery (`delivery_attempts`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Attempt {
    #[serde(skip)]
    pub delivery_id: i64,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    /// `None`: no errcode (HTTP 5xx, a timeout, a connection error); 0: sent.
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub worker: Option<String>,
}

/// A dead letter of the event moved back to the work queue (`dlq_replays`). A dead letter is the
/// event's message, so a replay belongs to the event, and is shown with each of its deliveries.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Replay {
    pub replay_id: String,
    pub replayed_at: DateTime<Utc>,
    /// The command's filter, e.g. `--reason retries_exhausted`.
    pub filter: String,
    pub event_id: Option<String>,
    /// Why it was dead, and on which errcode, when it was replayed.
    pub reason: String,
    pub errcode: Option<i64>,
    pub dead_at: Option<DateTime<Utc>>,
    pub operator: Option<String>,
}

/// A receipt WeChat pushed for the delivery's msgid (`delivery_receipts`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Receipt {
    #[serde(skip)]
    pub app_id: String,
    #[serde(serialize_with = "as_string")]
    pub msgid: i64,
    /// `delivered`, `user_block` or `system_failed`.
    pub status: String,
    /// WeChat's own words, e.g. `failed: system failed`.
    pub wechat_status: String,
    /// The push's CreateTime.
    pub event_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

/// What WeChat last told us about a user and an app (`followers`); none: never heard of.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Follower {
    pub app_id: String,
    pub openid: String,
    pub followed: bool,
    pub changed_at: DateTime<Utc>,
    /// `push` (subscribe/unsubscribe) or `errcode_43004` (the send API said the user left).
    pub source: String,
}

/// A change to the user's consent to the delivery's template (`consent_log`, docs/interface.md §12).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ConsentEntry {
    #[serde(skip)]
    pub app_id: String,
    #[serde(skip)]
    pub openid: String,
    #[serde(skip)]
    pub template_id: String,
    /// `accept`, `reject`, `settings_accept`, `settings_reject` (pushes), `use` (a credit a
    /// delivery spent) or `refused` (WeChat's 43101).
    pub kind: String,
    pub at: DateTime<Utc>,
    pub delivery_id: Option<i64>,
}

/// Most consent entries shown per delivery: the latest up to its outcome.
const CONSENT_SHOWN: usize = 10;

/// One delivery (event × template × user) and everything that happened to it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Delivery {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub app_id: String,
    pub openid: String,
    pub template_id: String,
    pub status: String,
    pub occurred_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Scheduled deliveries: when it fell due, and the instant it may not be sent after.
    pub due_at: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
    /// Scheduled deliveries: sent (or first tried) this long after `due_at`, in milliseconds.
    #[sqlx(skip)]
    pub lateness_ms: Option<i64>,
    pub sent_at: Option<DateTime<Utc>>,
    /// A string: WeChat's msgids exceed 2^53.
    #[serde(serialize_with = "opt_as_string")]
    pub wechat_msgid: Option<i64>,
    /// The earliest send whose outcome is unknown (a crash or timeout mid-send).
    pub in_doubt_since: Option<DateTime<Utc>>,
    pub dead_reason: Option<String>,
    pub last_errcode: Option<i64>,
    pub last_error: Option<String>,
    pub cancel_key: Option<String>,
    /// The cancelling event's id (or `wxnotify scheduled cancel`), and its type.
    pub cancelled_by: Option<String>,
    pub cancelled_by_type: Option<String>,
    pub receipt_status: Option<String>,
    pub receipt_at: Option<DateTime<Utc>>,
    #[sqlx(skip)]
    pub attempts: Vec<Attempt>,
    #[sqlx(skip)]
    pub replays: Vec<Replay>,
    #[sqlx(skip)]
    pub receipts: Vec<Receipt>,
    /// The user's consent to this template up to the delivery's outcome, latest last.
    #[sqlx(skip)]
    pub consent: Vec<ConsentEntry>,
}

/// The answer: the deliveries, oldest first per event; replays of the asked events that have no
/// delivery (e.g. an event that was never valid); the users' follower state.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub query: Query,
    pub deliveries: Vec<Delivery>,
    pub replays_without_delivery: Vec<Replay>,
    pub followers: Vec<Follower>,
}

fn as_string<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn opt_as_string<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// The deliveries' columns and the cancelling event's type; a macro, so that each query is one
/// literal (`concat!`).
macro_rules! deliveries_select {
    () => {
        "SELECT d.id, d.event_id, d.event_type, d.app_id, d.openid, d.template_id, d.status,
        d.occurred_at, d.created_at, d.updated_at, d.due_at, d.not_after, d.sent_at, d.wechat_msgid,
        d.in_doubt_since, d.dead_reason, d.last_errcode, d.last_error, d.cancel_key, d.cancelled_by,
        c.event_type AS cancelled_by_type, d.receipt_status, d.receipt_at
   FROM deliveries d
   LEFT JOIN delivery_cancellations c
          ON c.app_id = d.app_id AND c.template_id = d.template_id AND c.cancel_key = d.cancel_key
         AND c.event_id = d.cancelled_by"
    };
}

/// The whole story of the deliveries `query` names.
pub async fn trace(pool: &PgPool, query: Query) -> Result<Trace, sqlx::Error> {
    let mut deliveries = deliveries(pool, &query).await?;
    let ids: Vec<i64> = deliveries.iter().map(|d| d.id).collect();
    let attempts = attempts(pool, &ids).await?;
    let mut event_ids: Vec<String> = match &query {
        Query::EventIds { event_ids } => event_ids.clone(),
        Query::Openid { .. } => deliveries.iter().map(|d| d.event_id.clone()).collect(),
    };
    event_ids.sort();
    event_ids.dedup();
    let replays = replays(pool, &event_ids).await?;
    let receipts = receipts(pool, &deliveries).await?;
    let consent = consent(pool, &deliveries).await?;
    for d in &mut deliveries {
        d.consent = consent_until_outcome(d, &consent);
        d.attempts = attempts.iter().filter(|a| a.delivery_id == d.id).cloned().collect();
        d.replays = replays
            .iter()
            .filter(|r| r.event_id.as_deref() == Some(&d.event_id))
            .cloned()
            .collect();
        d.receipts = receipts
            .iter()
            .filter(|r| r.app_id == d.app_id && Some(r.msgid) == d.wechat_msgid)
            .cloned()
            .collect();
        d.lateness_ms = lateness_ms(d);
    }
    let replays_without_delivery = replays
        .into_iter()
        .filter(|r| !deliveries.iter().any(|d| r.event_id.as_deref() == Some(&d.event_id)))
        .collect();
    let followers = followers(pool, &deliveries).await?;
    Ok(Trace {
        query,
        deliveries,
        replays_without_delivery,
        followers,
    })
}

/// A scheduled delivery's delay: sent (or, unsent, first tried) this long after it fell due.
fn lateness_ms(d: &Delivery) -> Option<i64> {
    let due = d.due_at?;
    let went = d.sent_at.or_else(|| d.attempts.first().map(|a| a.started_at))?;
    Some((went - due).num_milliseconds())
}

async fn deliveries(pool: &PgPool, query: &Query) -> Result<Vec<Delivery>, sqlx::Error> {
    match query {
        Query::EventIds { event_ids } => {
            let sql = concat!(
                deliveries_select!(),
                " WHERE d.event_id = ANY($1) ORDER BY d.created_at, d.id"
            );
            sqlx::query_as(sql).bind(event_ids).fetch_all(pool).await
        }
        Query::Openid { openid, since, limit } => {
            let sql = concat!(
                deliveries_select!(),
                " WHERE d.openid = $1 AND d.created_at >= $2 ORDER BY d.created_at DESC, d.id DESC LIMIT $3"
            );
            // The latest `limit`, shown oldest first.
            let mut rows: Vec<Delivery> = sqlx::query_as(sql)
                .bind(openid)
                .bind(since)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.reverse();
            Ok(rows)
        }
    }
}

async fn attempts(pool: &PgPool, delivery_ids: &[i64]) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT delivery_id, attempt, started_at, duration_ms, http_status, errcode, errmsg, worker
           FROM delivery_attempts
          WHERE delivery_id = ANY($1)
          ORDER BY delivery_id, started_at, id",
    )
    .bind(delivery_ids)
    .fetch_all(pool)
    .await
}

async fn replays(pool: &PgPool, event_ids: &[String]) -> Result<Vec<Replay>, sqlx::Error> {
    sqlx::query_as(
        "SELECT replay_id, replayed_at, filter, event_id, reason, errcode, dead_at, operator
           FROM dlq_replays
          WHERE event_id = ANY($1)
          ORDER BY replayed_at, id",
    )
    .bind(event_ids)
    .fetch_all(pool)
    .await
}

async fn receipts(pool: &PgPool, deliveries: &[Delivery]) -> Result<Vec<Receipt>, sqlx::Error> {
    let (apps, msgids): (Vec<&str>, Vec<i64>) = deliveries
        .iter()
        .filter_map(|d| Some((d.app_id.as_str(), d.wechat_msgid?)))
        .unzip();
    sqlx::query_as(
        "SELECT r.app_id, r.msgid, r.status, r.wechat_status, r.event_at, r.received_at
           FROM unnest($1::text[], $2::bigint[]) AS k(app_id, msgid)
           JOIN delivery_receipts r ON r.app_id = k.app_id AND r.msgid = k.msgid
          ORDER BY r.event_at",
    )
    .bind(apps)
    .bind(msgids)
    .fetch_all(pool)
    .await
}

/// The consent history of the deliveries' (app, openid, template) keys.
async fn consent(pool: &PgPool, deliveries: &[Delivery]) -> Result<Vec<ConsentEntry>, sqlx::Error> {
    let mut keys: Vec<(&str, &str, &str)> = deliveries
        .iter()
        .map(|d| (d.app_id.as_str(), d.openid.as_str(), d.template_id.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let apps: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let openids: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let templates: Vec<&str> = keys.iter().map(|k| k.2).collect();
    sqlx::query_as(
        "SELECT l.app_id, l.openid, l.template_id, l.kind, l.at, l.delivery_id
           FROM unnest($1::text[], $2::text[], $3::text[]) AS k(app_id, openid, template_id)
           JOIN consent_log l ON l.app_id = k.app_id AND l.openid = k.openid AND l.template_id = k.template_id
          ORDER BY l.at, l.id",
    )
    .bind(apps)
    .bind(openids)
    .bind(templates)
    .fetch_all(pool)
    .await
}

/// The key's consent entries up to the delivery's outcome (its send, or its last change), the
/// latest [`CONSENT_SHOWN`]: the consent as it stood when the delivery was decided.
fn consent_until_outcome(d: &Delivery, all: &[ConsentEntry]) -> Vec<ConsentEntry> {
    let until = d.sent_at.unwrap_or(d.updated_at);
    let mine: Vec<ConsentEntry> = all
        .iter()
        .filter(|c| c.app_id == d.app_id && c.openid == d.openid && c.template_id == d.template_id)
        .filter(|c| c.at <= until || c.delivery_id == Some(d.id))
        .cloned()
        .collect();
    mine[mine.len().saturating_sub(CONSENT_SHOWN)..].to_vec()
}

async fn followers(pool: &PgPool, deliveries: &[Delivery]) -> Result<Vec<Follower>, sqlx::Error> {
    let mut users: Vec<(&str, &str)> = deliveries
        .iter()
        .map(|d| (d.app_id.as_str(), d.openid.as_str()))
        .collect();
    users.sort_unstable();
    users.dedup();
    let (apps, openids): (Vec<&str>, Vec<&str>) = users.into_iter().unzip();
    sqlx::query_as(
        "SELECT f.app_id, f.openid, f.followed, f.changed_at, f.source
           FROM unnest($1::text[], $2::text[]) AS k(app_id, openid)
           JOIN followers f ON f.app_id = k.app_id AND f.openid = k.openid
          ORDER BY f.app_id, f.openid",
    )
    .bind(apps)
    .bind(openids)
    .fetch_all(pool)
    .await
}

/// An instant for people: UTC to the millisecond.
fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A value someone else wrote (the sender, WeChat), control characters escaped.
fn esc(s: &str) -> String {
    s.escape_debug().to_string()
}

/// `-1 system error` / `-` for an attempt's or a dead letter's errcode and message.
fn errcode(code: Option<i64>, msg: Option<&str>) -> String {
    let code = code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
    match msg {
        Some(m) => format!("{code} {}", esc(m)),
        None => code,
    }
}

/// The trace for people: one block per delivery, attempts and replays as indented lines, then
/// the users' follower state and a count.
pub fn table(t: &Trace) -> String {
    let mut out = String::new();
    for d in &t.deliveries {
        out.push_str(&delivery_block(d));
        out.push('\n');
    }
    for r in &t.replays_without_delivery {
        out.push_str(&format!(
            "event {} has no delivery; its dead letter was replayed:\n{}",
            esc(r.event_id.as_deref().unwrap_or("?")),
            replay_line(r)
        ));
    }
    out.push_str(&followers_block(t));
    out.push_str(&summary(t));
    out
}

fn summary(t: &Trace) -> String {
    let n = t.deliveries.len();
    let what = match &t.query {
        Query::EventIds { event_ids } => {
            let ids: Vec<String> = event_ids.iter().map(|e| esc(e)).collect();
            format!("of event {}", ids.join(", "))
        }
        Query::Openid { openid, since, limit } => {
            let cut = if n as i64 >= *limit {
                format!(" (the latest {limit}: --limit)")
            } else {
                String::new()
            };
            format!("to {} since {}{cut}", esc(openid), at(*since))
        }
    };
    let noun = if n == 1 { "delivery" } else { "deliveries" };
    match n {
        0 => format!("no deliveries {what} in the ledger\n"),
        _ => format!("{n} {noun} {what}\n"),
    }
}

fn delivery_block(d: &Delivery) -> String {
    let mut out = format!(
        "delivery {}  event {} ({})  template {}\n  to         {} of app {}\n  status     {}\n  created    {} (event occurred {})\n",
        d.id,
        esc(&d.event_id),
        esc(&d.event_type),
        esc(&d.template_id),
        esc(&d.openid),
        esc(&d.app_id),
        status_line(d),
        at(d.created_at),
        at(d.occurred_at),
    );
    for line in [
        schedule_line(d),
        doubt_line(d),
        dead_line(d),
        cancel_line(d),
        error_line(d),
    ]
    .into_iter()
    .flatten()
    {
        out.push_str(&line);
    }
    out.push_str(&format!("  attempts   {}\n", d.attempts.len()));
    for a in &d.attempts {
        out.push_str(&attempt_line(a));
    }
    if !d.replays.is_empty() {
        out.push_str(&format!(
            "  replays    {} (of the event's dead letters)\n",
            d.replays.len()
        ));
    }
    for r in &d.replays {
        out.push_str(&replay_line(r));
    }
    out.push_str(&consent_lines(d));
    out.push_str(&receipt_line(d));
    out
}

/// The consent history (subscribe templates), one line per change, this delivery's own marked.
fn consent_lines(d: &Delivery) -> String {
    if d.consent.is_empty() {
        return String::new();
    }
    let mut out = "  consent    up to this delivery's outcome (latest last):\n".to_string();
    for c in &d.consent {
        let whose = match c.delivery_id {
            Some(id) if id == d.id => " (this delivery)".to_string(),
            Some(id) => format!(" (delivery {id})"),
            None => String::new(),
        };
        out.push_str(&format!("    {:<16} {}{whose}\n", esc(&c.kind), at(c.at)));
    }
    out
}

fn status_line(d: &Delivery) -> String {
    match (d.status.as_str(), d.sent_at) {
        ("sent", Some(sent)) => format!(
            "sent at {}, msgid {}",
            at(sent),
            d.wechat_msgid.map(|m| m.to_string()).unwrap_or_else(|| "-".into())
        ),
        (status, _) => format!("{status} (since {})", at(d.updated_at)),
    }
}

fn schedule_line(d: &Delivery) -> Option<String> {
    let due = d.due_at?;
    let not_after = d
        .not_after
        .map(|t| format!(", not after {}", at(t)))
        .unwrap_or_default();
    let late = match d.lateness_ms {
        Some(ms) if d.sent_at.is_some() => format!("; sent {} after it fell due", seconds(ms)),
        Some(ms) => format!("; first tried {} after it fell due", seconds(ms)),
        None => String::new(),
    };
    Some(format!("  due        {}{not_after}{late}\n", at(due)))
}

fn seconds(ms: i64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn doubt_line(d: &Delivery) -> Option<String> {
    d.in_doubt_since.map(|t| {
        format!(
            "  in doubt   since {}: a send whose outcome is unknown (crash or timeout mid-send)\n",
            at(t)
        )
    })
}

fn dead_line(d: &Delivery) -> Option<String> {
    (d.status == "dead").then(|| {
        format!(
            "  dead       {}, errcode {}\n",
            d.dead_reason.as_deref().map(esc).unwrap_or_else(|| "-".into()),
            errcode(d.last_errcode, d.last_error.as_deref())
        )
    })
}

fn cancel_line(d: &Delivery) -> Option<String> {
    let by = d.cancelled_by.as_deref()?;
    let kind = d
        .cancelled_by_type
        .as_deref()
        .map(|t| format!(" ({})", esc(t)))
        .unwrap_or_default();
    let key = d
        .cancel_key
        .as_deref()
        .map(|k| format!(", cancel key {}", esc(k)))
        .unwrap_or_default();
    Some(format!("  cancelled  by {}{kind}{key}\n", esc(by)))
}

/// The last error of a delivery that is still open, expired or suppressed (sent has none; dead
/// and cancelled have their own line).
fn error_line(d: &Delivery) -> Option<String> {
    if matches!(d.status.as_str(), "sent" | "dead" | "cancelled") {
        return None;
    }
    let e = esc(d.last_error.as_deref()?);
    let code = d.last_errcode.map(|c| format!(" (errcode {c})")).unwrap_or_default();
    Some(format!("  last error {e}{code}\n"))
}

fn attempt_line(a: &Attempt) -> String {
    format!(
        "    #{:<3} {}  {:>6} ms  http {:<4} errcode {}  worker {}\n",
        a.attempt,
        at(a.started_at),
        a.duration_ms,
        a.http_status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        errcode(a.errcode, a.errmsg.as_deref()),
        a.worker.as_deref().map(esc).unwrap_or_else(|| "-".into())
    )
}

fn replay_line(r: &Replay) -> String {
    format!(
        "    {}  replay {}{} ({}): dead since {} for {}, errcode {}\n",
        at(r.replayed_at),
        esc(&r.replay_id),
        r.operator
            .as_deref()
            .map(|o| format!(" by {}", esc(o)))
            .unwrap_or_default(),
        esc(&r.filter),
        r.dead_at.map(at).unwrap_or_else(|| "?".into()),
        esc(&r.reason),
        errcode(r.errcode, None)
    )
}

fn receipt_line(d: &Delivery) -> String {
    let mut out = match (&d.receipt_status, d.receipt_at) {
        (Some(s), Some(t)) => format!("  receipt    {} at {}\n", esc(s), at(t)),
        _ if d.wechat_msgid.is_some() => "  receipt    none yet\n".to_string(),
        _ => return String::new(),
    };
    for r in &d.receipts {
        out.push_str(&format!(
            "    {}  {} (WeChat: {}), received {}\n",
            at(r.event_at),
            esc(&r.status),
            esc(&r.wechat_status),
            at(r.received_at)
        ));
    }
    out
}

/// Each user of the deliveries: following, left, or never heard of (taken as following).
fn followers_block(t: &Trace) -> String {
    let mut users: Vec<(&str, &str)> = t
        .deliveries
        .iter()
        .map(|d| (d.app_id.as_str(), d.openid.as_str()))
        .collect();
    users.sort_unstable();
    users.dedup();
    let mut out = String::new();
    for (app, openid) in users {
        let state = match t.followers.iter().find(|f| f.app_id == app && f.openid == openid) {
            Some(f) if f.followed => format!("follows since {} ({})", at(f.changed_at), esc(&f.source)),
            Some(f) => format!("LEFT at {} ({})", at(f.changed_at), esc(&f.source)),
            None => "no follow or unfollow heard of (taken as following)".to_string(),
        };
        out.push_str(&format!("follower {} of app {}: {state}\n", esc(openid), esc(app)));
    }
    out
}
