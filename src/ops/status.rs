//! `wxnotify status` (docs/interface.md §5): what an on-call engineer asks first. Per app: the shared
//! token's generation, seconds to expiry, any block and why, token calls today (Beijing day, as
//! WeChat counts its quota). The third-party platforms: ticket age, component token, merchants by
//! state, codes waiting. The queues' depths. Deliveries in doubt, scheduled, due. Live workers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::queue::{self, Topology};

/// Liveness as the ledger judges it: a worker that has not beaten this long holds no claims.
const LIVE_SECS: f64 = 10.0;

#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub app_id: String,
    pub token_generation: i64,
    /// Negative: expired; `None`: no token yet.
    pub token_expires_in_secs: Option<i64>,
    pub blocked_until: Option<DateTime<Utc>>,
    pub blocked_reason: Option<String>,
    /// Token API calls today (Beijing day), of WeChat's 2,000 a day.
    pub token_calls_today: i64,
}

/// A third-party platform (docs/interface.md §10), as the ledger has it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PlatformStatus {
    pub component_appid: String,
    /// Since the latest verify ticket's push; `None`: none yet.
    pub ticket_age_secs: Option<i64>,
    /// No ticket younger than 12 h: its merchants' deliveries wait for one.
    pub waiting_for_ticket: bool,
    /// Negative: expired; `None`: none yet.
    pub component_token_expires_in_secs: Option<i64>,
    pub merchants_active: i64,
    pub merchants_revoked: i64,
    pub merchants_needs_reauthorization: i64,
    /// Authorization codes pushed and not exchanged yet.
    pub codes_waiting: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub name: String,
    /// The app whose lane this is (its backlog, docs/interface.md §11); `None`: another queue.
    pub app: Option<String>,
    /// `None`: the queue does not exist (no worker declared it yet).
    pub messages: Option<u32>,
    pub consumers: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub apps: Vec<AppStatus>,
    pub platforms: Vec<PlatformStatus>,
    pub queues: Vec<QueueStatus>,
    /// An earlier send may have reached WeChat; not final yet.
    pub in_doubt: i64,
    pub scheduled: i64,
    /// Scheduled and due now: should be 0 or draining when a worker runs.
    pub due: i64,
    pub oldest_due_secs: Option<f64>,
    pub live_workers: Vec<String>,
}

/// The exact counts of `status`, each by an index: in doubt by `deliveries_in_doubt` (a handful
/// of rows), scheduled, due and the oldest due by `deliveries_due` (partial: the scheduled rows;
/// every scheduled row is counted).
pub const COUNTS_EXACT: &str = "SELECT
    (SELECT count(*) FROM deliveries
      WHERE in_doubt_since IS NOT NULL AND status IN ('pending', 'retrying')) AS in_doubt,
    (SELECT count(*) FROM deliveries WHERE status = 'scheduled') AS scheduled,
    (SELECT count(*) FROM deliveries WHERE status = 'scheduled' AND due_at <= now()) AS due,
    (SELECT EXTRACT(EPOCH FROM now() - min(due_at))::float8 FROM deliveries
      WHERE status = 'scheduled' AND due_at <= now()) AS oldest_due";

/// What every worker samples every few seconds for its gauges: the same counts, each stopping
/// at `$1` rows (a few milliseconds whatever the table holds), and the planner's estimate of the
/// scheduled rows (`deliveries_due`'s size as of the last vacuum or analyze) for when there are
/// more than that.
pub const COUNTS_SAMPLE: &str = "SELECT
    (SELECT count(*) FROM (SELECT FROM deliveries
      WHERE in_doubt_since IS NOT NULL AND status IN ('pending', 'retrying') LIMIT $1) x) AS in_doubt,
    (SELECT count(*) FROM (SELECT FROM deliveries WHERE status = 'scheduled' LIMIT $1) x) AS scheduled,
    (SELECT count(*) FROM (SELECT FROM deliveries
      WHERE status = 'scheduled' AND due_at <= now() LIMIT $1) x) AS due,
    (SELECT EXTRACT(EPOCH FROM now() - min(due_at))::float8 FROM deliveries
      WHERE status = 'scheduled' AND due_at <= now()) AS oldest_due,
    (SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass('deliveries_due')) AS scheduled_estimate";

/// Where the gauges' counts stop: beyond it they say "at least this many" (the scheduled one, the
/// planner's estimate).
pub const SAMPLE_CAP: i64 = 10_000;

/// The ledger's counts for the gauges, from [`COUNTS_SAMPLE`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub in_doubt: i64,
    pub scheduled: i64,
    pub due: i64,
    pub oldest_due_secs: Option<f64>,
    pub live_workers: i64,
}

/// A cheap sample of the ledger for the gauges: counts bounded by [`SAMPLE_CAP`]; the scheduled
/// count, when it reaches the cap, is the planner's estimate if that is larger.
pub async fn sample(pool: &PgPool) -> Result<Sample, sqlx::Error> {
    let r = sqlx::query(COUNTS_SAMPLE).bind(SAMPLE_CAP).fetch_one(pool).await?;
    let scheduled: i64 = r.try_get("scheduled")?;
    let estimate: Option<i64> = r.try_get("scheduled_estimate")?;
    let live_workers =
        sqlx::query_scalar("SELECT count(*) FROM workers WHERE heartbeat_at > now() - make_interval(secs => $1)")
            .bind(LIVE_SECS)
            .fetch_one(pool)
            .await?;
    Ok(Sample {
        in_doubt: r.try_get("in_doubt")?,
        scheduled: if scheduled >= SAMPLE_CAP {
            scheduled.max(estimate.unwrap_or(0))
        } else {
            scheduled
        },
        due: r.try_get("due")?,
        oldest_due_secs: r.try_get("oldest_due")?,
        live_workers,
    })
}

/// The apps' shared tokens, for `status` and the gauges.
pub async fn apps(pool: &PgPool) -> Result<Vec<AppStatus>, sqlx::Error> {
    sqlx::query(APPS)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(AppStatus {
                app_id: r.try_get("app_id")?,
                token_generation: r.try_get("generation")?,
                token_expires_in_secs: r.try_get("expires_in")?,
                blocked_until: r.try_get("blocked_until")?,
                blocked_reason: r.try_get("blocked_reason")?,
                token_calls_today: r.try_get("calls")?,
            })
        })
        .collect()
}

const APPS: &str = "SELECT t.app_id, t.generation,
        EXTRACT(EPOCH FROM t.expires_at - now())::bigint AS expires_in,
        CASE WHEN t.blocked_until > now() THEN t.blocked_until END AS blocked_until,
        CASE WHEN t.blocked_until > now() THEN t.blocked_reason END AS blocked_reason,
        COALESCE((SELECT sum(f.calls) FROM wechat_token_fetches f
                   WHERE f.app_id = t.app_id
                     AND f.day = (now() AT TIME ZONE 'Asia/Shanghai')::date), 0)::bigint AS calls
   FROM wechat_tokens t ORDER BY t.app_id";

/// Every platform the ledger knows of (a ticket, a token or a merchant).
pub async fn platforms(pool: &PgPool) -> Result<Vec<PlatformStatus>, sqlx::Error> {
    sqlx::query_as(
        "WITH ids AS (SELECT component_appid FROM platform_tickets UNION SELECT component_appid FROM platform_tokens
                      UNION SELECT component_appid FROM authorizers)
         SELECT i.component_appid,
                EXTRACT(EPOCH FROM now() - t.pushed_at)::bigint AS ticket_age_secs,
                (t.pushed_at IS NULL OR t.pushed_at <= now() - interval '12 hours') AS waiting_for_ticket,
                EXTRACT(EPOCH FROM k.expires_at - now())::bigint AS component_token_expires_in_secs,
                (SELECT count(*) FROM authorizers a WHERE a.component_appid = i.component_appid AND a.state = 'active') AS merchants_active,
                (SELECT count(*) FROM authorizers a WHERE a.component_appid = i.component_appid AND a.state = 'revoked') AS merchants_revoked,
                (SELECT count(*) FROM authorizers a
                  WHERE a.component_appid = i.component_appid AND a.state = 'needs_reauthorization') AS merchants_needs_reauthorization,
                (SELECT count(*) FROM platform_authorizations c
                  WHERE c.component_appid = i.component_appid AND c.exchanged_at IS NULL) AS codes_waiting
           FROM ids i
           LEFT JOIN platform_tickets t USING (component_appid)
           LEFT JOIN platform_tokens k USING (component_appid)
          ORDER BY i.component_appid",
    )
    .fetch_all(pool)
    .await
}

/// Everything the ledger says, exactly.
pub async fn ledger(pool: &PgPool) -> Result<Status, sqlx::Error> {
    let apps = apps(pool).await?;
    let platforms = platforms(pool).await?;
    let counts = sqlx::query(COUNTS_EXACT).fetch_one(pool).await?;
    let live_workers =
        sqlx::query_scalar("SELECT id FROM workers WHERE heartbeat_at > now() - make_interval(secs => $1) ORDER BY id")
            .bind(LIVE_SECS)
            .fetch_all(pool)
            .await?;
    Ok(Status {
        apps,
        platforms,
        queues: vec![],
        in_doubt: counts.try_get("in_doubt")?,
        scheduled: counts.try_get("scheduled")?,
        due: counts.try_get("due")?,
        oldest_due_secs: counts.try_get("oldest_due")?,
        live_workers,
    })
}

/// Depths of the work queue, the dead-letter queue, every retry queue that exists
/// (`<queue>.retry.<2^k>s`) and the lanes of `apps` that exist, by passive declares: nothing is
/// created.
pub async fn queues(
    amqp_url: &SecretString,
    topology: &Topology,
    apps: &[String],
) -> Result<Vec<QueueStatus>, lapin::Error> {
    let conn = queue::connect(amqp_url, "wxnotify-status").await?;
    let mut names: Vec<(String, Option<&String>)> = vec![(topology.queue.clone(), None), (topology.dlq.clone(), None)];
    names.extend((0..16).map(|k| (topology.retry_queue(Duration::from_secs(1 << k)), None)));
    names.extend(apps.iter().map(|a| (topology.lane(a), Some(a))));
    let mut out = Vec::new();
    let mut channel = conn.create_channel().await?;
    for (name, app) in names {
        match queue::peek(&channel, &name).await {
            Ok(q) => out.push(QueueStatus {
                name,
                app: app.cloned(),
                messages: Some(q.message_count()),
                consumers: Some(q.consumer_count()),
            }),
            // 404: not declared; the broker closed the channel.
            Err(_) => {
                if !name.contains(".retry.") && app.is_none() {
                    out.push(QueueStatus {
                        name,
                        app: None,
                        messages: None,
                        consumers: None,
                    });
                }
                channel = conn.create_channel().await?;
            }
        }
    }
    let _ = conn.close(200, "status read".into()).await;
    Ok(out)
}

pub fn table(s: &Status) -> String {
    let mut out = format!(
        "{:<20} {:>10} {:>12} {:>12}  {}\n",
        "APP", "TOKEN_GEN", "EXPIRES_IN_S", "CALLS_TODAY", "BLOCKED"
    );
    for a in &s.apps {
        let blocked = match (&a.blocked_until, &a.blocked_reason) {
            (Some(until), reason) => format!("until {} ({})", until.to_rfc3339(), reason.as_deref().unwrap_or("-")),
            (None, _) => "no".into(),
        };
        out.push_str(&format!(
            "{:<20} {:>10} {:>12} {:>7}/2000  {}\n",
            a.app_id,
            a.token_generation,
            a.token_expires_in_secs.map_or("-".into(), |s| s.to_string()),
            a.token_calls_today,
            blocked
        ));
    }
    if s.apps.is_empty() {
        out.push_str("(no token fetched yet)\n");
    }
    out.push_str(&platforms_table(&s.platforms));
    out.push_str(&format!("\n{:<48} {:>9} {:>9}\n", "QUEUE", "MESSAGES", "CONSUMERS"));
    for q in &s.queues {
        let n = |v: Option<u32>| v.map_or("absent".into(), |v| v.to_string());
        out.push_str(&format!("{:<48} {:>9} {:>9}\n", q.name, n(q.messages), n(q.consumers)));
    }
    let backlogs: Vec<String> = s
        .queues
        .iter()
        .filter_map(|q| Some((q.app.as_ref()?, q.messages.filter(|n| *n > 0)?)))
        .map(|(app, n)| format!("{app} {n}"))
        .collect();
    out.push_str(&format!(
        "\napps with a backlog in their lane (lane messages; a parked batch counts once): {}\n",
        if backlogs.is_empty() {
            "none".to_string()
        } else {
            backlogs.join(", ")
        }
    ));
    out.push_str(&format!(
        "\ndeliveries in doubt {}, scheduled {}, due now {}{}\nlive workers {}: {}\n",
        s.in_doubt,
        s.scheduled,
        s.due,
        s.oldest_due_secs
            .map(|secs| format!(" (oldest due {secs:.1} s ago)"))
            .unwrap_or_default(),
        s.live_workers.len(),
        s.live_workers.join(", ")
    ));
    out
}

/// The platforms, when there are any: a line each, saying when one waits for a ticket.
fn platforms_table(platforms: &[PlatformStatus]) -> String {
    if platforms.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{:<20} {:>12} {:>12} {:>7} {:>8} {:>7} {:>6}  {}\n",
        "PLATFORM", "TICKET_AGE_S", "EXPIRES_IN_S", "ACTIVE", "REVOKED", "REAUTH", "CODES", "TICKET"
    );
    let n = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
    for p in platforms {
        out.push_str(&format!(
            "{:<20} {:>12} {:>12} {:>7} {:>8} {:>7} {:>6}  {}\n",
            p.component_appid,
            n(p.ticket_age_secs),
            n(p.component_token_expires_in_secs),
            p.merchants_active,
            p.merchants_revoked,
            p.merchants_needs_reauthorization,
            p.codes_waiting,
            if p.waiting_for_ticket {
                "WAITING FOR A TICKET (none younger than 12 h; WeChat is asked for one)"
            } else {
                "ok"
            }
        ));
    }
    out
}
