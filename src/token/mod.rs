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
//!
//! Failures are single-flight too. A transient failure of the token API (-1, HTTP 5xx, timeout)
//! is recorded in the app's row (`failures_in_row`, `backoff_until`: 1 s, doubling up to 30 s,
//! reset by a success) and cached in the process: every task and process waiting for a token
//! shares that failure until the backoff ends, so an outage costs one call per backoff period,
//! not one per waiting task. Meanwhile a token past its refresh time but not yet expired is
//! still used. A credentials block holds only for workers with the secret WeChat rejected (its
//! fingerprint is stored, never the secret): one worker with a wrong secret does not stop the rest.

mod merchants;
mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, FixedOffset, NaiveTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use store::LockedToken;
pub use store::{TokenRow, TokenStore};

use crate::config::AppCredentials;
use crate::wechat::errcode::{TokenFetchClass, classify_token_fetch};
use crate::wechat::{FetchedToken, TokenApi, TokenFetchError, WechatClient};

/// A token and the generation it was stored as. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<SecretString>,
    pub app_id: Arc<str>,
    pub generation: i64,
    /// Local deadline after which this process asks for the current token again.
    refresh_at: Instant,
    /// When WeChat stops accepting it: never handed out after this, even when no newer one can be had.
    expires_at: Instant,
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
    #[error("app {app_id} is not configured (neither WECHAT_APP_ID nor in [[apps]], nor a platform's merchant)")]
    UnknownApp { app_id: String },
    /// A third-party platform's merchant that is not `active` (revoked, or to authorize again).
    #[error("merchant {app_id} is {state}: it must authorize the platform again")]
    Unauthorized { app_id: String, state: String },
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
    /// The app's credentials are wrong: a person must fix the configuration.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            TokenError::Credentials { .. } | TokenError::Blocked { credentials: true, .. }
        )
    }
}

impl From<sqlx::Error> for TokenError {
    fn from(e: sqlx::Error) -> Self {
        TokenError::Db(e.to_string())
    }
}

struct AppSlot {
    creds: AppCredentials,
    /// [`secret_fingerprint`] of `creds.secret`: which credentials blocks concern this process.
    secret_fp: String,
    cached: RwLock<Option<AccessToken>>,
    /// In-process single flight: one task talks to Postgres/WeChat for this app at a time.
    flight: tokio::sync::Mutex<()>,
    /// A local copy of a block or of a transient failure's backoff: the tasks waiting for a token
    /// share that one failure, and a blocked app costs no database round trip per message.
    blocked: Mutex<Option<(Instant, TokenError)>>,
    /// The newest generation WeChat rejected here (0: none). Never handed out again, even while
    /// no newer one can be had.
    rejected: AtomicI64,
}

impl AppSlot {
    fn fresh(&self) -> Option<AccessToken> {
        let rejected = self.rejected.load(Ordering::Relaxed);
        self.cached
            .read()
            .expect("token cache lock")
            .as_ref()
            .filter(|t| t.is_fresh() && t.generation > rejected)
            .cloned()
    }

    /// The cached token, due for refresh but not expired (nor rejected): what is used while no
    /// newer one can be had. The next task asks again after at most [`STALE_RECHECK`].
    fn unexpired(&self) -> Option<AccessToken> {
        let rejected = self.rejected.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut cached = self.cached.write().expect("token cache lock");
        let token = cached
            .as_mut()
            .filter(|t| now < t.expires_at && t.generation > rejected)?;
        token.refresh_at = token.expires_at.min(now + STALE_RECHECK);
        Some(token.clone())
    }

    /// Caches `token`; a fresh one ends any local block (the app works again).
    fn cache(&self, token: AccessToken) -> AccessToken {
        if token.is_fresh() {
            *self.blocked.lock().expect("block lock") = None;
        }
        *self.cached.write().expect("token cache lock") = Some(token.clone());
        token
    }

    /// Nobody in this process asks again for `wait`; they get `err` instead.
    fn block(&self, err: &TokenError, wait: Duration) {
        *self.blocked.lock().expect("block lock") = Some((Instant::now() + wait, err.clone()));
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
    /// A third-party platform's merchants: any other app id is looked up among them.
    merchants: Option<merchants::Merchants>,
}

/// How a credentials block starts in `wechat_tokens.blocked_reason`.
const CREDENTIALS_BLOCK: &str = "credentials rejected";

/// Forced stable-token refreshes WeChat allows: 20 a day, 30 s apart.
const STABLE_FORCE_PER_DAY: i32 = 20;
const STABLE_FORCE_SPACING: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// Transient token API failures in a row back off 1 s, 2 s, 4 s ... up to 30 s.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A token past its refresh time (the refresh failed) is asked for again this often.
const STALE_RECHECK: Duration = Duration::from_secs(1);

/// The bound of a token API call, whatever `WXNOTIFY_HTTP_TIMEOUT_SECS` says: the row lock is held
/// across it, so it must end before Postgres ends the holder's transaction, and that before a
/// waiter gives up on the lock.
const TOKEN_FETCH_TIMEOUT: Duration = Duration::from_secs(8);
const _: () = assert!(
    TOKEN_FETCH_TIMEOUT.as_millis() < store::IDLE_IN_TRANSACTION.as_millis()
        && store::IDLE_IN_TRANSACTION.as_millis() < store::LOCK_WAIT.as_millis()
        && store::LOCK_WAIT.as_millis() < store::STATEMENT.as_millis()
);

/// How long nobody asks WeChat after the `failures`-th transient failure in a row.
fn transient_backoff(failures: i32) -> Duration {
    let doublings = failures.saturating_sub(1).clamp(0, 16) as u32;
    (BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// The first 16 hex digits of SHA-256("wxnotify-secret-fp:" + secret): tells secrets apart (which
/// worker's secret WeChat rejected) without storing or logging them.
pub(crate) fn secret_fingerprint(secret: &SecretString) -> String {
    let digest = Sha256::new()
        .chain_update("wxnotify-secret-fp:")
        .chain_update(secret.expose_secret())
        .finalize();
    hex::encode(&digest[..8])
}

fn transient(app_id: &str, message: String) -> TokenError {
    TokenError::Transient {
        app_id: app_id.into(),
        message,
    }
}

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
                    secret_fp: secret_fingerprint(&c.secret),
                    cached: RwLock::new(None),
                    flight: tokio::sync::Mutex::new(()),
                    blocked: Mutex::new(None),
                    rejected: AtomicI64::new(0),
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
                merchants: None,
            }),
        }
    }

    /// Also serves the merchants of these third-party platforms (docs/interface.md §10). Call
    /// before the provider is shared.
    pub(crate) fn with_platforms(
        mut self,
        pool: PgPool,
        tokens: crate::platform::tokens::PlatformTokens,
        platforms: Vec<crate::platform::tokens::Platform>,
    ) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner)
            && !platforms.is_empty()
        {
            inner.merchants = Some(merchants::Merchants::new(pool, tokens, platforms));
        }
        self
    }

    /// Until `stop`: forgets a merchant's cached token as soon as its state changes anywhere in
    /// the fleet (returns at once without platforms).
    pub(crate) async fn watch_merchants(&self, stop: tokio_util::sync::CancellationToken) {
        if let Some(merchants) = &self.inner.merchants {
            merchants.watch(stop).await;
        }
    }

    fn slot(&self, app_id: &str) -> Result<&Arc<AppSlot>, TokenError> {
        self.inner
            .apps
            .get(app_id)
            .ok_or_else(|| TokenError::UnknownApp { app_id: app_id.into() })
    }

    /// The current token of an app. Costs nothing while the cached one is fresh. When it cannot
    /// be refreshed, the current one is still used until it expires, unless WeChat rejected
    /// this process's credentials (a person must see that, at boot first).
    pub async fn get(&self, app_id: &str) -> Result<AccessToken, TokenError> {
        let slot = match (self.slot(app_id), &self.inner.merchants) {
            (Ok(slot), _) => slot,
            (Err(_), Some(merchants)) => return Box::pin(merchants.get(app_id)).await,
            (Err(e), None) => return Err(e),
        };
        if let Some(t) = slot.fresh() {
            return Ok(t);
        }
        let _flight = slot.flight.lock().await;
        if let Some(t) = slot.fresh() {
            return Ok(t);
        }
        // Boxed: the slow path's future (database, then maybe WeChat) is allocated only when it
        // is taken, instead of inflating every delivery's future (see `db::begin`).
        let err = match Box::pin(self.obtain(slot, None)).await {
            Ok(t) => return Ok(t),
            Err(e) if e.is_configuration() => return Err(e),
            Err(e) => e,
        };
        let Some(t) = slot.unexpired() else {
            return Err(err);
        };
        tracing::warn!(
            app = app_id,
            generation = t.generation,
            expires_in_secs = t.expires_at.saturating_duration_since(Instant::now()).as_secs(),
            error = %err,
            "cannot refresh the access token; using the current one until it expires"
        );
        Ok(t)
    }

    /// `failed` was rejected by WeChat. Replaces it if, and only if, it is still the current
    /// generation; otherwise someone already did, and the next `get` returns the newer one.
    pub async fn invalidate(&self, failed: &AccessToken) -> Result<(), TokenError> {
        let slot = match (self.slot(&failed.app_id), &self.inner.merchants) {
            (Ok(slot), _) => slot,
            (Err(_), Some(merchants)) => return merchants.invalidate(failed).await,
            (Err(e), None) => return Err(e),
        };
        let _flight = slot.flight.lock().await;
        slot.rejected.fetch_max(failed.generation, Ordering::Relaxed);
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
        Box::pin(self.obtain(slot, Some(failed.generation))).await.map(|_| ())
    }

    /// Under the process's flight lock: adopt what Postgres has, or refresh under its row lock.
    /// `rejected`: the generation WeChat just rejected, if that is why.
    async fn obtain(&self, slot: &AppSlot, rejected: Option<i64>) -> Result<AccessToken, TokenError> {
        if let Some(err) = slot.blocked() {
            return Err(err);
        }
        let rejected = rejected.unwrap_or(0).max(slot.rejected.load(Ordering::Relaxed));
        if let Some(token) = self.follow_stored(slot, rejected).await? {
            return Ok(token);
        }
        let locked = self.inner.store.lock(slot.creds.app_id.as_str()).await?;
        if usable(&locked.row, rejected) {
            let token = self.adopt(slot, &locked.row);
            locked.commit().await?;
            return Ok(token);
        }
        self.keep_unexpired(slot, &locked.row);
        if let Some(err) = self.paused(slot, &locked.row) {
            locked.commit().await?;
            return Err(err);
        }
        self.refresh(slot, locked, rejected).await
    }

    /// Most processes find the token another one stored, or the pause another one decided: no
    /// lock needed to follow either. `None`: neither, the caller takes the row lock.
    async fn follow_stored(&self, slot: &AppSlot, rejected: i64) -> Result<Option<AccessToken>, TokenError> {
        let Some(row) = self.inner.store.peek(slot.creds.app_id.as_str()).await? else {
            return Ok(None);
        };
        if usable(&row, rejected) {
            return Ok(Some(self.adopt(slot, &row)));
        }
        if let Some(err) = self.paused(slot, &row) {
            self.keep_unexpired(slot, &row);
            return Err(err);
        }
        Ok(None)
    }

    /// Under the row lock: asks WeChat for a new token, counts the call, and stores what it
    /// answers (or records the failure).
    async fn refresh(&self, slot: &AppSlot, mut locked: LockedToken, rejected: i64) -> Result<AccessToken, TokenError> {
        let api = self.inner.settings.api;
        let force = may_force(&locked.row, rejected, api, slot.creds.app_id.as_str());
        let asked = Instant::now();
        let fetched = match self.fetch(slot, api, force).await {
            Ok(f) => f,
            Err(e) => {
                // Only a forced refresh WeChat granted uses up one of the day's 20.
                locked.count_call(api, false, true).await?;
                return Err(self.failed(slot, locked, e).await?);
            }
        };
        locked.count_call(api, force, false).await?;
        self.store(slot, locked, fetched, asked, force).await
    }

    /// One call to the token API, bounded by `TOKEN_FETCH_TIMEOUT`.
    async fn fetch(&self, slot: &AppSlot, api: TokenApi, force: bool) -> Result<FetchedToken, TokenFetchError> {
        tokio::time::timeout(
            TOKEN_FETCH_TIMEOUT,
            self.inner
                .client
                .fetch_token(api, &slot.creds.app_id, &slot.creds.secret, force),
        )
        .await
        .unwrap_or_else(|_| {
            Err(TokenFetchError::Transport(format!(
                "no answer from the token API within {} s",
                TOKEN_FETCH_TIMEOUT.as_secs()
            )))
        })
    }

    /// Saves a fetched token as the next generation, commits, and caches it in this process.
    /// `asked`: when the token API was called, which its lifetime counts from.
    async fn store(
        &self,
        slot: &AppSlot,
        mut locked: LockedToken,
        fetched: FetchedToken,
        asked: Instant,
        force: bool,
    ) -> Result<AccessToken, TokenError> {
        let app_id = slot.creds.app_id.as_str();
        let api = self.inner.settings.api;
        let (expires, refresh_in) = lifetime(fetched.expires_in, asked, self.inner.settings.margin);
        let generation = locked.save(api, &fetched.token, expires, refresh_in, force).await?;
        locked.commit().await?;
        metrics::counter!("wxnotify_token_fetches_total", "app" => app_id.to_string(), "result" => "ok").increment(1);
        tracing::info!(
            app = app_id,
            generation,
            expires_in = fetched.expires_in,
            forced = force,
            api = api.as_str(),
            "fetched a new access token"
        );
        let now = Instant::now();
        Ok(slot.cache(AccessToken {
            secret: Arc::new(fetched.token),
            app_id: app_id.into(),
            generation,
            refresh_at: now + Duration::from_secs_f64(refresh_in),
            expires_at: now + Duration::from_secs_f64(expires),
        }))
    }

    /// Records a failed token call under the row lock (a block, or one more transient failure and
    /// its backoff), for this process and the others, and returns the error to report.
    async fn failed(
        &self,
        slot: &AppSlot,
        mut locked: LockedToken,
        failure: TokenFetchError,
    ) -> Result<TokenError, TokenError> {
        let app_id = slot.creds.app_id.as_str();
        let now = locked.row.now;
        let (err, wait) = match failure {
            TokenFetchError::WeChat { errcode, errmsg } => match classify_token_fetch(errcode) {
                TokenFetchClass::Credentials => {
                    let wait = self.inner.settings.credentials_pause;
                    let until = now + chrono::TimeDelta::from_std(wait).unwrap_or_default();
                    let reason = format!("{CREDENTIALS_BLOCK}: errcode {errcode} ({errmsg})");
                    // For this secret only: a worker with another one still asks.
                    locked.block(until, &reason, Some(&slot.secret_fp)).await?;
                    let err = TokenError::Credentials {
                        app_id: app_id.into(),
                        errcode,
                        errmsg,
                        until,
                    };
                    (err, wait)
                }
                TokenFetchClass::DailyQuota => {
                    let until = next_quota_reset(now);
                    locked.block(until, "daily token quota used up (45009)", None).await?;
                    let err = TokenError::DailyQuota {
                        app_id: app_id.into(),
                        until,
                    };
                    (err, (until - now).to_std().unwrap_or_default())
                }
                TokenFetchClass::Transient => {
                    let message = format!("errcode {errcode} ({errmsg})");
                    Self::back_off(&mut locked, app_id, message).await?
                }
            },
            TokenFetchError::Transport(message) => Self::back_off(&mut locked, app_id, message).await?,
        };
        locked.commit().await?;
        metrics::counter!("wxnotify_token_fetches_total", "app" => app_id.to_string(), "result" => "error")
            .increment(1);
        tracing::error!(app = app_id, error = %err, "token fetch failed");
        slot.block(&err, wait);
        Ok(err)
    }

    /// One more transient failure in a row: nobody asks again before its backoff ends.
    async fn back_off(
        locked: &mut LockedToken,
        app_id: &str,
        message: String,
    ) -> Result<(TokenError, Duration), TokenError> {
        let wait = transient_backoff(locked.row.failures_in_row.saturating_add(1));
        locked.back_off(wait, &message).await?;
        Ok((transient(app_id, message), wait))
    }

    /// Why nobody may ask WeChat for this app's token now, as `row` says: a block (credentials,
    /// daily quota) or the backoff after transient failures; this process then waits as long.
    /// A credentials block for another secret than this process's does not count.
    fn paused(&self, slot: &AppSlot, row: &TokenRow) -> Option<TokenError> {
        let app_id = slot.creds.app_id.as_str();
        let block = row.blocked_until.filter(|u| *u > row.now).and_then(|until| {
            let reason = row.blocked_reason.clone().unwrap_or_default();
            let credentials = reason.starts_with(CREDENTIALS_BLOCK);
            if let Some(fp) = &row.blocked_secret_fp
                && credentials
                && *fp != slot.secret_fp
            {
                tracing::warn!(
                    app = app_id,
                    blocked_secret = %fp,
                    our_secret = %slot.secret_fp,
                    "WeChat rejected another worker's secret (fingerprints differ); asking with ours"
                );
                return None;
            }
            let err = TokenError::Blocked {
                app_id: app_id.into(),
                reason,
                until,
                credentials,
            };
            Some((err, until))
        });
        let (err, until) = match block {
            Some(block) => block,
            None => {
                let until = row.backoff_until.filter(|u| *u > row.now)?;
                let message = format!(
                    "the token API failed {} time(s) in a row, last: {}; next try after {until}",
                    row.failures_in_row,
                    row.last_failure.as_deref().unwrap_or("unknown")
                );
                (transient(app_id, message), until)
            }
        };
        slot.block(&err, (until - row.now).to_std().unwrap_or_default());
        Some(err)
    }

    /// The row's token as this process holds it: `fresh` until the row's refresh time, or due
    /// at once (then only a fallback until it expires).
    fn token_of(slot: &AppSlot, row: &TokenRow, fresh: bool) -> Option<AccessToken> {
        let left = |at: Option<DateTime<Utc>>| at.and_then(|t| (t - row.now).to_std().ok()).unwrap_or_default();
        let now = Instant::now();
        Some(AccessToken {
            secret: Arc::new(row.token.clone()?),
            app_id: slot.creds.app_id.as_str().into(),
            generation: row.generation,
            refresh_at: if fresh { now + left(row.refresh_after) } else { now },
            expires_at: now + left(row.expires_at),
        })
    }

    /// Takes the token of a usable row (another process fetched it).
    fn adopt(&self, slot: &AppSlot, row: &TokenRow) -> AccessToken {
        slot.cache(Self::token_of(slot, row, true).expect("usable row has a token"))
    }

    /// Keeps the row's token, due for refresh, as the fallback while it has not expired (a
    /// process that never had it needs it too), unless a newer one is cached.
    fn keep_unexpired(&self, slot: &AppSlot, row: &TokenRow) {
        let Some(token) = Self::token_of(slot, row, false).filter(|t| t.expires_at > Instant::now()) else {
            return;
        };
        let mut cached = slot.cached.write().expect("token cache lock");
        if cached.as_ref().is_none_or(|c| c.generation < token.generation) {
            *cached = Some(token);
        }
    }
}

/// A stored token this process may adopt: present, not due for refresh, newer than `rejected`.
fn usable(row: &TokenRow, rejected: i64) -> bool {
    row.token.is_some() && row.refresh_after.is_some_and(|r| r > row.now) && row.generation > rejected
}

/// Whether to ask the stable-token API for a forced refresh: only to replace a rejected token, and
/// only within WeChat's allowance (20 a day, 30 s apart); warns when the allowance says no.
fn may_force(row: &TokenRow, rejected: i64, api: TokenApi, app_id: &str) -> bool {
    let replacing_rejected = row.generation <= rejected && rejected > 0;
    let force = replacing_rejected
        && api == TokenApi::Stable
        && row.forced_today < STABLE_FORCE_PER_DAY
        && row.last_forced_at.is_none_or(|t| row.now - t >= STABLE_FORCE_SPACING);
    if replacing_rejected && api == TokenApi::Stable && !force {
        tracing::warn!(
            app = app_id,
            "stable-token forced refresh not allowed now (20 a day, 30 s apart); asking without force"
        );
    }
    force
}

/// A fetched token's lifetime and when to refresh it, in seconds from now. The lifetime runs from
/// when WeChat issued it: counted from when we asked.
fn lifetime(expires_in: u64, asked: Instant, margin: Duration) -> (f64, f64) {
    let expires = (expires_in.max(1) as f64 - asked.elapsed().as_secs_f64()).max(1.0);
    let margin = margin.as_secs_f64();
    let refresh_in = if expires > 2.0 * margin {
        expires - margin
    } else {
        expires / 2.0
    };
    (expires, refresh_in)
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

    #[test]
    fn transient_failures_back_off_from_one_second_doubling_to_thirty() {
        let secs: Vec<u64> = (1..=8).map(|n| transient_backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(transient_backoff(i32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn secret_fingerprints_tell_secrets_apart_without_showing_them() {
        let fp = secret_fingerprint(&SecretString::from("sim-secret-Zq81x"));
        assert_eq!(fp.len(), 16);
        assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(fp, secret_fingerprint(&SecretString::from("sim-secret-Zq81x")));
        assert_ne!(fp, secret_fingerprint(&SecretString::from("wrong")));
        assert!(!fp.contains("sim-secret"));
    }
}
