//! Claiming a delivery key: one atomic statement, never select-then-insert.
//!
//! The claim succeeds when the key is new, or `pending`/`retrying` and nobody live holds it (no
//! owner, an expired lease, or an owner that stopped beating). Taking over from an owner that did
//! not record an outcome marks the delivery *in doubt* since that owner's claim: it may have sent.
//! A replayed copy (`dlq replay`, recorded in `dlq_replays`) reopens a `dead` delivery; it clears
//! a doubt older than the replay only when the operator replayed reason `ambiguous` by name (see
//! `judge::reopen`): replaying an `ambiguous` dead letter is a person deciding to send it again.
//!
//! A copy of a key another live worker holds is **not** acked: it goes back through a short retry
//! queue and looks again. Acking it would be wrong when it is the holder's own message redelivered
//! after the holder was killed (its heartbeat still looks fresh for a few seconds): the only copy
//! would be gone. When the holder finishes, the copy finds the key final and is acked then.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::Ledger;
use super::batch::LedgerError;
use crate::event::DeliveryKey;
use crate::fate::{CancelledBy, Reopen, ReplayRow, Status};
use crate::ids::{AppId, OpenId};

/// What to claim.
pub(crate) struct ClaimRequest<'a> {
    pub key: &'a DeliveryKey,
    pub event_type: &'a str,
    pub app_id: &'a AppId,
    pub occurred_at: DateTime<Utc>,
    pub client_msg_id: &'a str,
    /// Whether this copy may reopen a `dead` delivery (a recorded `dlq replay`), and its doubt.
    pub reopen: Reopen,
}

/// A delivery this worker now holds and must record an outcome for.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub id: i64,
    /// Set when an earlier send may have reached WeChat.
    pub in_doubt_since: Option<DateTime<Utc>>,
    /// The database's clock when claimed, for the in-doubt window.
    pub now: DateTime<Utc>,
    /// The recipient does not follow the app (an `unsubscribe` push or a 43004, docs/interface.md §9).
    pub unfollowed: bool,
    /// A cancellation that applies to this delivery (its template's `cancelled_by`), stored
    /// while the delivery was held by a worker or dead: its next copy is not sent.
    pub cancelled_by: Option<CancelledBy>,
}

#[derive(Debug, Clone)]
pub(crate) enum Claim {
    Owned(Claimed),
    /// Final already (`sent`, `dead`, ...): this copy is a duplicate.
    AlreadyFinal {
        status: Status,
    },
    /// Another live worker is on it right now.
    HeldElsewhere,
}

/// An owned claim request, for the batcher.
pub(super) struct ClaimJob {
    event_id: String,
    event_type: String,
    app_id: AppId,
    openid: OpenId,
    template_id: String,
    occurred_at: DateTime<Utc>,
    client_msg_id: String,
}

/// The columns the batched statement needs besides the requests.
#[derive(Clone)]
pub(super) struct ClaimSettings {
    pub worker_id: String,
    pub lease_secs: f64,
    pub liveness_secs: f64,
}

impl Ledger {
    /// Claims a delivery key. Claims of many deliveries in flight share one statement (see
    /// [`super::batch`]); a replay copy, which may reopen a `dead` delivery, runs alone.
    pub(crate) async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, LedgerError> {
        let job = ClaimJob {
            event_id: req.key.event_id.clone(),
            event_type: req.event_type.to_string(),
            app_id: req.app_id.clone(),
            openid: req.key.openid.clone(),
            template_id: req.key.template_id.clone(),
            occurred_at: req.occurred_at,
            client_msg_id: req.client_msg_id.to_string(),
        };
        if req.reopen != Reopen::No {
            let mut one = claim_batch(&self.pool, &self.claim_settings, &[job], req.reopen).await?;
            return one.pop().unwrap_or(Ok(Claim::HeldElsewhere));
        }
        self.claims.call(job).await
    }

    /// The `dlq_replays` row that vouches for a replay copy: (the dead letter's reason, the
    /// reason the operator filtered by, if any). `None`: no such replay of this event.
    pub(crate) async fn replay_row(&self, replay_id: &str, event_id: &str) -> Result<Option<ReplayRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT reason, CASE WHEN filter LIKE '--reason %' THEN substr(filter, 10) END AS by_reason,
                    replayed_at
               FROM dlq_replays WHERE replay_id = $1 AND event_id = $2
              ORDER BY id DESC LIMIT 1",
        )
        .bind(replay_id)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ReplayRow {
                dead_reason: r.try_get("reason")?,
                by_reason: r.try_get("by_reason")?,
                replayed_at: r.try_get("replayed_at")?,
            })
        })
        .transpose()
    }
}

/// The claim statement, over many keys at once: `unnest` arrays in, one row out per key claimed.
/// With `reopen` (a recorded replay copy) a `dead` delivery is claimable too (its doubt cleared
/// only as [`Reopen::ClearDoubtBefore`] says). Keys go in sorted (a consistent lock order between
/// workers) and distinct (a key twice in one `ON CONFLICT DO UPDATE` is an error): a second copy
/// of a key in the same batch is held, like any copy of a key someone holds.
pub(super) async fn claim_batch(
    pool: &PgPool,
    settings: &ClaimSettings,
    jobs: &[ClaimJob],
    reopen: Reopen,
) -> Result<Vec<Result<Claim, LedgerError>>, LedgerError> {
    let unique = distinct_in_key_order(jobs);
    let owned = insert_claims(pool, settings, jobs, &unique, reopen).await?;
    // Keys not claimed: final already, or held (the rare path: duplicates).
    let missed: Vec<&ClaimJob> = unique
        .iter()
        .map(|i| &jobs[*i])
        .filter(|j| !owned.contains_key(&j.key()))
        .collect();
    let states = if missed.is_empty() {
        HashMap::new()
    } else {
        statuses(pool, &missed).await?
    };
    Ok(answers(jobs, &unique, &owned, &states))
}

impl ClaimJob {
    fn key(&self) -> DeliveryKey {
        DeliveryKey {
            event_id: self.event_id.clone(),
            template_id: self.template_id.clone(),
            openid: self.openid.clone(),
        }
    }
}

/// The key a returned row names.
fn key_of(row: &sqlx::postgres::PgRow) -> Result<DeliveryKey, sqlx::Error> {
    Ok(DeliveryKey {
        event_id: row.try_get("event_id")?,
        template_id: row.try_get("template_id")?,
        openid: row.try_get("openid")?,
    })
}

/// Indexes of the jobs to claim: sorted by key, the first of each key only.
fn distinct_in_key_order(jobs: &[ClaimJob]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by(|a, b| {
        let (ja, jb) = (&jobs[*a], &jobs[*b]);
        (&ja.event_id, &ja.template_id, &ja.openid).cmp(&(&jb.event_id, &jb.template_id, &jb.openid))
    });
    order.dedup_by(|i, last| jobs[*i].key() == jobs[*last].key());
    order
}

/// The one atomic `INSERT … ON CONFLICT DO UPDATE … WHERE claimable`: the keys it claimed.
async fn insert_claims(
    pool: &PgPool,
    settings: &ClaimSettings,
    jobs: &[ClaimJob],
    unique: &[usize],
    reopen: Reopen,
) -> Result<HashMap<DeliveryKey, Claimed>, LedgerError> {
    let col = |f: fn(&ClaimJob) -> &str| unique.iter().map(|i| f(&jobs[*i]).to_string()).collect::<Vec<String>>();
    let rows = sqlx::query(CLAIM_SQL)
        .bind(col(|j| &j.event_id))
        .bind(col(|j| &j.event_type))
        .bind(col(|j| &j.app_id))
        .bind(col(|j| &j.openid))
        .bind(col(|j| &j.template_id))
        .bind(unique.iter().map(|i| jobs[*i].occurred_at).collect::<Vec<_>>())
        .bind(col(|j| &j.client_msg_id))
        .bind(&settings.worker_id)
        .bind(settings.lease_secs)
        .bind(settings.liveness_secs)
        .bind(reopen != Reopen::No)
        .bind(match reopen {
            Reopen::ClearDoubtBefore(at) => Some(at),
            Reopen::No | Reopen::KeepDoubt => None,
        })
        .fetch_all(pool)
        .await?;
    let mut owned = HashMap::with_capacity(rows.len());
    for row in rows {
        let claimed = Claimed {
            id: row.try_get("id")?,
            in_doubt_since: row.try_get("in_doubt_since")?,
            now: row.try_get("now")?,
            unfollowed: row.try_get("unfollowed")?,
            cancelled_by: match (row.try_get("cancel_event_id")?, row.try_get("cancel_event_type")?) {
                (Some(event_id), Some(event_type)) => Some(CancelledBy { event_id, event_type }),
                _ => None,
            },
        };
        owned.insert(key_of(&row)?, claimed);
    }
    Ok(owned)
}

const CLAIM_SQL: &str = "INSERT INTO deliveries AS d
         (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
          owner, lease_until, claimed_at)
     SELECT t.event_id, t.event_type, t.app_id, t.openid, t.template_id, t.occurred_at, t.client_msg_id,
            $8, now() + make_interval(secs => $9), now()
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
            AS t(event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id)
     ON CONFLICT (event_id, template_id, openid) DO UPDATE
        SET owner = EXCLUDED.owner,
            lease_until = EXCLUDED.lease_until,
            claimed_at = now(),
            updated_at = now(),
            status = CASE WHEN d.status = 'dead' THEN 'retrying' ELSE d.status END,
            dead_reason = CASE WHEN d.status = 'dead' THEN NULL ELSE d.dead_reason END,
            in_doubt_since = CASE WHEN d.status = 'dead' AND d.in_doubt_since < $12 THEN NULL
                                  WHEN d.owner IS NOT NULL
                                  THEN COALESCE(d.in_doubt_since, d.claimed_at)
                                  ELSE d.in_doubt_since END
      WHERE (d.status IN ('pending', 'retrying') OR ($11 AND d.status = 'dead'))
        AND (d.owner IS NULL
             OR d.lease_until < now()
             OR NOT EXISTS (SELECT 1 FROM workers w
                             WHERE w.id = d.owner
                               AND w.heartbeat_at > now() - make_interval(secs => $10)))
     RETURNING id, event_id, template_id, openid, in_doubt_since, now() AS now,
               EXISTS (SELECT 1 FROM followers f
                        WHERE f.app_id = d.app_id AND f.openid = d.openid AND NOT f.followed) AS unfollowed,
               (SELECT c.event_id FROM delivery_cancellations c
                 WHERE d.cancel_key IS NOT NULL AND (c.app_id, c.template_id, c.cancel_key) = (d.app_id, d.template_id, d.cancel_key)
                   AND c.event_id <> d.event_id AND c.occurred_at >= d.occurred_at
                 ORDER BY c.occurred_at, c.event_id LIMIT 1) AS cancel_event_id,
               (SELECT c.event_type FROM delivery_cancellations c
                 WHERE d.cancel_key IS NOT NULL AND (c.app_id, c.template_id, c.cancel_key) = (d.app_id, d.template_id, d.cancel_key)
                   AND c.event_id <> d.event_id AND c.occurred_at >= d.occurred_at
                 ORDER BY c.occurred_at, c.event_id LIMIT 1) AS cancel_event_type";

/// The status of each key the claim did not take.
async fn statuses(pool: &PgPool, missed: &[&ClaimJob]) -> Result<HashMap<DeliveryKey, String>, LedgerError> {
    let rows = sqlx::query(
        "SELECT d.status, d.event_id, d.template_id, d.openid
           FROM deliveries d
           JOIN unnest($1::text[], $2::text[], $3::text[]) AS t(event_id, template_id, openid)
             ON (d.event_id, d.template_id, d.openid) = (t.event_id, t.template_id, t.openid)",
    )
    .bind(missed.iter().map(|j| j.event_id.clone()).collect::<Vec<_>>())
    .bind(missed.iter().map(|j| j.template_id.clone()).collect::<Vec<_>>())
    .bind(missed.iter().map(|j| j.openid.clone()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    let mut states = HashMap::with_capacity(rows.len());
    for row in rows {
        states.insert(key_of(&row)?, row.try_get("status")?);
    }
    Ok(states)
}

/// Each job's answer, in the jobs' order: owned, final already, or held (by another worker, or
/// by the first copy of its key in this batch).
fn answers(
    jobs: &[ClaimJob],
    unique: &[usize],
    owned: &HashMap<DeliveryKey, Claimed>,
    states: &HashMap<DeliveryKey, String>,
) -> Vec<Result<Claim, LedgerError>> {
    let mut first_of_key = vec![false; jobs.len()];
    for i in unique {
        first_of_key[*i] = true;
    }
    jobs.iter()
        .zip(first_of_key)
        .map(|(j, first)| {
            let k = j.key();
            if !first {
                return Ok(Claim::HeldElsewhere);
            }
            if let Some(c) = owned.get(&k) {
                return Ok(Claim::Owned(c.clone()));
            }
            Ok(match states.get(&k).and_then(|s| Status::parse(s)) {
                Some(status) if status.is_final() => Claim::AlreadyFinal { status },
                // Being sent, or inserted by a transaction our statement could not see yet:
                // someone holds it.
                _ => Claim::HeldElsewhere,
            })
        })
        .collect()
}
