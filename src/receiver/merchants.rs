//! Which configured platform an appid is a merchant of (docs/interface.md §10): a merchant's own
//! pushes (receipts, follow events, consent) arrive at `POST /wechat/{authorizer_appid}`, signed
//! and encrypted with its platform's token and key. Asked only for an appid that is no configured
//! app, and only when platforms are configured: the apps' pushes never wait for it.
//!
//! A merchant's platform does not change, so an answer is kept [`KNOWN_FOR`]; "no merchant" only
//! [`UNKNOWN_FOR`] (a merchant authorizing right now gets its pushes within seconds). When the
//! database does not answer within [`LOOKUP_TIMEOUT`], the last answer naming a platform is used,
//! however old: the push can still be kept (in the pushes queue, when Postgres is away).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

/// How long a merchant's platform is kept before it is asked again.
pub(crate) const KNOWN_FOR: Duration = Duration::from_secs(60);
/// How long "not a merchant of a configured platform" is kept.
pub(crate) const UNKNOWN_FOR: Duration = Duration::from_secs(5);
/// The lookup's share of the 5 s WeChat waits for an answer (the time it takes comes out of the
/// store's).
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// Most appids kept: anyone may post to any appid, so what is kept is bounded.
const MAX_ENTRIES: usize = 10_000;

/// Why an appid's platform is not known, and no earlier answer names one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    #[error("looking the merchant up in authorizers: {0}")]
    Db(#[from] sqlx::Error),
    #[error("looking the merchant up in authorizers: no answer within {LOOKUP_TIMEOUT:?}")]
    Timeout,
}

/// One appid's answer: its platform (`None`: not a merchant of a configured one), until when.
struct Entry {
    platform: Option<String>,
    until: Instant,
}

/// The answers kept, bounded by [`MAX_ENTRIES`].
#[derive(Default)]
struct Cache(HashMap<String, Entry>);

impl Cache {
    /// The answer for `appid` if it is still fresh at `now`.
    fn fresh(&self, appid: &str, now: Instant) -> Option<Option<String>> {
        self.0.get(appid).filter(|e| e.until > now).map(|e| e.platform.clone())
    }

    /// The last answer naming a platform for `appid`, however old.
    fn last_known(&self, appid: &str) -> Option<String> {
        self.0.get(appid).and_then(|e| e.platform.clone())
    }

    fn put(&mut self, appid: &str, platform: Option<String>, now: Instant) {
        if self.0.len() >= MAX_ENTRIES && !self.0.contains_key(appid) {
            self.0.retain(|_, e| e.until > now);
            if self.0.len() >= MAX_ENTRIES {
                self.0.clear();
            }
        }
        let until = now + if platform.is_some() { KNOWN_FOR } else { UNKNOWN_FOR };
        self.0.insert(appid.to_string(), Entry { platform, until });
    }
}

/// The merchants of the configured platforms, looked up in `authorizers`.
pub(crate) struct Merchants {
    pool: PgPool,
    platforms: HashSet<String>,
    cache: Mutex<Cache>,
}

impl Merchants {
    /// `None` without platforms: then no appid is a merchant.
    pub(crate) fn new<'a>(pool: PgPool, platforms: impl IntoIterator<Item = &'a String>) -> Option<Arc<Self>> {
        let platforms: HashSet<String> = platforms.into_iter().cloned().collect();
        (!platforms.is_empty()).then(|| {
            Arc::new(Self {
                pool,
                platforms,
                cache: Mutex::default(),
            })
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configured platform `appid` is a merchant of, whatever the merchant's state (a revoked
    /// merchant's receipts still apply); `None`: it is not a merchant of one.
    pub(crate) async fn platform_of(&self, appid: &str) -> Result<Option<String>, LookupError> {
        if let Some(answer) = self.cache().fresh(appid, Instant::now()) {
            return Ok(answer);
        }
        let asked =
            sqlx::query_scalar::<_, String>("SELECT component_appid FROM authorizers WHERE authorizer_appid = $1")
                .bind(appid)
                .fetch_optional(&self.pool);
        let answer = match tokio::time::timeout(LOOKUP_TIMEOUT, asked).await {
            Ok(Ok(component)) => component.filter(|c| self.platforms.contains(c)),
            failed => {
                let error = match failed {
                    Ok(Err(e)) => LookupError::Db(e),
                    _ => LookupError::Timeout,
                };
                return self.cache().last_known(appid).map(Some).ok_or(error);
            }
        };
        self.cache().put(appid, answer.clone(), Instant::now());
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_a_while_and_a_known_platform_is_kept_past_that() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        cache.put("wxM", Some("wxP".into()), t0);
        cache.put("wxNobody", None, t0);
        assert_eq!(cache.fresh("wxM", t0 + KNOWN_FOR / 2), Some(Some("wxP".into())));
        assert_eq!(cache.fresh("wxNobody", t0), Some(None));
        assert_eq!(cache.fresh("wxNobody", t0 + UNKNOWN_FOR), None, "asked again soon");
        assert_eq!(cache.fresh("wxM", t0 + KNOWN_FOR), None, "asked again after a minute");
        assert_eq!(
            cache.last_known("wxM").as_deref(),
            Some("wxP"),
            "until the database answers"
        );
        assert_eq!(cache.last_known("wxNobody"), None);
        assert_eq!(cache.fresh("wxOther", t0), None);
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        for i in 0..MAX_ENTRIES {
            cache.put(&format!("wx{i}"), None, t0);
        }
        cache.put("wxM", Some("wxP".into()), t0 + UNKNOWN_FOR);
        assert_eq!(cache.0.len(), 1, "the stale answers dropped");
        for i in 0..MAX_ENTRIES {
            cache.put(&format!("wx{i}"), None, t0 + UNKNOWN_FOR);
        }
        assert!(cache.0.len() <= MAX_ENTRIES, "all fresh: cleared when full");
        let last = format!("wx{}", MAX_ENTRIES - 1);
        assert_eq!(cache.fresh(&last, t0 + UNKNOWN_FOR), Some(None), "the newest kept");
    }
}
