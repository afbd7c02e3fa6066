//! Claiming a delivery key: one atomic statement, never select-then-insert.
//!
//! The claim succeeds when the key is new, or `pending`/`retrying` and nobody live holds it (no
//! owner, an expired lease, or an owner that stopped beating). Taking over from an owner that did
//! not record an outcome marks the delivery *in doubt* since that owner's claim: it may have sent.
//! A replayed copy (`dlq replay`) reopens a `dead` delivery and clears its doubt: replaying an
//! `ambiguous` dead letter is a person deciding to send it again.
//!
//! A copy of a key another live worker holds is **not** acked: it goes back through a short retry
//! queue and looks again. Acking it would be wrong when it is the holder's own message redelivered
//! after the holder was killed (its heartbeat still looks fresh for a few seconds): the only copy
//! would be gone. When the holder finishes, the copy finds the key final and is acked then.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Ledger, Status};
use crate::event::BookingEvent;

/// What to claim.
pub struct ClaimRequest<'a> {
    pub event: &'a BookingEvent,
    pub app_id: &'a str,
    pub template_id: &'a str,
    pub client_msg_id: &'a str,
    /// A `dlq replay` copy: it may reopen a `dead` delivery.
    pub reopen_dead: bool,
}

/// A delivery this worker now holds and must record an outcome for.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    /// HTTP attempts so far (all of them, across replays).
    pub attempts: i32,
    /// The first claim of this key (no earlier copy was ever seen).
    pub fresh: bool,
    /// Set when an earlier send may have reached WeChat.
    pub in_doubt_since: Option<DateTime<Utc>>,
    /// The database's clock when claimed, for the in-doubt window.
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum Claim {
    Owned(Claimed),
    /// `sent` or `dead` already: this copy is a duplicate.
    AlreadyFinal {
        id: i64,
        status: Status,
    },
    /// Another live worker is on it right now.
    HeldElsewhere,
}

impl Ledger {
    pub async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, sqlx::Error> {
        let row = sqlx::query(
            "INSERT INTO deliveries AS d
                 (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
                  owner, lease_until, claimed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9), now())
             ON CONFLICT (event_id, template_id, openid) DO UPDATE
                SET owner = EXCLUDED.owner,
                    lease_until = EXCLUDED.lease_until,
                    claimed_at = now(),
                    updated_at = now(),
                    status = CASE WHEN d.status = 'dead' THEN 'retrying' ELSE d.status END,
                    in_doubt_since = CASE WHEN d.status = 'dead' THEN NULL
                                          WHEN d.owner IS NOT NULL
                                          THEN COALESCE(d.in_doubt_since, d.claimed_at)
                                          ELSE d.in_doubt_since END
              WHERE (d.status IN ('pending', 'retrying') OR ($11 AND d.status = 'dead'))
                AND (d.owner IS NULL
                     OR d.lease_until < now()
                     OR NOT EXISTS (SELECT 1 FROM workers w
                                     WHERE w.id = d.owner
                                       AND w.heartbeat_at > now() - make_interval(secs => $10)))
             RETURNING id, attempts, in_doubt_since, (xmax = 0) AS fresh, now() AS now",
        )
        .bind(&req.event.event_id)
        .bind(&req.event.event_type)
        .bind(req.app_id)
        .bind(&req.event.openid)
        .bind(req.template_id)
        .bind(req.event.occurred)
        .bind(req.client_msg_id)
        .bind(&self.worker_id)
        .bind(self.lease.as_secs_f64())
        .bind(self.liveness.as_secs_f64())
        .bind(req.reopen_dead)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(Claim::Owned(Claimed {
                id: row.try_get("id")?,
                attempts: row.try_get("attempts")?,
                fresh: row.try_get("fresh")?,
                in_doubt_since: row.try_get("in_doubt_since")?,
                now: row.try_get("now")?,
            }));
        }
        // Not claimed: final, or held. (Rare path: only duplicates get here.)
        let row =
            sqlx::query("SELECT id, status FROM deliveries WHERE event_id = $1 AND template_id = $2 AND openid = $3")
                .bind(&req.event.event_id)
                .bind(req.template_id)
                .bind(&req.event.openid)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(row) => {
                let status: String = row.try_get("status")?;
                match Status::parse(&status) {
                    Some(s @ (Status::Sent | Status::Dead)) => Claim::AlreadyFinal {
                        id: row.try_get("id")?,
                        status: s,
                    },
                    _ => Claim::HeldElsewhere,
                }
            }
            // Inserted by a transaction our statement could not see yet: someone else holds it.
            None => Claim::HeldElsewhere,
        })
    }

    /// Records a delivery that failed before any send (its template did not render): `dead` from
    /// the start, unless the key already exists.
    pub async fn record_unsendable(
        &self,
        event: &BookingEvent,
        app_id: &str,
        template_id: &str,
        client_msg_id: &str,
        reason: &str,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at,
                                     client_msg_id, status, dead_reason, last_error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'dead', $8, $9)
             ON CONFLICT (event_id, template_id, openid) DO NOTHING",
        )
        .bind(&event.event_id)
        .bind(&event.event_type)
        .bind(app_id)
        .bind(&event.openid)
        .bind(template_id)
        .bind(event.occurred)
        .bind(client_msg_id)
        .bind(reason)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
