//! Recording an attempt and the delivery's new state: one statement, one round trip.
//!
//! Who may write: the claim's holder, while the delivery is open (`pending`/`retrying`); a late
//! writer whose claim was taken over changes nothing (its attempt is still kept). The exception
//! is proof: a `sent` with WeChat's msgid wins over any other state (`retrying`, `dead`
//! `ambiguous` written by whoever took over), because WeChat says the message went out.

use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Ledger;
use super::batch::LedgerError;
use crate::fate::{DeadReason, Doubt, Finish, one_line};

/// One HTTP attempt, as it happened.
#[derive(Debug, Clone)]
pub(crate) struct AttemptRecord {
    /// When the send started, on this process's monotonic clock: a doubt is stamped with the
    /// database's clock minus the time since then.
    pub started: Instant,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
}

/// One `record` request, owned, for the batcher.
pub(super) struct RecordJob {
    delivery_id: i64,
    attempt: Option<AttemptRecord>,
    finish: Finish,
}

impl Ledger {
    /// Writes the attempt (if any) and the outcome, and releases the claim; error texts are stored
    /// bounded and without NUL (see [`one_line`]). Returns whether the delivery row changed
    /// (false: another worker holds or finished it). Outcomes of many deliveries share one
    /// statement (see [`super::batch`]).
    pub(crate) async fn record(
        &self,
        delivery_id: i64,
        attempt: Option<&AttemptRecord>,
        finish: &Finish,
    ) -> Result<bool, LedgerError> {
        let attempt = attempt.map(|a| AttemptRecord {
            errmsg: a.errmsg.as_deref().map(one_line),
            ..a.clone()
        });
        self.records
            .call(RecordJob {
                delivery_id,
                attempt,
                finish: finish.clone(),
            })
            .await
    }
}

/// Attempts and outcomes of many deliveries: `unnest` arrays in, the ids whose row changed out.
/// A statement carries each delivery id once (two outcomes for one row in one statement would
/// race each other); a second record of the same id (a takeover in this very process) runs in the
/// next statement, proofs of `sent` first.
pub(super) async fn record_batch(
    pool: &PgPool,
    worker_id: &str,
    jobs: &[RecordJob],
) -> Result<Vec<Result<bool, LedgerError>>, LedgerError> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|i| !jobs[*i].finish.is_proven_sent());
    let mut changed = HashSet::new();
    let mut rest = order;
    while !rest.is_empty() {
        let mut seen = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) =
            rest.into_iter().partition(|i| seen.insert(jobs[*i].delivery_id));
        let round: Vec<&RecordJob> = round.iter().map(|i| &jobs[*i]).collect();
        changed.extend(record_round(pool, worker_id, &round).await?);
        rest = later;
    }
    Ok(jobs.iter().map(|j| Ok(changed.contains(&j.delivery_id))).collect())
}

async fn record_round(pool: &PgPool, worker_id: &str, jobs: &[&RecordJob]) -> Result<Vec<i64>, LedgerError> {
    let attempts: Vec<Option<&AttemptRecord>> = jobs.iter().map(|j| j.attempt.as_ref()).collect();
    let finish = jobs.iter().map(|j| &j.finish);
    let changed: Vec<i64> = sqlx::query_scalar(RECORD_SQL)
        .bind(jobs.iter().map(|j| j.delivery_id).collect::<Vec<_>>())
        .bind(attempts.iter().map(Option::is_some).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.map(|a| a.started_at)).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.map(|a| a.duration_ms)).collect::<Vec<_>>())
        .bind(
            attempts
                .iter()
                .map(|a| a.and_then(|a| a.http_status))
                .collect::<Vec<_>>(),
        )
        .bind(attempts.iter().map(|a| a.and_then(|a| a.errcode)).collect::<Vec<_>>())
        .bind(
            attempts
                .iter()
                .map(|a| a.and_then(|a| a.errmsg.as_deref()))
                .collect::<Vec<_>>(),
        )
        .bind(finish.clone().map(|f| f.status().as_str()).collect::<Vec<_>>())
        .bind(finish.clone().map(Finish::errcode).collect::<Vec<_>>())
        .bind(finish.clone().map(Finish::error).collect::<Vec<_>>())
        .bind(finish.clone().map(Finish::msgid).collect::<Vec<_>>())
        .bind(
            finish
                .clone()
                .map(|f| f.dead_reason().map(DeadReason::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(
            finish
                .clone()
                .map(|f| f.doubt() == Doubt::MayHaveArrived)
                .collect::<Vec<_>>(),
        )
        .bind(worker_id)
        .bind(
            attempts
                .iter()
                .map(|a| a.map_or(0.0, |a| a.started.elapsed().as_secs_f64()))
                .collect::<Vec<_>>(),
        )
        .bind(finish.map(Finish::cancelled_by).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    Ok(changed)
}

/// Attempts in, outcomes applied by the claim's holder (or by proof of `sent`), changed ids out.
const RECORD_SQL: &str = "WITH v AS (
         SELECT * FROM unnest($1::bigint[], $2::bool[], $3::timestamptz[], $4::int[], $5::int[], $6::bigint[],
                              $7::text[], $8::text[], $9::bigint[], $10::text[], $11::bigint[], $12::text[],
                              $13::bool[], $15::float8[], $16::text[])
           AS t(id, has_attempt, started_at, duration_ms, http_status, a_errcode, errmsg,
                status, errcode, error, msgid, dead_reason, in_doubt, since_send_secs, cancelled_by)
     ),
     attempt AS (
         INSERT INTO delivery_attempts
             (delivery_id, attempt, started_at, duration_ms, http_status, errcode, errmsg, worker)
         SELECT d.id, d.attempts + 1, v.started_at, v.duration_ms, v.http_status, v.a_errcode, v.errmsg, $14
           FROM v JOIN deliveries d ON d.id = v.id
          WHERE v.has_attempt
     )
     UPDATE deliveries d SET
         status = v.status,
         attempts = d.attempts + CASE WHEN v.has_attempt THEN 1 ELSE 0 END,
         last_errcode = CASE WHEN v.status = 'sent' THEN d.last_errcode ELSE v.errcode END,
         last_error = CASE WHEN v.status = 'sent' THEN d.last_error ELSE v.error END,
         wechat_msgid = COALESCE(v.msgid, d.wechat_msgid),
         sent_at = CASE WHEN v.status = 'sent' THEN now() ELSE d.sent_at END,
         dead_reason = v.dead_reason,
         cancelled_by = COALESCE(v.cancelled_by, d.cancelled_by),
         in_doubt_since = CASE WHEN v.in_doubt AND v.has_attempt
                               THEN COALESCE(d.in_doubt_since, now() - make_interval(secs => v.since_send_secs))
                               ELSE d.in_doubt_since END,
         owner = NULL,
         lease_until = NULL,
         updated_at = now()
       FROM v
      WHERE d.id = v.id
        AND ((d.status IN ('pending', 'retrying') AND d.owner = $14)
             OR (v.status = 'sent' AND v.msgid IS NOT NULL
                 AND (d.status <> 'sent' OR d.wechat_msgid IS NULL)))
      RETURNING d.id";
