//! One access token per app, shared by every task of every worker process.
//!
//! ```text
//!  task ─┐                          ┌─ cached & fresh? ── yes → use it (no I/O)
//!  task ─┼─ TokenProvider::get ─────┤
//!  task ─┘   (per-app mutex:        └─ no → one task per process → Postgres row lock
//!             one task asks)                (one process per app) → double check:
//!                                            a newer generation there? adopt it
//!                                            : ask WeChat, store generation + 1
//! ```
//!
//! Rejections (40001/40014/42001) call [`TokenProvider::invalidate`] with the token that failed;
//! it refreshes only if that token's *generation* is still the current one, in this process and
//! then in Postgres. A thousand sends failing on one rotation cause one refresh.
//!
//! Tokens are replaced `margin` before they expire (default 180 s: longer than a slow send plus
//! clock skew, and inside the stable API's last five minutes, when a non-forced call already
//! returns the next token; the old one keeps working meanwhile).

mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, FixedOffset, NaiveTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;

pub use store::{TokenRow, TokenStore};

use crate::config::AppCredentials;
use crate::wechat::errcode::{TokenFetchClass, classify_token_fetch};
use crate::wechat::{TokenApi, TokenFetchError, WechatClient};

/// A token and the generation it was stored as. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<SecretString>,
    pub app_id: Arc<str>,
    pub generation: i64,
    /// Local deadline after which this process asks for the current token again.
    refresh_at: Instant,
}

impl AccessToken {
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("app_id", &self.app_id)
            .field("generation", &self.generation)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("app {app_id} is not configured (neither WECHAT_APP_ID nor in [[apps]])")]
    UnknownApp { app_id: String },
    /// The credentials are wrong; a person must fix them. Nobody asks again before `until`.
    #[error(
        "WeChat rejected the credentials of app {app_id}: errcode {errcode} ({errmsg}); check its app id and secret"
    )]
    Credentials {
        app_id: String,
        errcode: i64,
        errmsg: String,
        until: DateTime<Utc>,
    },
    /// Another process found the app unusable; we wait as it decided. `credentials`: because
    /// WeChat rejected its credentials (a configuration error, like [`TokenError::Credentials`]).
    #[error("token fetching for app {app_id} is paused until {until}: {reason}")]
    Blocked {
        app_id: String,
        reason: String,
        until: DateTime<Utc>,
        credentials: bool,
    },
    #[error("the daily token quota of app {app_id} is used up (45009) until {until}")]
    DailyQuota { app_id: String, until: DateTime<Utc> },
    #[error("cannot get a token for app {app_id} now: {message}")]
    Transient { app_id: String, message: String },
    #[error("token store: {0}")]
    Db(String),
}

impl TokenError {
    /// When asking again makes sense, if the error says.
    /// The app's credentials are wrong: a person must fix the configuration.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            TokenError::Credentials { .. } | TokenError::Blocked { credentials: true, .. }
        )
    }

    pub fn retry_at(&self) -> Option<DateTime<Utc>> {
        match self {
            TokenError::Credentials { until, .. }
            | TokenError::Blocked { until, .. }
            | TokenError::DailyQuota { until, .. } => Some(*until),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for TokenError {
    fn from(e: sqlx::Error) -> Self {
        TokenError::Db(e.to_string())
    }
}

struct AppSlot {
    creds: AppCredentials,
    cached: RwLock<Option<AccessToken>>,
    /// In-process single flight: one task talks to Postgres/WeChat for this app at a time.
    flight: tokio::sync::Mutex<()>,
    /// A local copy of a block, so blocked apps cost no database round trip per message.
    blocked: Mutex<Option<(Instant, TokenError)>>,
}

impl AppSlot {
    fn fresh(&self) -> Option<AccessToken> {
        self.cached
            .read()
            .expect("token cache lock")
            .as_ref()
            .filter(|t| t.is_fresh())
            .cloned()
    }

    fn blocked(&self) -> Option<TokenError> {
        let guard = self.blocked.lock().expect("block lock");
        guard
            .as_ref()
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, e)| e.clone())
    }
}

/// Tunables of the token design.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub api: TokenApi,
    pub margin: Duration,
    /// After a credentials error, how long nobody asks WeChat again.
    pub credentials_pause: Duration,
}

#[derive(Clone)]
pub struct TokenProvider {
    inner: Arc<Inner>,
}

struct Inner {
    store: TokenStore,
    client: WechatClient,
    settings: TokenSettings,
    apps: HashMap<String, Arc<AppSlot>>,
}

/// How a credentials block starts in `wechat_tokens.blocked_reason`.
const CREDENTIALS_BLOCK: &str = "credentials rejected";

/// Forced stable-token refreshes WeChat allows: 20 a day, 30 s apart.
const STABLE_FORCE_PER_DAY: i32 = 20;
const STABLE_FORCE_SPACING: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// The next midnight in Beijing, when WeChat's daily quotas reset.
pub fn next_quota_reset(now: DateTime<Utc>) -> DateTime<Utc> {
    let beijing = FixedOffset::east_opt(8 * 3600).expect("valid offset");
    let local = now.with_timezone(&beijing).date_naive();
    let next = local
        .checked_add_days(Days::new(1))
        .expect("date in range")
        .and_time(NaiveTime::MIN);
    next.and_local_timezone(beijing)
        .single()
        .expect("fixed offset")
        .with_timezone(&Utc)
}

impl TokenProvider {
    pub fn new(pool: PgPool, client: WechatClient, settings: TokenSettings, apps: &[AppCredentials]) -> Self {
        let apps = apps
            .iter()
            .map(|c| {
                let slot = AppSlot {
                    creds: c.clone(),
                    cached: RwLock::new(None),
                    flight: tokio::sync::Mutex::new(()),
                    blocked: Mutex::new(None),
                };
                (c.app_id.clone(), Arc::new(slot))
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                store: TokenStore::new(pool),
                client,
                settings,
                apps,
            }),
        }
    }

    pub fn knows(&self, app_id: &str) -> bool {
        self.inner.apps.contains_key(app_id)
    }

    fn slot(&self, app_id: &str) -> Result<&Arc<AppSlot>, TokenError> {
        self.inner
            .apps
            .get(app_id)
            .ok_or_else(|| TokenError::UnknownApp { app_id: app_id.into() })
    }

    /// The current token of an app. Costs nothing while the cached one is fresh.
    pub async fn get(&self, app_id: &str) -> Result<AccessToken, TokenError> {
        let slot = self.slot(app_id)?;
        if let Some(t) = slot.fresh() {
            return Ok(t);
        }
        let _flight = slot.flight.lock().await;
        if let Some(t) = slot.fresh() {
            return Ok(t);
        }
        self.obtain(slot, None).await
    }

    /// `failed` was rejected by WeChat. Replaces it if, and only if, it is still the current
    /// generation; otherwise someone already did, and the next `get` returns the newer one.
    pub async fn invalidate(&self, failed: &AccessToken) -> Result<(), TokenError> {
        let slot = self.slot(&failed.app_id)?;
        let _flight = slot.flight.lock().await;
        let cached_generation = slot
            .cached
            .read()
            .expect("token cache lock")
            .as_ref()
            .map(|t| t.generation);
        if cached_generation.is_some_and(|g| g > failed.generation) {
            return Ok(());
        }
        metrics::counter!("wxnotify_token_rejections_total", "app" => failed.app_id.to_string()).increment(1);
        self.obtain(slot, Some(failed.generation)).await.map(|_| ())
    }

    /// Under the process's flight lock: adopt what Postgres has, or refresh under its row lock.
    async fn obtain(&self, slot: &AppSlot, rejected: Option<i64>) -> Result<AccessToken, TokenError> {
        if let Some(err) = slot.blocked() {
            return Err(err);
        }
        let app_id = slot.creds.app_id.as_str();
        let usable = |row: &TokenRow| {
            row.token.is_some()
                && row.refresh_after.is_some_and(|r| r > row.now)
                && rejected.is_none_or(|g| row.generation > g)
        };
        // Most processes find the token another one stored: no lock needed to adopt it.
        if let Some(row) = self.inner.store.peek(app_id).await?
            && usable(&row)
        {
            return Ok(self.adopt(slot, row));
        }
        let mut locked = self.inner.store.lock(app_id).await?;
        if usable(&locked.row) {
            let row = std::mem::replace(&mut locked.row, empty_row());
            locked.commit().await?;
            return Ok(self.adopt(slot, row));
        }
        let now = locked.row.now;
        if let Some(until) = locked.row.blocked_until.filter(|u| *u > now) {
            let reason = locked.row.blocked_reason.clone().unwrap_or_default();
            let err = TokenError::Blocked {
                app_id: app_id.into(),
                credentials: reason.starts_with(CREDENTIALS_BLOCK),
                reason,
                until,
            };
            locked.commit().await?;
            self.block_locally(slot, &err, now);
            return Err(err);
        }
        let api = self.inner.settings.api;
        let force = rejected.is_some()
            && api == TokenApi::Stable
            && locked.row.forced_today < STABLE_FORCE_PER_DAY
            && locked
                .row
                .last_forced_at
                .is_none_or(|t| now - t >= STABLE_FORCE_SPACING);
        if rejected.is_some() && api == TokenApi::Stable && !force {
            tracing::warn!(
                app = app_id,
                "stable-token forced refresh not allowed now (20 a day, 30 s apart); asking without force"
            );
        }
        let fetched = self
            .inner
            .client
            .fetch_token(api, app_id, &slot.creds.secret, force)
            .await;
        let result = match fetched {
            Ok(f) => {
                locked.count_call(api, force, false).await?;
                let expires = f.expires_in.max(1) as f64;
                let margin = self.inner.settings.margin.as_secs_f64();
                let refresh_in = if expires > 2.0 * margin {
                    expires - margin
                } else {
                    expires / 2.0
                };
                let generation = locked.save(api, &f.token, expires, refresh_in, force).await?;
                locked.commit().await?;
                metrics::counter!("wxnotify_token_fetches_total", "app" => app_id.to_string(), "result" => "ok")
                    .increment(1);
                tracing::info!(
                    app = app_id,
                    generation,
                    expires_in = f.expires_in,
                    forced = force,
                    api = api.as_str(),
                    "fetched a new access token"
                );
                let token = AccessToken {
                    secret: Arc::new(f.token),
                    app_id: app_id.into(),
                    generation,
                    refresh_at: Instant::now() + Duration::from_secs_f64(refresh_in),
                };
                *slot.cached.write().expect("token cache lock") = Some(token.clone());
                return Ok(token);
            }
            Err(TokenFetchError::WeChat { errcode, errmsg }) => {
                locked.count_call(api, force, true).await?;
                match classify_token_fetch(errcode) {
                    TokenFetchClass::Credentials => {
                        let until = now
                            + chrono::TimeDelta::from_std(self.inner.settings.credentials_pause).unwrap_or_default();
                        locked
                            .block(until, &format!("{CREDENTIALS_BLOCK}: errcode {errcode} ({errmsg})"))
                            .await?;
                        TokenError::Credentials {
                            app_id: app_id.into(),
                            errcode,
                            errmsg,
                            until,
                        }
                    }
                    TokenFetchClass::DailyQuota => {
                        let until = next_quota_reset(now);
                        locked.block(until, "daily token quota used up (45009)").await?;
                        TokenError::DailyQuota {
                            app_id: app_id.into(),
                            until,
                        }
                    }
                    TokenFetchClass::Transient => TokenError::Transient {
                        app_id: app_id.into(),
                        message: format!("errcode {errcode} ({errmsg})"),
                    },
                }
            }
            Err(TokenFetchError::Transport(message)) => {
                locked.count_call(api, force, true).await?;
                TokenError::Transient {
                    app_id: app_id.into(),
                    message,
                }
            }
        };
        locked.commit().await?;
        metrics::counter!("wxnotify_token_fetches_total", "app" => app_id.to_string(), "result" => "error")
            .increment(1);
        tracing::error!(app = app_id, error = %result, "token fetch failed");
        self.block_locally(slot, &result, now);
        Err(result)
    }

    fn block_locally(&self, slot: &AppSlot, err: &TokenError, now: DateTime<Utc>) {
        if let Some(until) = err.retry_at() {
            let wait = (until - now).to_std().unwrap_or_default();
            *slot.blocked.lock().expect("block lock") = Some((Instant::now() + wait, err.clone()));
        }
    }

    fn adopt(&self, slot: &AppSlot, row: TokenRow) -> AccessToken {
        let refresh_in = row
            .refresh_after
            .map(|r| (r - row.now).to_std().unwrap_or_default())
            .unwrap_or_default();
        let token = AccessToken {
            secret: Arc::new(row.token.expect("usable row has a token")),
            app_id: slot.creds.app_id.as_str().into(),
            generation: row.generation,
            refresh_at: Instant::now() + refresh_in,
        };
        *slot.cached.write().expect("token cache lock") = Some(token.clone());
        token
    }
}

fn empty_row() -> TokenRow {
    TokenRow {
        token: None,
        token_api: None,
        generation: 0,
        expires_at: None,
        refresh_after: None,
        blocked_until: None,
        blocked_reason: None,
        last_forced_at: None,
        forced_today: 0,
        now: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_resets_at_beijing_midnight() {
        let now: DateTime<Utc> = "2026-11-21T15:59:00Z".parse().unwrap();
        assert_eq!(
            next_quota_reset(now),
            "2026-11-21T16:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let now: DateTime<Utc> = "2026-11-21T16:00:00Z".parse().unwrap();
        assert_eq!(
            next_quota_reset(now),
            "2026-11-22T16:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }
}
