//! `wxnotify report`: the delivery summary, read from the reporting views (docs/interface.md §4):
//! `delivery_daily_summary` since a Beijing day, `consent_daily_summary` (§12) since then, and
//! `delivery_failures` seen since then.

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

/// Where the report starts: a duration back from now (`7d`, `24h`, `90m`) or a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since(pub DateTime<Utc>);

impl std::str::FromStr for Since {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            // Midnight Beijing time: the views' days are Beijing days.
            let beijing = FixedOffset::east_opt(8 * 3600).expect("valid offset");
            let start = date.and_hms_opt(0, 0, 0).expect("midnight").and_local_timezone(beijing);
            return start
                .single()
                .map(|t| Since(t.with_timezone(&Utc)))
                .ok_or_else(|| format!("{s:?}: not a usable date"));
        }
        let bad =
            || format!("{s:?}: expected a duration like 7d, 24h, 90m (unit d, h, m or s), or a date like 2026-11-01");
        let secs = super::duration_secs(s).ok_or_else(bad)?;
        let back = chrono::TimeDelta::try_seconds(secs).ok_or_else(bad)?;
        Utc::now().checked_sub_signed(back).map(Since).ok_or_else(bad)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    pub day: NaiveDate,
    pub app_id: String,
    pub event_type: String,
    pub deliveries: i64,
    pub sent: i64,
    pub dead: i64,
    pub retrying: i64,
    pub pending: i64,
    pub attempts: i64,
    pub p50_send_ms: Option<f64>,
    pub p95_send_ms: Option<f64>,
    /// Waiting for their time, cancelled before it, not sent before `not_after` (docs/interface.md §8).
    pub scheduled: i64,
    pub cancelled: i64,
    pub expired: i64,
    /// Receipts WeChat pushed: the user got it, blocked the account, or WeChat failed.
    pub delivered: i64,
    pub user_block: i64,
    pub system_failed: i64,
    /// Not sent: the user had left the account, or gave no consent.
    pub suppressed: i64,
    /// Receipts saying WeChat held the message back (`failed:freq limit`).
    pub freq_limit: i64,
    /// Sent with a consent credit, and suppressed for want of one (docs/interface.md §12).
    pub consents_used: i64,
    pub consents_missing: i64,
}

/// Subscription consent of one subscribe template on one Beijing day (docs/interface.md §12).
#[derive(Debug, Clone, Serialize)]
pub struct ConsentRow {
    pub day: NaiveDate,
    pub app_id: String,
    pub template_id: String,
    /// Pop-up accepts.
    pub granted: i64,
    /// Credits spent by sends.
    pub used: i64,
    /// Deliveries suppressed for want of a credit.
    pub missing: i64,
    /// Rejects, in the pop-up or the settings page.
    pub rejected: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureRow {
    /// `None`: no errcode (HTTP 5xx, a timeout, a connection error).
    pub errcode: Option<i64>,
    pub attempts: i64,
    pub deliveries: i64,
    pub dead: i64,
    pub last_seen: DateTime<Utc>,
    pub latest_event_id: String,
    pub latest_errmsg: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub since: DateTime<Utc>,
    pub summary: Vec<SummaryRow>,
    pub consents: Vec<ConsentRow>,
    pub failures: Vec<FailureRow>,
}

pub async fn report(pool: &PgPool, since: Since) -> Result<Report, sqlx::Error> {
    Ok(Report {
        since: since.0,
        summary: daily_summary(pool, since).await?,
        consents: consents(pool, since).await?,
        failures: failures(pool, since).await?,
    })
}

/// The daily summary since `since`: one row per (Beijing day, app, event type).
async fn daily_summary(pool: &PgPool, since: Since) -> Result<Vec<SummaryRow>, sqlx::Error> {
    sqlx::query(
        "SELECT day, app_id, event_type, deliveries, sent, dead, retrying, pending, attempts,
                p50_send_ms, p95_send_ms, scheduled, cancelled, expired, delivered, user_block, system_failed,
                suppressed, freq_limit, consents_used, consents_missing
           FROM delivery_daily_summary
          WHERE day >= ($1 AT TIME ZONE 'Asia/Shanghai')::date
          ORDER BY day, app_id, event_type",
    )
    .bind(since.0)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(SummaryRow {
            day: r.try_get("day")?,
            app_id: r.try_get("app_id")?,
            event_type: r.try_get("event_type")?,
            deliveries: r.try_get("deliveries")?,
            sent: r.try_get("sent")?,
            dead: r.try_get("dead")?,
            retrying: r.try_get("retrying")?,
            pending: r.try_get("pending")?,
            attempts: r.try_get("attempts")?,
            p50_send_ms: r.try_get("p50_send_ms")?,
            p95_send_ms: r.try_get("p95_send_ms")?,
            scheduled: r.try_get("scheduled")?,
            cancelled: r.try_get("cancelled")?,
            expired: r.try_get("expired")?,
            delivered: r.try_get("delivered")?,
            user_block: r.try_get("user_block")?,
            system_failed: r.try_get("system_failed")?,
            suppressed: r.try_get("suppressed")?,
            freq_limit: r.try_get("freq_limit")?,
            consents_used: r.try_get("consents_used")?,
            consents_missing: r.try_get("consents_missing")?,
        })
    })
    .collect()
}

/// Consent per (Beijing day, app, template) since `since`.
async fn consents(pool: &PgPool, since: Since) -> Result<Vec<ConsentRow>, sqlx::Error> {
    sqlx::query(
        "SELECT day, app_id, template_id, granted, used, missing, rejected
           FROM consent_daily_summary
          WHERE day >= ($1 AT TIME ZONE 'Asia/Shanghai')::date
          ORDER BY day, app_id, template_id",
    )
    .bind(since.0)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(ConsentRow {
            day: r.try_get("day")?,
            app_id: r.try_get("app_id")?,
            template_id: r.try_get("template_id")?,
            granted: r.try_get("granted")?,
            used: r.try_get("used")?,
            missing: r.try_get("missing")?,
            rejected: r.try_get("rejected")?,
        })
    })
    .collect()
}

/// Failed sends seen since `since`, by errcode, with the latest example.
async fn failures(pool: &PgPool, since: Since) -> Result<Vec<FailureRow>, sqlx::Error> {
    sqlx::query(
        "SELECT errcode, attempts, deliveries, dead, last_seen, latest_event_id, latest_errmsg
           FROM delivery_failures
          WHERE last_seen >= $1
          ORDER BY attempts DESC, errcode",
    )
    .bind(since.0)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(FailureRow {
            errcode: r.try_get("errcode")?,
            attempts: r.try_get("attempts")?,
            deliveries: r.try_get("deliveries")?,
            dead: r.try_get("dead")?,
            last_seen: r.try_get("last_seen")?,
            latest_event_id: r.try_get("latest_event_id")?,
            latest_errmsg: r.try_get("latest_errmsg")?,
        })
    })
    .collect()
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

/// Both tables, for people.
pub fn table(r: &Report) -> String {
    let mut out = summary_table(r);
    out.push_str(&consent_table(r));
    out.push_str(&failures_table(r));
    out
}

/// The daily summary, a header and one line per row.
fn summary_table(r: &Report) -> String {
    let mut out = format!(
        "deliveries since {} (days in Beijing time; DELIVERED, USER_BLOCK, SYS_FAILED, FREQ_LIMIT: WeChat's receipts)\n{:<10} {:<20} {:<20} {:>10} {:>8} {:>6} {:>8} {:>7} {:>9} {:>9} {:>7} {:>8} {:>7} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10}\n",
        r.since.format("%Y-%m-%d %H:%M UTC"),
        "DAY",
        "APP",
        "EVENT_TYPE",
        "DELIVERIES",
        "SENT",
        "DEAD",
        "RETRYING",
        "PENDING",
        "SCHEDULED",
        "CANCELLED",
        "EXPIRED",
        "ATTEMPTS",
        "P50_MS",
        "P95_MS",
        "DELIVERED",
        "USER_BLOCK",
        "SYS_FAILED",
        "FREQ_LIMIT",
        "SUPPRESSED"
    );
    for s in &r.summary {
        out.push_str(&format!(
            "{:<10} {:<20} {:<20} {:>10} {:>8} {:>6} {:>8} {:>7} {:>9} {:>9} {:>7} {:>8} {:>7} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10}\n",
            s.day,
            s.app_id,
            s.event_type,
            s.deliveries,
            s.sent,
            s.dead,
            s.retrying,
            s.pending,
            s.scheduled,
            s.cancelled,
            s.expired,
            s.attempts,
            ms(s.p50_send_ms),
            ms(s.p95_send_ms),
            s.delivered,
            s.user_block,
            s.system_failed,
            s.freq_limit,
            s.suppressed
        ));
    }
    out
}

/// Subscription consent by template, when any was recorded.
fn consent_table(r: &Report) -> String {
    if r.consents.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\nsubscription consent by template (GRANTED: accepts; USED: sent with one; MISSING: suppressed without one)\n{:<10} {:<20} {:<32} {:>8} {:>8} {:>8} {:>8}\n",
        "DAY", "APP", "TEMPLATE", "GRANTED", "USED", "MISSING", "REJECTED"
    );
    for c in &r.consents {
        out.push_str(&format!(
            "{:<10} {:<20} {:<32} {:>8} {:>8} {:>8} {:>8}\n",
            c.day,
            c.app_id,
            crate::event::truncate(&c.template_id, 32),
            c.granted,
            c.used,
            c.missing,
            c.rejected
        ));
    }
    out
}

/// The failures by errcode, a header and one line per errcode.
fn failures_table(r: &Report) -> String {
    let mut out = format!(
        "\nfailed sends by errcode\n{:>8} {:>8} {:>10} {:>6}  {:<20} {:<28} {}\n",
        "ERRCODE", "ATTEMPTS", "DELIVERIES", "DEAD", "LAST_SEEN", "LATEST_EVENT", "LATEST_ERRMSG"
    );
    for f in &r.failures {
        out.push_str(&format!(
            "{:>8} {:>8} {:>10} {:>6}  {:<20} {:<28} {}\n",
            f.errcode.map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
            f.attempts,
            f.deliveries,
            f.dead,
            f.last_seen.format("%Y-%m-%d %H:%M:%S"),
            crate::event::truncate(&f.latest_event_id, 28),
            f.latest_errmsg.as_deref().unwrap_or("-")
        ));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The daily summary as CSV (header row first), for spreadsheets.
pub fn csv(r: &Report) -> String {
    let mut out = String::from(
        "day,app_id,event_type,deliveries,sent,dead,retrying,pending,attempts,p50_send_ms,p95_send_ms,\
         scheduled,cancelled,expired,delivered,user_block,system_failed,suppressed,freq_limit,consents_used,\
         consents_missing\n",
    );
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for s in &r.summary {
        let fields = [
            s.day.to_string(),
            csv_field(&s.app_id),
            csv_field(&s.event_type),
            s.deliveries.to_string(),
            s.sent.to_string(),
            s.dead.to_string(),
            s.retrying.to_string(),
            s.pending.to_string(),
            s.attempts.to_string(),
            opt(s.p50_send_ms),
            opt(s.p95_send_ms),
            s.scheduled.to_string(),
            s.cancelled.to_string(),
            s.expired.to_string(),
            s.delivered.to_string(),
            s.user_block.to_string(),
            s.system_failed.to_string(),
            s.suppressed.to_string(),
            s.freq_limit.to_string(),
            s.consents_used.to_string(),
            s.consents_missing.to_string(),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_beijing_dates() {
        let now = Utc::now();
        let d: Since = "7d".parse().unwrap();
        assert!((now - d.0 - chrono::Duration::days(7)).num_seconds().abs() < 5);
        let h: Since = "24h".parse().unwrap();
        assert!((now - h.0 - chrono::Duration::hours(24)).num_seconds().abs() < 5);
        let date: Since = "2026-11-01".parse().unwrap();
        assert_eq!(date.0.to_rfc3339(), "2026-10-31T16:00:00+00:00");
        assert!("7w".parse::<Since>().unwrap_err().contains("unit"));
        assert!("yesterday".parse::<Since>().is_err());
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
