//! The `wechat_tokens` table. [`TokenStore::lock`] opens a transaction holding the app's row lock
//! (`SELECT … FOR UPDATE`): whoever holds it is the only process that may ask WeChat for a token;
//! the others wait on the lock and then see what it stored.
//!
//! The lock is held across one HTTP call to WeChat, so the transaction holding it is bounded
//! (`SET LOCAL`): a process that hangs or is frozen (SIGSTOP, a stalled VM) loses its transaction,
//! and with it the lock, after [`IDLE_IN_TRANSACTION`]; a waiter gives up after [`LOCK_WAIT`],
//! which is longer, so it outlasts a frozen holder; no statement runs longer than [`STATEMENT`].
//! The HTTP call itself is bounded by `TOKEN_FETCH_TIMEOUT`, shorter than all three.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::wechat::TokenApi;

/// The stored token of one app, as read under its lock.
pub struct TokenRow {
    pub token: Option<SecretString>,
    pub token_api: Option<String>,
    pub generation: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_after: Option<DateTime<Utc>>,
    pub blocked_until: Option<DateTime<Utc>>,
    pub blocked_reason: Option<String>,
    pub last_forced_at: Option<DateTime<Utc>>,
    /// Fingerprint of the secret a credentials block is for (see `secret_fingerprint`).
    pub blocked_secret_fp: Option<String>,
    /// Transient token API failures in a row, and until when nobody asks again.
    pub failures_in_row: i32,
    pub backoff_until: Option<DateTime<Utc>>,
    pub last_failure: Option<String>,
    /// Forced stable-token refreshes today (Beijing day).
    pub forced_today: i32,
    /// The database's clock: every process compares against the same time.
    pub now: DateTime<Utc>,
}

#[derive(Clone)]
pub struct TokenStore {
    pool: PgPool,
}

/// An app's row, locked until [`LockedToken::commit`] (or drop, which rolls back).
pub struct LockedToken {
    tx: Transaction<'static, Postgres>,
    app_id: String,
    pub row: TokenRow,
}

/// WeChat's quotas reset at midnight Beijing time (UTC+8): today's date there.
macro_rules! beijing_day {
    () => {
        "(now() AT TIME ZONE 'Asia/Shanghai')::date"
    };
}

macro_rules! select_token {
    ($lock:literal) => {
        concat!(
            "SELECT t.access_token, t.token_api, t.generation, t.expires_at, t.refresh_after,
                    t.blocked_until, t.blocked_reason, t.last_forced_at, t.blocked_secret_fp,
                    t.failures_in_row, t.backoff_until, t.last_failure, now() AS now,
                    COALESCE((SELECT f.forced FROM wechat_token_fetches f
                               WHERE f.app_id = t.app_id AND f.day = ",
            beijing_day!(),
            " AND f.token_api = 'stable'), 0) AS forced_today
               FROM wechat_tokens t WHERE t.app_id = $1 ",
            $lock
        )
    };
}

pub(crate) use crate::db::{IDLE_IN_TRANSACTION, LOCK_WAIT, STATEMENT};

impl TokenStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Reads the current token without locking: how a process adopts what another one fetched.
    pub async fn peek(&self, app_id: &str) -> Result<Option<TokenRow>, sqlx::Error> {
        let row = sqlx::query(select_token!(""))
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| to_row(&r)).transpose()
    }

    /// Locks the app's row, creating it if needed. Waits at most [`LOCK_WAIT`] for another
    /// process's refresh; the transaction ends by itself after [`IDLE_IN_TRANSACTION`] of silence.
    pub async fn lock(&self, app_id: &str) -> Result<LockedToken, sqlx::Error> {
        let mut tx = crate::db::begin_bounded(&self.pool).await?;
        sqlx::query("INSERT INTO wechat_tokens (app_id) VALUES ($1) ON CONFLICT (app_id) DO NOTHING")
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(select_token!("FOR UPDATE OF t"))
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?;
        Ok(LockedToken {
            row: to_row(&row)?,
            tx,
            app_id: app_id.to_string(),
        })
    }
}

fn to_row(r: &sqlx::postgres::PgRow) -> Result<TokenRow, sqlx::Error> {
    Ok(TokenRow {
        token: r.try_get::<Option<String>, _>("access_token")?.map(SecretString::from),
        token_api: r.try_get("token_api")?,
        generation: r.try_get("generation")?,
        expires_at: r.try_get("expires_at")?,
        refresh_after: r.try_get("refresh_after")?,
        blocked_until: r.try_get("blocked_until")?,
        blocked_reason: r.try_get("blocked_reason")?,
        last_forced_at: r.try_get("last_forced_at")?,
        blocked_secret_fp: r.try_get("blocked_secret_fp")?,
        failures_in_row: r.try_get("failures_in_row")?,
        backoff_until: r.try_get("backoff_until")?,
        last_failure: r.try_get("last_failure")?,
        forced_today: r.try_get("forced_today")?,
        now: r.try_get("now")?,
    })
}

impl LockedToken {
    /// Counts one call to a token API against today's quota. `forced`: a forced refresh WeChat
    /// granted (a failed call does not use up one of the day's 20).
    pub async fn count_call(&mut self, api: TokenApi, forced: bool, failed: bool) -> Result<(), sqlx::Error> {
        sqlx::query(concat!(
            "INSERT INTO wechat_token_fetches (app_id, day, token_api, calls, forced, failures)
             VALUES ($1, ",
            beijing_day!(),
            ", $2, 1, $3, $4)
             ON CONFLICT (app_id, day, token_api) DO UPDATE SET
                 calls = wechat_token_fetches.calls + 1,
                 forced = wechat_token_fetches.forced + EXCLUDED.forced,
                 failures = wechat_token_fetches.failures + EXCLUDED.failures"
        ))
        .bind(&self.app_id)
        .bind(api.as_str())
        .bind(i32::from(forced))
        .bind(i32::from(failed))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Stores a new token as the next generation; returns that generation.
    pub async fn save(
        &mut self,
        api: TokenApi,
        token: &SecretString,
        expires_in_secs: f64,
        refresh_in_secs: f64,
        forced: bool,
    ) -> Result<i64, sqlx::Error> {
        let row = sqlx::query(
            "UPDATE wechat_tokens SET
                 access_token = $2, token_api = $3, generation = generation + 1,
                 expires_at = now() + make_interval(secs => $4),
                 refresh_after = now() + make_interval(secs => $5),
                 fetched_at = now(), blocked_until = NULL, blocked_reason = NULL,
                 blocked_secret_fp = NULL, failures_in_row = 0, backoff_until = NULL,
                 last_failure = NULL,
                 last_forced_at = CASE WHEN $6 THEN now() ELSE last_forced_at END,
                 updated_at = now()
             WHERE app_id = $1
             RETURNING generation",
        )
        .bind(&self.app_id)
        .bind(token.expose_secret())
        .bind(api.as_str())
        .bind(expires_in_secs)
        .bind(refresh_in_secs)
        .bind(forced)
        .fetch_one(&mut *self.tx)
        .await?;
        row.try_get("generation")
    }

    /// Stops every process from asking WeChat for this app's token until `until`; with
    /// `secret_fp`, only the processes whose secret has that fingerprint.
    pub async fn block(
        &mut self,
        until: DateTime<Utc>,
        reason: &str,
        secret_fp: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE wechat_tokens SET blocked_until = $2, blocked_reason = $3, blocked_secret_fp = $4,
                 updated_at = now()
             WHERE app_id = $1",
        )
        .bind(&self.app_id)
        .bind(until)
        .bind(crate::fate::one_line(reason))
        .bind(secret_fp)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Records one more transient failure in a row: nobody asks WeChat again for `backoff`.
    /// Returns until when.
    pub async fn back_off(&mut self, backoff: Duration, failure: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        let row = sqlx::query(
            "UPDATE wechat_tokens SET failures_in_row = failures_in_row + 1,
                 backoff_until = now() + make_interval(secs => $2), last_failure = $3, updated_at = now()
             WHERE app_id = $1
             RETURNING backoff_until",
        )
        .bind(&self.app_id)
        .bind(backoff.as_secs_f64())
        .bind(crate::fate::one_line(failure))
        .fetch_one(&mut *self.tx)
        .await?;
        row.try_get("backoff_until")
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}
