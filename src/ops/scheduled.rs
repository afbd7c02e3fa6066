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

/// Cancels waiting deliveries (scheduled, or queued and not held by a worker); returns how many.
pub async fn cancel(pool: &PgPool, by: &CancelBy) -> Result<u64, sqlx::Error> {
    let (key, app, events, how) = match by {
        CancelBy::Key { cancel_key, app_id } => (Some(cancel_key), app_id.as_ref(), &[][..], "cancel key"),
        CancelBy::Events(ids) => (None, None, ids.as_slice(), "event id"),
    };
    let done = sqlx::query(
        "UPDATE deliveries
            SET status = 'cancelled', cancelled_by = 'wxnotify scheduled cancel',
                last_error = 'cancelled by hand (' || $4 || ')', updated_at = now()
          WHERE (($1::text IS NOT NULL AND cancel_key = $1 AND ($2::text IS NULL OR app_id = $2))
                 OR event_id = ANY($3))
            AND (status = 'scheduled' OR (status IN ('pending', 'retrying') AND owner IS NULL))",
    )
    .bind(key)
    .bind(app)
    .bind(events)
    .bind(how)
    .execute(pool)
    .await?;
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
