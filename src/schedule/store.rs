//! Deliveries that wait (docs/interface.md §8): stored `scheduled` with their `due_at`, cancelled by the
//! events listed in their template's `cancelled_by` (whichever arrives first), and taken when due
//! by one worker's due-delivery loop, which republishes each to the work queue.
//!
//! Cancellation and storage of the same (app, template, cancel key) serialize on a transaction
//! advisory lock: a cancellation committed first is seen by the delivery's insert; a delivery
//! committed first is seen by the cancellation's update. Locks are taken in key order.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};

use crate::event::DeliveryKey;
use crate::fate::DueFate;
use crate::ids::AppId;
use crate::ledger::Ledger;

/// The channel a worker notifies when it stored a delivery that falls due: every worker's
/// due-delivery loop listens, so the earliest due time is known to all of them.
pub(crate) const DUE_CHANNEL: &str = "wxnotify_due";

/// One delivery to store until it falls due.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    pub key: DeliveryKey,
    pub event_type: String,
    pub app_id: AppId,
    pub occurred_at: DateTime<Utc>,
    pub client_msg_id: String,
    pub due_at: DateTime<Utc>,
    pub not_after: Option<DateTime<Utc>>,
    pub cancel_key: Option<String>,
    /// The event as it arrived, republished when due.
    pub payload: String,
}

/// What a cancelling event cancels: one template's deliveries with this key, of events that
/// occurred no later than it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cancellation {
    pub app_id: AppId,
    pub template_id: String,
    pub cancel_key: String,
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
}

/// What storing an event's waiting deliveries did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    /// Rows stored `scheduled`, `cancelled` (a cancellation came first), `expired` (past
    /// `not_after` already); copies of rows stored before change nothing.
    pub scheduled: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Waiting deliveries of other events this event cancelled.
    pub cancelled_others: u64,
}

/// A due row, locked by the transaction that releases it.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub app_id: String,
    pub template_id: String,
    pub due_at: DateTime<Utc>,
    pub not_after: Option<DateTime<Utc>>,
    pub payload: Option<String>,
}

/// Due rows taken for release: the transaction holds their row locks until [`DueBatch::finish`].
pub(crate) struct DueBatch {
    tx: Transaction<'static, Postgres>,
    pub rows: Vec<Due>,
    /// The database's clock when taken.
    pub now: DateTime<Utc>,
}

impl Ledger {
    /// Seconds until the earliest scheduled delivery falls due, by the database's clock (≤ 0:
    /// due now; `None`: nothing scheduled). The partial index answers it.
    pub(crate) async fn next_due_in(&self) -> Result<Option<f64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM min(due_at) - now())::float8 FROM deliveries WHERE status = 'scheduled'",
        )
        .fetch_one(self.pool())
        .await
    }

    /// Listens for [`DUE_CHANNEL`]: a worker stored a delivery that will fall due.
    pub(crate) async fn listen_due(&self) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(self.pool()).await?;
        listener.listen(DUE_CHANNEL).await?;
        Ok(listener)
    }

    /// Takes up to `limit` due rows nobody else is releasing (`FOR UPDATE SKIP LOCKED`).
    pub(crate) async fn take_due(&self, limit: i64) -> Result<DueBatch, sqlx::Error> {
        let mut tx = crate::db::begin(self.pool()).await?;
        let rows = sqlx::query(
            "SELECT id, event_id, event_type, app_id, template_id, due_at, not_after, payload, now() AS now
               FROM deliveries
              WHERE status = 'scheduled' AND due_at <= now()
              ORDER BY due_at
              LIMIT $1
                FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let now = match rows.first() {
            Some(r) => r.try_get("now")?,
            None => Utc::now(),
        };
        let rows = rows
            .into_iter()
            .map(|r| {
                Ok(Due {
                    id: r.try_get("id")?,
                    event_id: r.try_get("event_id")?,
                    event_type: r.try_get("event_type")?,
                    app_id: r.try_get("app_id")?,
                    template_id: r.try_get("template_id")?,
                    due_at: r.try_get("due_at")?,
                    not_after: r.try_get("not_after")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(DueBatch { tx, rows, now })
    }
}

impl DueBatch {
    /// Writes each row's fate (row ids with theirs) and commits, releasing the locks. Rows left
    /// out stay `scheduled` and due: taken again.
    pub(crate) async fn finish(mut self, fates: &[(i64, DueFate)]) -> Result<(), sqlx::Error> {
        let (mut ids, mut statuses, mut due) = (vec![], vec![], vec![]);
        for (id, fate) in fates {
            ids.push(*id);
            let (status, at) = match fate {
                DueFate::Released => ("pending", None),
                DueFate::Deferred(at) => ("scheduled", Some(*at)),
                DueFate::Expired => ("expired", None),
            };
            statuses.push(status);
            due.push(at);
        }
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE deliveries d
                    SET status = v.status,
                        due_at = COALESCE(v.due_at, d.due_at),
                        last_error = CASE WHEN v.status = 'expired' THEN 'not sent before not_after'
                                          ELSE d.last_error END,
                        updated_at = now()
                   FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS v(id, status, due_at)
                  WHERE d.id = v.id AND d.status = 'scheduled'",
            )
            .bind(&ids)
            .bind(&statuses)
            .bind(&due)
            .execute(&mut *self.tx)
            .await?;
        }
        self.tx.commit().await
    }
}

/// Serializes with every other transaction storing or cancelling the same (app, template, key).
pub(super) async fn lock_keys<'a>(
    tx: &mut Transaction<'static, Postgres>,
    waiting: &[&Waiting],
    cancellations: impl Iterator<Item = &'a Cancellation>,
) -> Result<(), sqlx::Error> {
    let mut keys: Vec<(AppId, String, String)> = waiting
        .iter()
        .filter_map(|w| {
            w.cancel_key
                .as_ref()
                .map(|k| (w.app_id.clone(), w.key.template_id.clone(), k.clone()))
        })
        .chain(cancellations.map(|c| (c.app_id.clone(), c.template_id.clone(), c.cancel_key.clone())))
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort();
    keys.dedup();
    let col = |f: fn(&(AppId, String, String)) -> &str| keys.iter().map(|k| f(k).to_string()).collect::<Vec<_>>();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(h)
           FROM (SELECT DISTINCT hashtextextended(a || chr(31) || t || chr(31) || k, 0) AS h
                   FROM unnest($1::text[], $2::text[], $3::text[]) AS x(a, t, k)) s
          ORDER BY h",
    )
    .bind(col(|k| &k.0))
    .bind(col(|k| &k.1))
    .bind(col(|k| &k.2))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records the cancellations (for deliveries arriving later) and cancels the waiting deliveries
/// they cover. A delivery held by a worker (being sent) is not recalled. Each cancellation comes
/// with its event's place in the batch; returned: that place once per delivery it cancelled.
pub(super) async fn cancel(
    tx: &mut Transaction<'static, Postgres>,
    cs: &[(usize, &Cancellation)],
) -> Result<Vec<usize>, sqlx::Error> {
    let col = |f: fn(&Cancellation) -> &String| cs.iter().map(|(_, c)| f(c).clone()).collect::<Vec<_>>();
    let places: Vec<i32> = sqlx::query_scalar(
        "WITH c AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                                  $7::int[])
               AS t(app_id, template_id, cancel_key, event_id, event_type, occurred_at, place)
         ),
         kept AS (
             INSERT INTO delivery_cancellations (app_id, template_id, cancel_key, event_id, event_type, occurred_at)
             SELECT app_id, template_id, cancel_key, event_id, event_type, occurred_at FROM c
             ON CONFLICT DO NOTHING
         )
         UPDATE deliveries d
            SET status = 'cancelled',
                cancelled_by = c.event_id,
                last_error = 'cancelled by ' || c.event_type || ' ' || c.event_id,
                updated_at = now()
           FROM c
          WHERE d.app_id = c.app_id AND d.template_id = c.template_id AND d.cancel_key = c.cancel_key
            AND d.event_id <> c.event_id AND d.occurred_at <= c.occurred_at
            AND (d.status = 'scheduled' OR (d.status IN ('pending', 'retrying') AND d.owner IS NULL))
         RETURNING c.place",
    )
    .bind(cs.iter().map(|(_, c)| c.app_id.clone()).collect::<Vec<_>>())
    .bind(col(|c| &c.template_id))
    .bind(col(|c| &c.cancel_key))
    .bind(col(|c| &c.event_id))
    .bind(col(|c| &c.event_type))
    .bind(cs.iter().map(|(_, c)| c.occurred_at).collect::<Vec<_>>())
    .bind(
        cs.iter()
            .map(|(i, _)| i32::try_from(*i).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(places.into_iter().filter_map(|p| usize::try_from(p).ok()).collect())
}

/// Wakes every due-delivery loop (at commit): a delivery stored falls due before they would
/// look by themselves. Postgres takes its cluster-wide notify lock at that commit.
pub(super) async fn notify_due(tx: &mut Transaction<'static, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(DUE_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts the waiting deliveries (a copy of one stored before changes nothing): `cancelled` if a
/// cancellation arrived first, `expired` if it can no longer go out before `not_after`, else
/// `scheduled`. Returns the status of each row stored, by key, with whether it falls due before
/// the due-delivery loops wake up by themselves.
pub(super) async fn store(
    tx: &mut Transaction<'static, Postgres>,
    ws: &[&Waiting],
) -> Result<HashMap<DeliveryKey, (String, bool)>, sqlx::Error> {
    let col = |f: fn(&Waiting) -> &String| ws.iter().map(|w| f(w).clone()).collect::<Vec<_>>();
    let rows: Vec<(String, String, String, String, bool)> = sqlx::query_as(
        "INSERT INTO deliveries AS d
             (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
              due_at, not_after, cancel_key, payload, status, cancelled_by, last_error)
         SELECT t.event_id, t.event_type, t.app_id, t.openid, t.template_id, t.occurred_at, t.client_msg_id,
                t.due_at, t.not_after, t.cancel_key, t.payload,
                CASE WHEN c.event_id IS NOT NULL THEN 'cancelled'
                     WHEN t.not_after < now() OR t.not_after < t.due_at THEN 'expired'
                     ELSE 'scheduled' END,
                c.event_id,
                CASE WHEN c.event_id IS NOT NULL THEN 'cancelled by ' || c.event_type || ' ' || c.event_id
                     WHEN t.not_after < now() OR t.not_after < t.due_at THEN 'cannot be sent before not_after'
                END
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[],
                       $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[])
                AS t(event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
                     due_at, not_after, cancel_key, payload)
           LEFT JOIN LATERAL (
                SELECT x.event_id, x.event_type FROM delivery_cancellations x
                 WHERE x.app_id = t.app_id AND x.template_id = t.template_id AND x.cancel_key = t.cancel_key
                   AND x.event_id <> t.event_id AND x.occurred_at >= t.occurred_at
                 LIMIT 1) c ON true
         ON CONFLICT (event_id, template_id, openid) DO NOTHING
         RETURNING d.event_id, d.template_id, d.openid, d.status,
                   d.due_at <= now() + make_interval(secs => $12) AS soon",
    )
    .bind(ws.iter().map(|w| w.key.event_id.clone()).collect::<Vec<_>>())
    .bind(col(|w| &w.event_type))
    .bind(ws.iter().map(|w| w.app_id.clone()).collect::<Vec<_>>())
    .bind(ws.iter().map(|w| w.key.openid.clone()).collect::<Vec<_>>())
    .bind(ws.iter().map(|w| w.key.template_id.clone()).collect::<Vec<_>>())
    .bind(ws.iter().map(|w| w.occurred_at).collect::<Vec<_>>())
    .bind(col(|w| &w.client_msg_id))
    .bind(ws.iter().map(|w| w.due_at).collect::<Vec<_>>())
    .bind(ws.iter().map(|w| w.not_after).collect::<Vec<_>>())
    .bind(ws.iter().map(|w| w.cancel_key.clone()).collect::<Vec<_>>())
    .bind(col(|w| &w.payload))
    .bind(super::release::IDLE.as_secs_f64())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(event_id, template_id, openid, status, soon)| {
            let key = DeliveryKey {
                event_id,
                template_id,
                openid: openid.into(),
            };
            (key, (status, soon))
        })
        .collect())
}
