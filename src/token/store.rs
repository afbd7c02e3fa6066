//! The `wechat_tokens` table. [`TokenStore::lock`] opens a transaction holding the app's row lock
//! (`SELECT … FOR UPDATE`): whoever holds it is the only process that may ask WeChat for a token;
//! the others wait on the lock and then see what it stored.

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
                    t.blocked_until, t.blocked_reason, t.last_forced_at, now() AS now,
                    COALESCE((SELECT f.forced FROM wechat_token_fetches f
                               WHERE f.app_id = t.app_id AND f.day = ",
            beijing_day!(),
            " AND f.token_api = 'stable'), 0) AS forced_today
               FROM wechat_tokens t WHERE t.app_id = $1 ",
            $lock
        )
    };
}

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

    /// Locks the app's row, creating it if needed. Waits at most `lock_timeout` for another
    /// process's refresh.
    pub async fn lock(&self, app_id: &str) -> Result<LockedToken, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '30s'").execute(&mut *tx).await?;
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
        forced_today: r.try_get("forced_today")?,
        now: r.try_get("now")?,
    })
}

impl LockedToken {
    /// Counts one call to a token API against today's quota.
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

    /// Stops every process from asking WeChat for this app's token until `until`.
    pub async fn block(&mut self, until: DateTime<Utc>, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE wechat_tokens SET blocked_until = $2, blocked_reason = $3, updated_at = now() WHERE app_id = $1",
        )
        .bind(&self.app_id)
        .bind(until)
        .bind(reason)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}
