//! The `Sim` methods of the third-party platform: what tests and the demo do in-process (the
//! `/sim/platform/*` endpoints call the same), the pushes to the platforms' authorization event
//! URL, and the task that pushes a ticket every `ticket_every_ms`.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::event::{PlatformEvent, PlatformPushed};
use super::onboard::{Authorize, Authorized};
use super::{MerchantView, PlatformPushConfig, PlatformStats};
use crate::Sim;
use crate::push::{self, PushConfig, PushFormat, Target};
use crate::state::SimState;

impl Sim {
    /// Where the platforms' authorization events go and how often tickets are pushed (replaces the
    /// whole configuration); starts the ticket task when `ticket_every_ms` is set.
    pub fn set_platform_push(&self, config: PlatformPushConfig) {
        self.with(|s| s.config.platform_push = config);
        self.start_platform_pushes();
    }

    /// The pushes made to the platforms so far, with their fate.
    pub fn platform_pushes(&self) -> Vec<PlatformPushed> {
        self.with(|s| s.platforms.pushed.clone())
    }

    /// The platform APIs' counters.
    pub fn platform_stats(&self) -> PlatformStats {
        self.with(|s| s.platforms.stats.clone())
    }

    /// A merchant scans the platform's page and authorizes it: an authorization code, pushed
    /// `authorized` (`updateauthorized` when it was authorized already: its old tokens and
    /// refresh token stop working once the new code is exchanged). `Err` says why not.
    pub fn authorize_merchant(&self, request: Authorize) -> Result<Authorized, String> {
        let done = self.with(|s| s.platforms.authorize(&s.config, &request, false));
        self.flush_platform_outbox();
        done
    }

    /// A merchant that revoked the platform authorizes it again (pushed `authorized`; a new
    /// refresh token once the code is exchanged). `Err` for a merchant that is authorized or
    /// never was.
    pub fn reauthorize_merchant(&self, request: Authorize) -> Result<Authorized, String> {
        let done = self.with(|s| s.platforms.authorize(&s.config, &request, true));
        self.flush_platform_outbox();
        done
    }

    /// A merchant revokes its authorization: pushed `unauthorized`; its access tokens (sends:
    /// 40001), refresh token (61023) and unused authorization codes stop working at once.
    pub fn revoke_merchant(&self, component: &str, authorizer: &str) -> Result<(), String> {
        let done = self.with(|s| s.platforms.revoke(&s.config, component, authorizer));
        self.flush_platform_outbox();
        done
    }

    /// Revokes the access tokens of the authorized merchants named (`None`: all) at once, behind
    /// the workers' back; their refresh tokens keep working. The merchants rotated.
    pub fn rotate_merchants(&self, component: Option<&str>, authorizer: Option<&str>) -> Vec<String> {
        self.with(|s| s.platforms.rotate(component, authorizer))
    }

    /// The one refresh token the simulator holds valid for the merchant (`None`: not authorized,
    /// or no code exchanged since it authorized).
    pub fn refresh_token_of(&self, component: &str, authorizer: &str) -> Option<String> {
        self.with(|s| s.platforms.refresh_token_of(component, authorizer))
    }

    /// Every merchant of every platform, as the simulator holds it.
    pub fn merchants(&self) -> Vec<MerchantView> {
        self.with(|s| s.platforms.merchants())
    }

    /// The merchant adds `library_id` to its account by hand (in its own console, not through
    /// the API: not counted in `add_template_calls`); the new template id, or 45026 when the
    /// account holds 25 (61003 for a merchant that never authorized the platform).
    pub fn add_merchant_template(&self, component: &str, authorizer: &str, library_id: &str) -> Result<String, i64> {
        let key = (component.to_string(), authorizer.to_string());
        self.with(|s| s.platforms.add_template_for(&key, library_id, Vec::new(), false))
    }

    /// The merchant deletes `template_id` from its account by hand (in its console): sends with
    /// it are answered 40037 (invalid template_id) from then on. Whether it was on the account.
    pub fn delete_merchant_template(&self, component: &str, authorizer: &str, template_id: &str) -> bool {
        self.with(|s| s.platforms.delete_template(component, authorizer, template_id))
    }

    /// A new verify ticket for `component`, now, pushed when the platforms' URL is set (issued
    /// all the same when not); `None` for a platform the simulator does not know.
    pub fn push_ticket(&self, component: &str) -> Option<String> {
        let ticket = self.with(|s| s.platforms.push_ticket(&s.config, component));
        self.flush_platform_outbox();
        ticket
    }

    /// Every ticket `component` was given expires at once (61005) until the next push; `false`
    /// for a platform the simulator does not know.
    pub fn expire_tickets(&self, component: &str) -> bool {
        self.with(|s| s.platforms.expire_tickets(&s.config, component))
    }

    /// Starts the ticket task when `ticket_every_ms` is set and it is not running (outside a
    /// Tokio runtime, nothing happens). It pushes a ticket to every platform every
    /// `ticket_every_ms`, and stops when the setting is cleared or the simulator is dropped.
    pub fn start_platform_pushes(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let start = self.with(|s| {
            let start = s.config.platform_push.ticket_every_ms.is_some() && !s.platforms.ticker_running;
            s.platforms.ticker_running |= start;
            start
        });
        if start {
            runtime.spawn(tick(Arc::downgrade(&self.state), self.http.clone()));
        }
    }

    /// Spawns the platform pushes the last calls queued.
    pub(crate) fn flush_platform_outbox(&self) {
        for event in self.with(|s| std::mem::take(&mut s.platforms.outbox)) {
            self.push_platform(event);
        }
    }

    /// Pushes `event` to its platform in the background, in safe mode, with WeChat's retries.
    fn push_platform(&self, event: PlatformEvent) {
        let sim = self.clone();
        tokio::spawn(async move {
            let Some((config, url)) = sim.with(|s| {
                let p = s.config.platforms.get(&event.component_appid)?;
                let push = &s.config.platform_push;
                let url = push
                    .callback_url
                    .as_ref()?
                    .replace("{component_appid}", &event.component_appid);
                let config = PushConfig {
                    callback_url: Some(url.clone()),
                    token: p.token.clone(),
                    aes_key: Some(p.aes_key.clone()),
                    compatible: false,
                    timeout_ms: push.timeout_ms,
                    tries: push.tries,
                    retry_gap_ms: push.retry_gap_ms,
                    format: PushFormat::Xml,
                };
                Some((config, url))
            }) else {
                return;
            };
            let target = Target {
                url,
                openid: None,
                sealed_appid: &event.component_appid,
            };
            let on_try = |acknowledged: bool| {
                sim.with(|s| {
                    s.platforms.stats.push_tries += 1;
                    s.platforms.stats.push_tries_failed += u64::from(!acknowledged);
                })
            };
            let doc = event.document(push::unix_now());
            let (tries, acknowledged) = push::deliver_document(&sim.http, &config, &target, &doc, on_try).await;
            sim.with(|s| {
                let stats = &mut s.platforms.stats;
                stats.pushes_acknowledged += u64::from(acknowledged);
                stats.pushes_abandoned += u64::from(!acknowledged);
                s.platforms.pushed.push(PlatformPushed {
                    event,
                    tries,
                    acknowledged,
                });
            });
        });
    }
}

/// The ticket task: every `ticket_every_ms`, a ticket for every platform (when the platforms' URL
/// is set); stops when the setting is cleared or the simulator is gone. It holds the simulator
/// only while it pushes.
async fn tick(state: Weak<Mutex<SimState>>, http: reqwest::Client) {
    while let Some(every) = period(&state) {
        tokio::time::sleep(Duration::from_millis(every.max(1))).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let sim = Sim {
            state,
            http: http.clone(),
        };
        let components: Vec<String> = sim.with(|s| {
            let push = &s.config.platform_push;
            let mut all: Vec<String> = s.config.platforms.keys().cloned().collect();
            all.sort();
            all.retain(|_| push.ticket_every_ms.is_some() && push.callback_url.is_some());
            all
        });
        for component in components {
            sim.push_ticket(&component);
        }
    }
}

/// The ticket period; `None` when it was cleared or the simulator is gone (the task is then
/// marked stopped).
fn period(state: &Weak<Mutex<SimState>>) -> Option<u64> {
    let state = state.upgrade()?;
    let mut s = state.lock().expect("sim state lock");
    let every = s.config.platform_push.ticket_every_ms;
    s.platforms.ticker_running = every.is_some();
    every
}
