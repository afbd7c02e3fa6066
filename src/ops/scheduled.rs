//! `wxnotify scheduled`: deliveries waiting for their time (docs/interface.md §8), listed, and cancelled
//! by hand (by cancel key or by event). A delivery being sent right now is not recalled.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

/// `--due-before`: an RFC 3339 instant, or a duration ahead of now (`90m`, `2h`, `1d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueBefore(pub DateTime<Utc>);

impl std::str::FromStr for DueBefore {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(DueBefore(t.with_timezone(&Utc)));
        }
        let bad =
            || format!("{s:?}: expected an instant like 2026-11-22T14:00:00+08:00 or a duration like 90m, 2h, 1d");
        let secs = super::duration_secs(s).ok_or_else(bad)?;
        chrono::TimeDelta::try_seconds(secs)
            .and_then(|d| Utc::now().checked_add_signed(d))
            .map(DueBefore)
            .ok_or_else(bad)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduledRow {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub app_id: String,
    pub openid: String,
    pub template_id: String,
    pub due_at: DateTime<Utc>,
    pub not_after: Option<DateTime<Utc>>,
    pub cancel_key: Option<String>,
}

/// Scheduled deliveries, soonest first.
pub async fn list(pool: &PgPool, due_before: Option<DueBefore>, limit: i64) -> Result<Vec<ScheduledRow>, sqlx::Error> {
    sqlx::query(
        "SELECT id, event_id, event_type, app_id, openid, template_id, due_at, not_after, cancel_key
           FROM deliveries
          WHERE status = 'scheduled' AND ($1::timestamptz IS NULL OR due_at < $1)
          ORDER BY due_at, id
          LIMIT $2",
    )
    .bind(due_before.map(|d| d.0))
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(ScheduledRow {
            id: r.try_get("id")?,
            event_id: r.try_get("event_id")?,
            event_type: r.try_get("event_type")?,
            app_id: r.try_get("app_id")?,
            openid: r.try_get("openid")?,
            template_id: r.try_get("template_id")?,
            due_at: r.try_get("due_at")?,
            not_after: r.try_get("not_after")?,
            cancel_key: r.try_get("cancel_key")?,
        })
    })
    .collect()
}

pub fn table(rows: &[ScheduledRow]) -> String {
    let mut out = format!(
        "{:<25} {:<28} {:<20} {:<24} {:<16} {:<25} {}\n",
        "DUE_AT", "EVENT_ID", "EVENT_TYPE", "TEMPLATE", "CANCEL_KEY", "NOT_AFTER", "OPENID"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<25} {:<28} {:<20} {:<24} {:<16} {:<25} {}\n",
            r.due_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            crate::event::truncate(&r.event_id, 28),
            crate::event::truncate(&r.event_type, 20),
            crate::event::truncate(&r.template_id, 24),
            crate::event::truncate(r.cancel_key.as_deref().unwrap_or("-"), 16),
            r.not_after
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "-".into()),
            r.openid
        ));
    }
    out.push_str(&format!(
        "{} scheduled deliver{} shown\n",
        rows.len(),
        if rows.len() == 1 { "y" } else { "ies" }
    ));
    out
}

/// Which waiting deliveries to cancel by hand.
#[derive(Debug, Clone)]
pub enum CancelBy {
    /// Every template's deliveries with this cancel key (of one app, or of every app).
    Key { cancel_key: String, app_id: Option<String> },
    /// Every delivery of these events.
    Events(Vec<String>),
}

/// `--cancel-key K [--app-id A]` (`$1` K, `$2` A or NULL). The key is the last column of
/// `deliveries_cancel_key (app_id, template_id, cancel_key)`: a plain `cancel_key = K` cannot
/// use it and reads the whole table. So the (app, template) pairs that have keys are walked in
/// the index first (a loose index scan: one probe per pair, a few dozen), then each pair's rows
/// with key K are looked up.
pub const CANCEL_BY_KEY: &str = "WITH RECURSIVE pairs AS (
    (SELECT app_id, template_id FROM deliveries
      WHERE cancel_key IS NOT NULL AND ($2::text IS NULL OR app_id = $2)
      ORDER BY app_id, template_id LIMIT 1)
  UNION ALL
    SELECT n.app_id, n.template_id FROM pairs p CROSS JOIN LATERAL (
      SELECT d.app_id, d.template_id FROM deliveries d
       WHERE d.cancel_key IS NOT NULL AND ($2::text IS NULL OR d.app_id = $2)
         AND (d.app_id, d.template_id) > (p.app_id, p.template_id)
       ORDER BY d.app_id, d.template_id LIMIT 1) n
)
UPDATE deliveries d
   SET status = 'cancelled', cancelled_by = 'wxnotify scheduled cancel',
       last_error = 'cancelled by hand (cancel key)', updated_at = now()
  FROM pairs p
 WHERE d.app_id = p.app_id AND d.template_id = p.template_id AND d.cancel_key = $1
   AND (d.status = 'scheduled' OR (d.status IN ('pending', 'retrying') AND d.owner IS NULL))";

/// `--event-id ID…` (`$1` the ids), by the unique key's leading `event_id`.
pub const CANCEL_BY_EVENTS: &str = "UPDATE deliveries d
   SET status = 'cancelled', cancelled_by = 'wxnotify scheduled cancel',
       last_error = 'cancelled by hand (event id)', updated_at = now()
 WHERE d.event_id = ANY($1)
   AND (d.status = 'scheduled' OR (d.status IN ('pending', 'retrying') AND d.owner IS NULL))";

/// Cancels waiting deliveries (scheduled, or queued and not held by a worker); returns how many.
pub async fn cancel(pool: &PgPool, by: &CancelBy) -> Result<u64, sqlx::Error> {
    let done = match by {
        CancelBy::Key { cancel_key, app_id } => {
            sqlx::query(CANCEL_BY_KEY)
                .bind(cancel_key)
                .bind(app_id)
                .execute(pool)
                .await?
        }
        CancelBy::Events(ids) => sqlx::query(CANCEL_BY_EVENTS).bind(ids).execute(pool).await?,
    };
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_before_takes_instants_and_durations() {
        let t: DueBefore = "2026-11-22T14:00:00+08:00".parse().unwrap();
        assert_eq!(t.0.to_rfc3339(), "2026-11-22T06:00:00+00:00");
        let d: DueBefore = "2h".parse().unwrap();
        assert!((d.0 - Utc::now() - chrono::TimeDelta::hours(2)).num_seconds().abs() < 5);
        for bad in ["soon", "5w", "", "99999999999999d"] {
            assert!(bad.parse::<DueBefore>().is_err(), "{bad}");
        }
    }
}
