//! The send path's tokens for a third-party platform's merchants (docs/interface.md §10): an
//! app id that is no configured app is looked up in `authorizers`; an `active` merchant's token
//! comes from the platform's shared store (`crate::platform::tokens`: one refresh per expiry for
//! the fleet, the refresh token committed with it) and is kept here a minute, so a send costs no
//! database round trip while it is fresh. A merchant that is not `active` is `Unauthorized`; no
//! verify ticket younger than 12 h pauses its deliveries (WeChat is asked for one) without using
//! their attempts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{AccessToken, TokenError};
use crate::flights::Flights;
use crate::platform::tokens::{Platform, PlatformError, PlatformTokens};

/// How long this process uses a merchant's token before asking the store again (a stored token
/// is valid for 5 minutes more at least).
const FRESH_FOR: Duration = Duration::from_secs(60);
const VALID_FOR: Duration = Duration::from_secs(300);
/// How often the worker loads every merchant's valid token in one query (before the cached ones
/// are no longer fresh).
const RELOAD_EVERY: Duration = Duration::from_secs(45);
/// Deliveries wait this long when the platform has no ticket: WeChat, asked for one, pushes it
/// within seconds (else the next comes within 10 minutes).
const NO_TICKET_PAUSE: chrono::TimeDelta = chrono::TimeDelta::seconds(15);

/// Notified by `authorizers`' trigger with a merchant's appid when its state changes.
const MERCHANTS_CHANNEL: &str = "wxnotify_merchants";

pub(crate) struct Merchants {
    pool: PgPool,
    tokens: PlatformTokens,
    platforms: HashMap<String, Platform>,
    cached: RwLock<HashMap<String, AccessToken>>,
    /// In-process single flight per merchant: one task asks the store for a merchant at a time
    /// (another merchant's lookup or refresh never waits for it).
    flights: Flights<String>,
    /// Counts what was forgotten: a bulk load that overlapped a forget is not kept.
    forgets: AtomicU64,
}

impl Merchants {
    pub(crate) fn new(pool: PgPool, tokens: PlatformTokens, platforms: Vec<Platform>) -> Self {
        Self {
            pool,
            tokens,
            platforms: platforms.into_iter().map(|p| (p.component_appid.clone(), p)).collect(),
            cached: RwLock::default(),
            flights: Flights::default(),
            forgets: AtomicU64::new(0),
        }
    }

    fn fresh(&self, app_id: &str) -> Option<AccessToken> {
        let cached = self.cached.read().expect("merchant token cache lock");
        cached.get(app_id).filter(|t| t.is_fresh()).cloned()
    }

    /// The merchant's current token.
    pub(crate) async fn get(&self, app_id: &str) -> Result<AccessToken, TokenError> {
        if let Some(t) = self.fresh(app_id) {
            return Ok(t);
        }
        let _flight = self.flights.enter(&app_id.to_string()).await;
        if let Some(t) = self.fresh(app_id) {
            return Ok(t);
        }
        let unknown = || TokenError::UnknownApp { app_id: app_id.into() };
        let component: Option<String> =
            sqlx::query_scalar("SELECT component_appid FROM authorizers WHERE authorizer_appid = $1")
                .bind(app_id)
                .fetch_optional(&self.pool)
                .await?;
        let platform = component.and_then(|c| self.platforms.get(&c)).ok_or_else(unknown)?;
        let token = self
            .tokens
            .merchant(platform, app_id)
            .await
            .map_err(|e| to_token_error(app_id, e))?;
        Ok(self.keep(app_id, token.token, token.generation))
    }

    /// Caches a merchant's token read from the store (valid there for [`VALID_FOR`] at least).
    fn keep(&self, app_id: &str, secret: secrecy::SecretString, generation: i64) -> AccessToken {
        let now = Instant::now();
        let token = AccessToken {
            secret: Arc::new(secret),
            app_id: app_id.into(),
            generation,
            refresh_at: now + FRESH_FOR,
            expires_at: now + VALID_FOR,
        };
        let mut cached = self.cached.write().expect("merchant token cache lock");
        cached.insert(app_id.to_string(), token.clone());
        token
    }

    /// Caches, in one query, the token of every `active` merchant that the store holds valid for
    /// a while yet: a worker serving a thousand merchants asks the store once, not once per
    /// merchant. Kept only if nothing was forgotten meanwhile.
    async fn load_valid(&self) -> Result<usize, sqlx::Error> {
        let before = self.forgets.load(Ordering::SeqCst);
        let platforms: Vec<&str> = self.platforms.keys().map(String::as_str).collect();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT authorizer_appid, access_token, generation FROM authorizers
              WHERE state = 'active' AND component_appid = ANY($1) AND access_token IS NOT NULL
                AND access_expires_at > now() + make_interval(secs => $2)",
        )
        .bind(platforms)
        .bind((VALID_FOR + FRESH_FOR).as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        if self.forgets.load(Ordering::SeqCst) != before {
            return Ok(0);
        }
        for (app_id, token, generation) in &rows {
            let newer_held = {
                let cached = self.cached.read().expect("merchant token cache lock");
                cached.get(app_id).is_some_and(|t| t.generation > *generation)
            };
            if !newer_held {
                self.keep(app_id, secrecy::SecretString::from(token.as_str()), *generation);
            }
        }
        Ok(rows.len())
    }

    /// Forgets cached tokens the moment a merchant's state changes anywhere in the fleet (a
    /// revocation pushed to a receiver, `platform sync`, another worker's refresh meeting 61023):
    /// a trigger on `authorizers` notifies [`MERCHANTS_CHANNEL`] with the merchant's appid. While
    /// the listener is down (and when it comes back) every cached token is forgotten, so a
    /// missed notification costs a lookup, never a send for a revoked merchant.
    pub(crate) async fn watch(&self, stop: tokio_util::sync::CancellationToken) {
        while !stop.is_cancelled() {
            let listener = async {
                let mut l = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
                l.listen(MERCHANTS_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = match crate::db::bounded(listener).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for merchants' state changes; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            self.forget_all();
            self.reload().await;
            let mut reload = tokio::time::interval_at(tokio::time::Instant::now() + RELOAD_EVERY, RELOAD_EVERY);
            loop {
                let heard = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = reload.tick() => {
                        self.reload().await;
                        continue;
                    }
                    heard = listener.try_recv() => heard,
                };
                match heard {
                    Ok(Some(n)) => self.forget(n.payload()),
                    // The connection was lost (the next call reconnects): what changed meanwhile
                    // went unheard.
                    Ok(None) => self.forget_all(),
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the merchants' state listener; listening again");
                        self.forget_all();
                        break;
                    }
                }
            }
        }
    }

    fn forget(&self, app_id: &str) {
        metrics::counter!("wxnotify_platform_state_changes_heard_total").increment(1);
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.cached.write().expect("merchant token cache lock").remove(app_id);
    }

    fn forget_all(&self) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.cached.write().expect("merchant token cache lock").clear();
    }

    /// Reloads the cache in bulk ([`Merchants::load_valid`]); a failure leaves the lookups to
    /// each delivery.
    async fn reload(&self) {
        if let Err(e) = crate::db::bounded(self.load_valid()).await {
            tracing::warn!(error = %e, "could not load the merchants' tokens; each is looked up when needed");
        }
    }

    /// WeChat rejected `failed`: replaced for the fleet if it is still the current generation.
    pub(crate) async fn invalidate(&self, failed: &AccessToken) -> Result<(), TokenError> {
        {
            let mut cached = self.cached.write().expect("merchant token cache lock");
            if cached
                .get(&*failed.app_id)
                .is_some_and(|t| t.generation <= failed.generation)
            {
                cached.remove(&*failed.app_id);
            }
        }
        self.tokens
            .invalidate_merchant(&failed.app_id, failed.generation)
            .await?;
        Ok(())
    }
}

fn to_token_error(app_id: &str, e: PlatformError) -> TokenError {
    match e {
        PlatformError::UnknownMerchant(_) => TokenError::UnknownApp { app_id: app_id.into() },
        PlatformError::NotActive { state, .. } => TokenError::Unauthorized {
            app_id: app_id.into(),
            state,
        },
        PlatformError::NoTicket(platform) => TokenError::Blocked {
            app_id: app_id.into(),
            reason: format!("platform {platform} has no verify ticket younger than 12 h; WeChat was asked for one"),
            until: chrono::Utc::now() + NO_TICKET_PAUSE,
            credentials: false,
        },
        PlatformError::WeChat(e) => TokenError::Transient {
            app_id: app_id.into(),
            message: e.to_string(),
        },
        PlatformError::Db(e) => TokenError::Db(e.to_string()),
    }
}
