//! A third-party platform's authorization codes, exchanged as soon as their push is stored
//! (docs/interface.md §10): the merchant becomes `active` with its tokens within a moment of
//! scanning. In the background, after `success` is answered: WeChat is not kept waiting, and a
//! code whose exchange fails (no ticket yet, WeChat away) stays stored and is tried again when
//! the platform's next push (a ticket, every 10 minutes) is stored, or by `platform sync`. At
//! start-up every platform's waiting codes are tried once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use sqlx::PgPool;

use crate::platform::client::ComponentApi;
use crate::platform::tokens::{Platform, PlatformTokens};

/// WeChat's component APIs answer within this, or the exchange is tried again later.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Exchange {
    tokens: PlatformTokens,
    platforms: HashMap<String, Platform>,
}

impl Exchange {
    /// `None` without platforms.
    pub(crate) fn new(pool: PgPool, api_base: &str, secrets: &HashMap<String, SecretString>) -> Option<Arc<Self>> {
        if secrets.is_empty() {
            return None;
        }
        let api = ComponentApi::new(api_base, CALL_TIMEOUT).ok()?;
        let platforms = secrets
            .iter()
            .map(|(id, secret)| {
                let p = Platform {
                    component_appid: id.clone(),
                    secret: secret.clone(),
                };
                (id.clone(), p)
            })
            .collect();
        Some(Arc::new(Self {
            tokens: PlatformTokens::new(pool, api),
            platforms,
        }))
    }

    /// Exchanges `component_appid`'s waiting codes in the background.
    pub(crate) fn spawn(self: &Arc<Self>, component_appid: &str) {
        let (this, id) = (self.clone(), component_appid.to_string());
        tokio::spawn(async move {
            let Some(p) = this.platforms.get(&id) else {
                return;
            };
            match this.tokens.exchange_codes(p).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(platform = %id, merchants = n, "authorization codes exchanged"),
                Err(e) => {
                    tracing::warn!(platform = %id, error = %e, "authorization codes not exchanged yet; kept for later")
                }
            }
        });
    }

    /// Every platform's waiting codes, once (at start-up).
    pub(crate) fn spawn_all(self: &Arc<Self>) {
        for id in self.platforms.keys() {
            self.spawn(id);
        }
    }
}
