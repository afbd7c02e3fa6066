//! WeChat's third-party platform (开放平台 第三方平台, `WECHAT_API.md` "Third-party platform"):
//! platforms (`component_appid`, secret, message-check token, EncodingAESKey) configured in
//! `SimConfig::platforms`, and the merchants ("authorizers") that authorize them through the
//! simulator's control endpoints. The map:
//! - `ticket`: verify tickets (12 h; the latest and the one before it accepted; 61005, 61006);
//! - `lease`: component tokens and merchants' access tokens (each new one retires the last,
//!   which keeps working for `SimConfig::overlap`, as `/cgi-bin/token`'s do);
//! - [`merchant`]: a merchant's authorization, its one refresh token, its templates (25 at most);
//! - `api`: WeChat's component endpoints and `api_add_template`, each answering a reply;
//! - [`onboard`]: what a merchant does (authorize, revoke) and what a test does (rotate, tickets);
//! - [`event`]: the pushes to the platform's authorization event URL (always safe mode);
//! - `control`: the `Sim` methods for all of it; `http`: the routes.
//!
//! A merchant's access token sends template and subscribe messages as the merchant (the message's
//! `appid` is the merchant's); its results and follower events are pushed to the app callback URL
//! with the merchant's appid, signed and encrypted with the platform's token and key (the trailing
//! appid being the `component_appid`).

mod api;
pub(crate) mod control;
pub mod event;
pub(crate) mod http;
mod lease;
pub mod merchant;
pub mod onboard;
#[cfg(test)]
mod tests;
mod ticket;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::push::{PushConfig, PushFormat};
use crate::state::SimConfig;
use event::{PlatformEvent, PlatformPushed};
pub(crate) use lease::Check;
use lease::Leases;
use merchant::{Merchant, MerchantTemplate};

/// A pre-auth code's lifetime (WeChat: 1800 s).
const PRE_AUTH_TTL: Duration = Duration::from_secs(1800);
/// An authorization code's lifetime (WeChat: about an hour).
const AUTH_CODE_TTL: Duration = Duration::from_secs(3600);

/// A third-party platform's credentials, as its admin console shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformConfig {
    /// The platform's AppSecret (`component_appsecret`).
    pub secret: String,
    /// The message-check token its pushes are signed with.
    pub token: String,
    /// The 43-character EncodingAESKey its pushes are encrypted with (always safe mode).
    pub aes_key: String,
}

/// Where the platforms' authorization events go, and how often tickets are pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlatformPushConfig {
    /// The authorization event URL; `{component_appid}` is replaced by the platform's id (e.g.
    /// `http://host/wechat/platform/{component_appid}`). `None` (the default): nothing is pushed,
    /// and no ticket is issued but by `Sim::push_ticket`.
    pub callback_url: Option<String>,
    /// A new ticket for every platform every this many milliseconds (WeChat: 600,000); `None`:
    /// only on `api_start_push_ticket` (or `Sim::push_ticket`).
    pub ticket_every_ms: Option<u64>,
    /// How long one try waits for the answer (WeChat: 5 s).
    pub timeout_ms: u64,
    /// Tries in all (WeChat: 3).
    pub tries: u32,
    /// Pause before trying again after an answer that was not `success`.
    pub retry_gap_ms: u64,
}

impl Default for PlatformPushConfig {
    fn default() -> Self {
        Self {
            callback_url: None,
            ticket_every_ms: None,
            timeout_ms: 5000,
            tries: 3,
            retry_gap_ms: 5000,
        }
    }
}

/// The platform APIs' counters (`GET /sim/platform/stats`, `Sim::platform_stats`); a merchant is
/// named by its authorizer appid, a platform by its component appid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlatformStats {
    /// `api_start_push_ticket` calls per platform.
    pub start_push_ticket_calls: BTreeMap<String, u64>,
    /// Verify tickets issued (and pushed when a callback URL is set) per platform.
    pub tickets_issued: BTreeMap<String, u64>,
    /// `api_component_token` calls per platform (each one, answered with a token or not).
    pub component_token_calls: BTreeMap<String, u64>,
    pub preauthcode_calls: u64,
    pub query_auth_calls: u64,
    /// `api_authorizer_token` calls in all, and per merchant.
    pub authorizer_token_calls: u64,
    pub authorizer_token_calls_by_merchant: BTreeMap<String, u64>,
    /// 61023 answers: a refresh token that was not the merchant's current one (also in `errors`).
    pub refresh_token_invalid: u64,
    /// Refresh tokens replaced by a refresh (`rotate_refresh_on_refresh`).
    pub refresh_tokens_rotated: u64,
    pub authorizer_list_calls: u64,
    /// `api_add_template` calls per merchant, then per library template id (each one, added or
    /// refused).
    pub add_template_calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// Merchants' access tokens revoked behind the workers' back (`/sim/platform/rotate`,
    /// `merchant_rotate_every`), per platform: one per merchant rotated.
    pub merchant_rotations: BTreeMap<String, u64>,
    /// errcode → how often the platform APIs answered it.
    pub errors: BTreeMap<i64, u64>,
    /// Pushes to the authorization event URL: tries, tries not answered `success`, pushes
    /// acknowledged, pushes given up.
    pub push_tries: u64,
    pub push_tries_failed: u64,
    pub pushes_acknowledged: u64,
    pub pushes_abandoned: u64,
}

/// A merchant as the simulator holds it (`GET /sim/platform/merchants`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantView {
    pub component_appid: String,
    pub authorizer_appid: String,
    /// The authorization stands.
    pub authorized: bool,
    /// The one refresh token WeChat accepts (`None`: no code exchanged since the last
    /// authorization, or revoked).
    pub refresh_token: Option<String>,
    pub func_info: Vec<u32>,
    /// The last authorization, Unix seconds.
    pub auth_time: i64,
    pub templates: Vec<MerchantTemplate>,
    /// Sends accepted from its account.
    pub accepted: u64,
}

/// (component appid, authorizer appid).
type MerchantKey = (String, String);

/// An authorization code waiting to be exchanged.
#[derive(Debug, Clone)]
struct AuthCode {
    authorizer: String,
    expires: Instant,
    func_info: Vec<u32>,
}

/// One platform's state.
#[derive(Debug, Default)]
struct Platform {
    tickets: ticket::Tickets,
    /// Pre-auth code → its expiry.
    pre_auth_codes: HashMap<String, Instant>,
    auth_codes: HashMap<String, AuthCode>,
    merchants: BTreeMap<String, Merchant>,
}

/// Every platform's state, its counters and its pushes.
#[derive(Debug, Default)]
pub(crate) struct Platforms {
    each: HashMap<String, Platform>,
    component_tokens: Leases<String>,
    access_tokens: Leases<MerchantKey>,
    /// Template ids the simulator gave → the merchant whose they are (`None` once the merchant
    /// deleted it: a send with it is answered 40037).
    template_owners: HashMap<String, Option<MerchantKey>>,
    pub(crate) stats: PlatformStats,
    /// Pushes to make, taken by the HTTP layer (which spawns them) after each call.
    pub(crate) outbox: Vec<PlatformEvent>,
    /// Pushes made, with their fate.
    pub(crate) pushed: Vec<PlatformPushed>,
    /// Every secret value issued (tokens, refresh tokens, tickets), for leak tests.
    pub(crate) issued: Vec<String>,
    /// The ticket task runs (at most one per simulator).
    pub(crate) ticker_running: bool,
}

impl Platforms {
    /// The state of `component` (created on first use).
    fn platform_mut(&mut self, component: &str) -> &mut Platform {
        self.each.entry(component.to_string()).or_default()
    }

    /// The merchant `authorizer` of `component`, if it ever authorized it.
    fn merchant_mut(&mut self, component: &str, authorizer: &str) -> Option<&mut Merchant> {
        self.each.get_mut(component)?.merchants.get_mut(authorizer)
    }

    /// The platform `appid` authorized (the first one, should it have authorized several).
    pub(crate) fn component_of(&self, appid: &str) -> Option<&str> {
        let mut components: Vec<&String> = self
            .each
            .iter()
            .filter(|(_, p)| p.merchants.contains_key(appid))
            .map(|(c, _)| c)
            .collect();
        components.sort();
        components.first().map(|c| c.as_str())
    }

    /// The merchant's current refresh token, while its authorization stands.
    pub(crate) fn refresh_token_of(&self, component: &str, authorizer: &str) -> Option<String> {
        let m = self.each.get(component)?.merchants.get(authorizer)?;
        m.refresh_token.clone().filter(|_| m.authorized)
    }

    /// What a merchant's access token is: `Valid((component, authorizer))` when it is one.
    pub(crate) fn check_access_token(&self, token: &str, overlap: Duration, now: Instant) -> Check<MerchantKey> {
        self.access_tokens.check(token, overlap, now)
    }

    /// Whether a merchant may send `template_id`: `Some(true)` when the simulator gave it to that
    /// merchant, `Some(false)` when it gave it to another one, `None` when it never gave it (a
    /// template the merchant added by hand in its console: the app rules decide).
    pub(crate) fn template_allowed(&self, component: &str, authorizer: &str, template_id: &str) -> Option<bool> {
        self.template_owners
            .get(template_id)
            .map(|owner| owner.as_ref().is_some_and(|(c, a)| c == component && a == authorizer))
    }

    /// The merchant deletes `template_id` from its account (in its console): later sends with it
    /// are refused (40037). Whether it was the merchant's.
    pub(crate) fn delete_template(&mut self, component: &str, authorizer: &str, template_id: &str) -> bool {
        let Some(m) = self.merchant_mut(component, authorizer) else {
            return false;
        };
        let before = m.templates.len();
        m.templates.retain(|t| t.template_id != template_id);
        let deleted = m.templates.len() < before;
        if deleted {
            self.template_owners.insert(template_id.to_string(), None);
        }
        deleted
    }

    /// One more send accepted from the merchant's account; every `every`th revokes its access
    /// tokens (`merchant_rotate_every`; 0: never).
    pub(crate) fn count_send(&mut self, component: &str, authorizer: &str, every: u64) {
        let Some(m) = self.merchant_mut(component, authorizer) else {
            return;
        };
        m.accepted += 1;
        if every > 0 && m.accepted.is_multiple_of(every) {
            self.rotate_one(component, authorizer);
        }
    }

    /// Revokes the merchant's access tokens at once (its refresh token stays).
    fn rotate_one(&mut self, component: &str, authorizer: &str) {
        self.access_tokens
            .revoke(&(component.to_string(), authorizer.to_string()));
        *self.stats.merchant_rotations.entry(component.to_string()).or_default() += 1;
    }

    /// How a push for `appid`'s account is made: the app push configuration as it is, or for a
    /// merchant, signed and encrypted (safe mode, XML) with its platform's token and key; and the
    /// appid sealed into an encrypted push (the account's own, or the platform's).
    pub(crate) fn push_config_for(&self, config: &SimConfig, appid: &str) -> (PushConfig, String) {
        let platform = self
            .component_of(appid)
            .and_then(|c| config.platforms.get(c).map(|p| (c, p)));
        match platform {
            None => (config.push.clone(), appid.to_string()),
            Some((component, p)) => (
                PushConfig {
                    token: p.token.clone(),
                    aes_key: Some(p.aes_key.clone()),
                    compatible: false,
                    format: PushFormat::Xml,
                    ..config.push.clone()
                },
                component.to_string(),
            ),
        }
    }

    /// Every merchant of every platform, by platform then appid.
    pub(crate) fn merchants(&self) -> Vec<MerchantView> {
        let mut all: Vec<MerchantView> = self
            .each
            .iter()
            .flat_map(|(component, p)| {
                p.merchants.iter().map(move |(appid, m)| MerchantView {
                    component_appid: component.clone(),
                    authorizer_appid: appid.clone(),
                    authorized: m.authorized,
                    refresh_token: m.refresh_token.clone(),
                    func_info: m.func_info.clone(),
                    auth_time: m.auth_time,
                    templates: m.templates.clone(),
                    accepted: m.accepted,
                })
            })
            .collect();
        all.sort_by(|a, b| (&a.component_appid, &a.authorizer_appid).cmp(&(&b.component_appid, &b.authorizer_appid)));
        all
    }
}
