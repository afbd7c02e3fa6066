//! What happens outside the API: a merchant scans the QR-code page and authorizes a platform (an
//! authorization code, pushed `authorized`, or `updateauthorized` when it already had), or revokes
//! it (pushed `unauthorized`; its tokens and refresh token stop working at once); and what a test
//! does: revoke a merchant's access tokens behind the workers' back, push or expire tickets.
//!
//! An authorization changes no token by itself: the merchant's refresh token and access tokens
//! are replaced when the new code is exchanged (`api_query_auth`), so a re-authorization whose
//! code is never exchanged leaves the old ones working.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::event::{Authorization, PlatformEvent, PlatformInfo};
use super::lease::random_value;
use super::merchant::DEFAULT_FUNC_INFO;
use super::{AUTH_CODE_TTL, AuthCode, Platform, Platforms};
use crate::push::unix_now;
use crate::state::SimConfig;

/// A merchant scans and authorizes (`POST /sim/platform/authorize` and `/reauthorize`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorize {
    pub component_appid: String,
    pub authorizer_appid: String,
    /// The permission sets granted (default: message management and a few more, see
    /// `merchant::DEFAULT_FUNC_INFO`).
    #[serde(default)]
    pub func_info: Option<Vec<u32>>,
    /// The pre-auth code of the page scanned (from `api_create_preauthcode`; used up). `None`: the
    /// simulator makes one up.
    #[serde(default)]
    pub pre_auth_code: Option<String>,
}

impl Authorize {
    /// `authorizer` authorizes `component` with the default permissions.
    pub fn new(component: &str, authorizer: &str) -> Self {
        Self {
            component_appid: component.to_string(),
            authorizer_appid: authorizer.to_string(),
            func_info: None,
            pre_auth_code: None,
        }
    }
}

/// What an authorization gave (and pushed when the platform's URL is set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorized {
    /// `authorized`, or `updateauthorized` for a merchant already authorized.
    pub info_type: String,
    #[serde(flatten)]
    pub authorization: Authorization,
}

/// Why `req` cannot be an authorization of a platform the simulator knows, if it cannot.
fn check_names(config: &SimConfig, req: &Authorize) -> Result<(), String> {
    let (component, authorizer) = (&req.component_appid, &req.authorizer_appid);
    if !config.platforms.contains_key(component) {
        return Err(format!("unknown component_appid {component:?}"));
    }
    if authorizer.is_empty() || config.apps.contains_key(authorizer) {
        return Err(format!(
            "authorizer_appid {authorizer:?} is empty or an app the simulator knows"
        ));
    }
    Ok(())
}

impl Platform {
    /// The pre-auth code of the page scanned, used up (`None`: one made up for the occasion).
    fn take_pre_auth_code(&mut self, code: Option<&str>, now: Instant) -> Result<String, String> {
        let Some(code) = code else {
            return Ok(format!("preauthcode@@@{}", random_value(40)));
        };
        match self.pre_auth_codes.remove(code) {
            Some(expires) if expires > now => Ok(code.to_string()),
            _ => Err(format!("pre_auth_code {code:?} is unknown, used or expired")),
        }
    }

    /// A new authorization code for `authorizer`, granting `func_info` once exchanged.
    fn new_code(
        &mut self,
        authorizer: &str,
        func_info: Vec<u32>,
        pre_auth_code: String,
        now: Instant,
    ) -> Authorization {
        let code = format!("queryauthcode@@@{}", random_value(64));
        let auth = AuthCode {
            authorizer: authorizer.to_string(),
            expires: now + AUTH_CODE_TTL,
            func_info,
        };
        self.auth_codes.insert(code.clone(), auth);
        Authorization {
            authorizer_appid: authorizer.to_string(),
            authorization_code: code,
            authorization_code_expired_time: unix_now() + AUTH_CODE_TTL.as_secs() as i64,
            pre_auth_code,
        }
    }
}

impl Platforms {
    /// The merchant authorizes the platform (`updateauthorized` when it is authorized already);
    /// with `again`, only a merchant that revoked it.
    pub(crate) fn authorize(&mut self, config: &SimConfig, req: &Authorize, again: bool) -> Result<Authorized, String> {
        check_names(config, req)?;
        let (component, authorizer) = (req.component_appid.as_str(), req.authorizer_appid.as_str());
        let now = Instant::now();
        let platform = self.platform_mut(component);
        let was = platform.merchants.get(authorizer).map(|m| m.authorized);
        match (again, was) {
            (true, None) => return Err(format!("{authorizer} never authorized {component}: authorize it")),
            (true, Some(true)) => return Err(format!("{authorizer} is authorized: revoke it first")),
            _ => {}
        }
        let pre_auth_code = platform.take_pre_auth_code(req.pre_auth_code.as_deref(), now)?;
        let merchant = platform.merchants.entry(authorizer.to_string()).or_default();
        merchant.authorized = true;
        merchant.auth_time = unix_now();
        let func_info = req.func_info.clone().unwrap_or_else(|| DEFAULT_FUNC_INFO.to_vec());
        let authorization = platform.new_code(authorizer, func_info, pre_auth_code, now);
        let (info_type, info) = match was {
            Some(true) => (
                "updateauthorized",
                PlatformInfo::UpdateAuthorized(authorization.clone()),
            ),
            _ => ("authorized", PlatformInfo::Authorized(authorization.clone())),
        };
        self.queue(config, component, info);
        Ok(Authorized {
            info_type: info_type.to_string(),
            authorization,
        })
    }

    /// The merchant revokes its authorization: its tokens, refresh token and unused codes stop
    /// working at once; pushed `unauthorized`.
    pub(crate) fn revoke(&mut self, config: &SimConfig, component: &str, authorizer: &str) -> Result<(), String> {
        let platform = self.platform_mut(component);
        let Some(m) = platform.merchants.get_mut(authorizer).filter(|m| m.authorized) else {
            return Err(format!("{authorizer} has not authorized {component}"));
        };
        m.revoke();
        platform.auth_codes.retain(|_, c| c.authorizer != authorizer);
        self.access_tokens
            .revoke(&(component.to_string(), authorizer.to_string()));
        let info = PlatformInfo::Unauthorized {
            authorizer_appid: authorizer.to_string(),
        };
        self.queue(config, component, info);
        Ok(())
    }

    /// Revokes the access tokens (not the refresh tokens) of the authorized merchants named
    /// (`None`: every platform, every merchant); the merchants rotated.
    pub(crate) fn rotate(&mut self, component: Option<&str>, authorizer: Option<&str>) -> Vec<String> {
        let mut named: Vec<(String, String)> = self
            .each
            .iter()
            .filter(|(c, _)| component.is_none_or(|want| want == c.as_str()))
            .flat_map(|(c, p)| {
                p.merchants
                    .iter()
                    .filter(|(a, m)| m.authorized && authorizer.is_none_or(|want| want == a.as_str()))
                    .map(move |(a, _)| (c.clone(), a.clone()))
            })
            .collect();
        named.sort();
        for (c, a) in &named {
            self.rotate_one(c, a);
        }
        named.into_iter().map(|(_, a)| a).collect()
    }

    /// A new verify ticket for `component`, pushed when the platform's URL is set; `None` for a
    /// platform the simulator does not know.
    pub(crate) fn push_ticket(&mut self, config: &SimConfig, component: &str) -> Option<String> {
        config.platforms.get(component)?;
        let ticket = self.platform_mut(component).tickets.issue(Instant::now());
        self.issued.push(ticket.clone());
        *self.stats.tickets_issued.entry(component.to_string()).or_default() += 1;
        let info = PlatformInfo::ComponentVerifyTicket { ticket: ticket.clone() };
        self.queue(config, component, info);
        Some(ticket)
    }

    /// Every ticket `component` was given expires (61005) until the next push; `false` for a
    /// platform the simulator does not know.
    pub(crate) fn expire_tickets(&mut self, config: &SimConfig, component: &str) -> bool {
        if !config.platforms.contains_key(component) {
            return false;
        }
        self.platform_mut(component).tickets.expire_all();
        true
    }

    /// Queues a push to `component` when the platforms' URL is set.
    fn queue(&mut self, config: &SimConfig, component: &str, info: PlatformInfo) {
        if config.platform_push.callback_url.is_some() {
            self.outbox.push(PlatformEvent {
                component_appid: component.to_string(),
                info,
            });
        }
    }
}
