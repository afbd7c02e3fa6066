//! Recording an attempt and the delivery's new state: one statement, one round trip.
//! The first final outcome wins: a late writer (whose claim was taken over) cannot undo `sent`.

use chrono::{DateTime, Utc};

use super::{Ledger, Status};

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

impl Ledger {
    /// Writes the attempt (if any) and the outcome, and releases the claim. Returns whether the
    /// delivery row changed (false: another worker had already made it final).
    pub async fn record(
        &self,
        delivery_id: i64,
        attempt: Option<&AttemptRecord>,
        finish: &Finish,
    ) -> Result<bool, sqlx::Error> {
        let changed = sqlx::query(
            "WITH attempt AS (
                 INSERT INTO delivery_attempts
                     (delivery_id, attempt, started_at, duration_ms, http_status, errcode, errmsg, worker)
                 SELECT d.id, d.attempts + 1, $2, $3, $4, $5, $6, $7
                   FROM deliveries d WHERE d.id = $1 AND $8
             )
             UPDATE deliveries SET
                 status = $9,
                 attempts = attempts + CASE WHEN $8 THEN 1 ELSE 0 END,
                 last_errcode = CASE WHEN $9 = 'sent' THEN last_errcode ELSE $10 END,
                 last_error = CASE WHEN $9 = 'sent' THEN last_error ELSE $11 END,
                 wechat_msgid = COALESCE($12, wechat_msgid),
                 sent_at = CASE WHEN $9 = 'sent' THEN now() ELSE sent_at END,
                 dead_reason = $13,
                 in_doubt_since = CASE WHEN $14 THEN COALESCE(in_doubt_since, $2) ELSE in_doubt_since END,
                 owner = NULL,
                 lease_until = NULL,
                 updated_at = now()
             WHERE id = $1 AND status IN ('pending', 'retrying')",
        )
        .bind(delivery_id)
        .bind(attempt.map(|a| a.started_at))
        .bind(attempt.map(|a| a.duration_ms))
        .bind(attempt.and_then(|a| a.http_status))
        .bind(attempt.and_then(|a| a.errcode))
        .bind(attempt.and_then(|a| a.errmsg.as_deref()))
        .bind(&self.worker_id)
        .bind(attempt.is_some())
        .bind(finish.status.as_str())
        .bind(finish.errcode)
        .bind(finish.error.as_deref())
        .bind(finish.msgid)
        .bind(finish.dead_reason)
        .bind(finish.in_doubt && attempt.is_some())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }
}
