//! Recording an attempt and the delivery's new state: one statement, one round trip.
//! The first final outcome wins: a late writer (whose claim was taken over) cannot undo `sent`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::batch::LedgerError;
use super::{Ledger, Status, storable_error};

/// One HTTP attempt, as it happened.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
}

/// The delivery's state after this step.
#[derive(Debug, Clone)]
pub struct Finish {
    pub status: Status,
    pub errcode: Option<i64>,
    pub error: Option<String>,
    pub msgid: Option<i64>,
    pub dead_reason: Option<&'static str>,
    /// This step's send may have reached WeChat without us knowing (timeout, reset).
    pub in_doubt: bool,
}

impl Finish {
    pub fn sent(msgid: Option<i64>) -> Self {
        Self {
            status: Status::Sent,
            errcode: None,
            error: None,
            msgid,
            dead_reason: None,
            in_doubt: false,
        }
    }

    pub fn retrying(errcode: Option<i64>, error: impl Into<String>) -> Self {
        Self {
            status: Status::Retrying,
            errcode,
            error: Some(error.into()),
            msgid: None,
            dead_reason: None,
            in_doubt: false,
        }
    }

    pub fn dead(reason: &'static str, errcode: Option<i64>, error: impl Into<String>) -> Self {
        Self {
            status: Status::Dead,
            errcode,
            error: Some(error.into()),
            msgid: None,
            dead_reason: Some(reason),
            in_doubt: false,
        }
    }
}

/// One `record` request, owned, for the batcher.
pub(super) struct RecordJob {
    delivery_id: i64,
    attempt: Option<AttemptRecord>,
    finish: Finish,
}

impl Ledger {
    /// Writes the attempt (if any) and the outcome, and releases the claim; error texts are stored
    /// bounded (see `storable_error`). Returns whether the
    /// delivery row changed (false: another worker had already made it final). Outcomes of many
    /// deliveries share one statement (see [`super::batch`]).
    pub async fn record(
        &self,
        delivery_id: i64,
        attempt: Option<&AttemptRecord>,
        finish: &Finish,
    ) -> Result<bool, LedgerError> {
        let attempt = attempt.map(|a| AttemptRecord {
            errmsg: a.errmsg.as_deref().map(storable_error),
            ..a.clone()
        });
        let finish = Finish {
            error: finish.error.as_deref().map(storable_error),
            ..finish.clone()
        };
        self.records
            .call(RecordJob {
                delivery_id,
                attempt,
                finish,
            })
            .await
    }
}

/// Attempts and outcomes of many deliveries in one statement: `unnest` arrays in, the ids whose
/// row changed out. Only the claim's holder records a delivery, so ids are distinct.
pub(super) async fn record_batch(
    pool: &PgPool,
    worker_id: &str,
    jobs: &[RecordJob],
) -> Result<Vec<Result<bool, LedgerError>>, LedgerError> {
    let changed: Vec<i64> = sqlx::query_scalar(
        "WITH v AS (
             SELECT * FROM unnest($1::bigint[], $2::bool[], $3::timestamptz[], $4::int[], $5::int[], $6::bigint[],
                                  $7::text[], $8::text[], $9::bigint[], $10::text[], $11::bigint[], $12::text[],
                                  $13::bool[])
               AS t(id, has_attempt, started_at, duration_ms, http_status, a_errcode, errmsg,
                    status, errcode, error, msgid, dead_reason, in_doubt)
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
             in_doubt_since = CASE WHEN v.in_doubt AND v.has_attempt
                                   THEN COALESCE(d.in_doubt_since, v.started_at) ELSE d.in_doubt_since END,
             owner = NULL,
             lease_until = NULL,
             updated_at = now()
           FROM v
          WHERE d.id = v.id AND d.status IN ('pending', 'retrying')
          RETURNING d.id",
    )
    .bind(jobs.iter().map(|j| j.delivery_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.attempt.is_some()).collect::<Vec<_>>())
    .bind(
        jobs.iter()
            .map(|j| j.attempt.as_ref().map(|a| a.started_at))
            .collect::<Vec<_>>(),
    )
    .bind(
        jobs.iter()
            .map(|j| j.attempt.as_ref().map(|a| a.duration_ms))
            .collect::<Vec<_>>(),
    )
    .bind(
        jobs.iter()
            .map(|j| j.attempt.as_ref().and_then(|a| a.http_status))
            .collect::<Vec<_>>(),
    )
    .bind(
        jobs.iter()
            .map(|j| j.attempt.as_ref().and_then(|a| a.errcode))
            .collect::<Vec<_>>(),
    )
    .bind(
        jobs.iter()
            .map(|j| j.attempt.as_ref().and_then(|a| a.errmsg.clone()))
            .collect::<Vec<_>>(),
    )
    .bind(jobs.iter().map(|j| j.finish.status.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.finish.errcode).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.finish.error.clone()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.finish.msgid).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.finish.dead_reason).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.finish.in_doubt).collect::<Vec<_>>())
    .bind(worker_id)
    .fetch_all(pool)
    .await?;
    let changed: std::collections::HashSet<i64> = changed.into_iter().collect();
    Ok(jobs.iter().map(|j| Ok(changed.contains(&j.delivery_id))).collect())
}
