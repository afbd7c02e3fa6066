//! WeChat's third-party platform endpoints, as the simulator answers them (`WECHAT_API.md`,
//! "Third-party platform"): each takes the query's token and the JSON body and answers
//! `{errcode, errmsg}` (HTTP 200) on failure. Latency is the HTTP layer's; the `-1` faults are
//! here.
//!
//! Errcodes: 47001 a body that is not JSON; 40013 a `component_appid` that is unknown or not the
//! token's platform; 40125 a wrong secret; 41001 / 40001 / 42001 a missing / invalid / expired
//! `component_access_token` (or, on `api_add_template`, merchant `access_token`: an app's own
//! token is not one); 61005 / 61006 an expired / invalid ticket; 61009 / 61010 an invalid (or
//! used) / expired authorization code; 61003 a merchant that never authorized the platform;
//! 61023 a refresh token that is not the merchant's current one; 47003 a `count` outside
//! 1..=500; 40037 no `template_id_short`; 45026 a 26th template.

use std::time::Instant;

use rand::Rng;
use serde_json::{Value, json};
use wechat_rules::errcode::{
    ARGUMENT_INVALID, AUTH_CODE_EXPIRED, AUTH_CODE_INVALID, COMPONENT_NOT_AUTHORIZED, DATA_FORMAT, INVALID_APPID,
    INVALID_APPSECRET, INVALID_TEMPLATE_ID, REFRESH_TOKEN_INVALID, SYSTEM_BUSY, TOKEN_EXPIRED, TOKEN_INVALID,
    TOKEN_MISSING, VERIFY_TICKET_EXPIRED,
};

use super::lease::{Check, random_value};
use super::ticket::TICKET_TTL;
use super::{MerchantKey, PRE_AUTH_TTL, Platforms};
use crate::state::{Reply, SimConfig, error};

/// The most merchants one `api_get_authorizer_list` call lists.
const MAX_LIST: u64 = 500;

/// `body[key]` as text, empty when absent.
fn text<'a>(body: &'a Value, key: &str) -> &'a str {
    body.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// `{errcode: 0, errmsg: "ok"}` with `fields` beside.
fn ok(mut fields: Value) -> Reply {
    if let Some(map) = fields.as_object_mut() {
        map.insert("errcode".into(), 0.into());
        map.insert("errmsg".into(), "ok".into());
    }
    (200, fields)
}

/// WeChat's platform endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `/cgi-bin/component/api_start_push_ticket`
    StartPushTicket,
    /// `/cgi-bin/component/api_component_token`
    ComponentToken,
    /// `/cgi-bin/component/api_create_preauthcode`
    CreatePreauthcode,
    /// `/cgi-bin/component/api_query_auth`
    QueryAuth,
    /// `/cgi-bin/component/api_authorizer_token`
    AuthorizerToken,
    /// `/cgi-bin/component/api_get_authorizer_list`
    AuthorizerList,
    /// `/cgi-bin/template/api_add_template` (with a merchant's `access_token`)
    AddTemplate,
}

impl Platforms {
    /// Answers a call of `api` with the query's token (`component_access_token`, or for
    /// `api_add_template` the merchant's `access_token`) and the body.
    pub(crate) fn call(&mut self, config: &SimConfig, api: Api, token: Option<&str>, body: &[u8]) -> Reply {
        let answer = match api {
            Api::StartPushTicket => self.start_push_ticket(config, body),
            Api::ComponentToken => self.component_token(config, body),
            Api::CreatePreauthcode => self.create_preauthcode(config, token, body),
            Api::QueryAuth => self.query_auth(config, token, body),
            Api::AuthorizerToken => self.authorizer_token(config, token, body),
            Api::AuthorizerList => self.authorizer_list(config, token, body),
            Api::AddTemplate => self.add_template(config, token, body),
        };
        match answer {
            Ok(reply) | Err(reply) => reply,
        }
    }

    /// Counts and answers `errcode`.
    fn fail(&mut self, errcode: i64, errmsg: &str) -> Reply {
        *self.stats.errors.entry(errcode).or_default() += 1;
        (200, error(errcode, errmsg))
    }

    /// The JSON body, or 47001.
    fn json_body(&mut self, body: &[u8]) -> Result<Value, Reply> {
        serde_json::from_slice::<Value>(body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| self.fail(DATA_FORMAT, "data format error"))
    }

    /// `-1` as often as `rate` says.
    fn busy(&mut self, rate: f64) -> Result<(), Reply> {
        if rand::rng().random::<f64>() < rate {
            return Err(self.fail(SYSTEM_BUSY, "system error"));
        }
        Ok(())
    }

    /// The platform the body names, its secret (under `secret_key`) checked.
    fn credentials(&mut self, config: &SimConfig, body: &Value, secret_key: &str) -> Result<String, Reply> {
        let component = text(body, "component_appid");
        let Some(platform) = config.platforms.get(component) else {
            return Err(self.fail(INVALID_APPID, "invalid appid"));
        };
        if text(body, secret_key) != platform.secret {
            return Err(self.fail(INVALID_APPSECRET, "invalid appsecret"));
        }
        Ok(component.to_string())
    }

    /// The platform whose `component_access_token` this is; the body must name it.
    fn component(&mut self, config: &SimConfig, token: Option<&str>, body: &Value) -> Result<String, Reply> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(self.fail(TOKEN_MISSING, "component_access_token missing"));
        };
        match self.component_tokens.check(token, config.overlap, Instant::now()) {
            Check::Valid(c) if c == text(body, "component_appid") => Ok(c),
            Check::Valid(_) => Err(self.fail(INVALID_APPID, "invalid appid")),
            Check::Expired => Err(self.fail(TOKEN_EXPIRED, "component_access_token expired")),
            Check::Invalid => Err(self.fail(
                TOKEN_INVALID,
                "invalid credential, access_token is invalid or not latest",
            )),
        }
    }

    /// `api_start_push_ticket`: a ticket pushed now (when the platform's URL is set).
    fn start_push_ticket(&mut self, config: &SimConfig, body: &[u8]) -> Result<Reply, Reply> {
        let body = self.json_body(body)?;
        let named = text(&body, "component_appid").to_string();
        *self.stats.start_push_ticket_calls.entry(named).or_default() += 1;
        let component = self.credentials(config, &body, "component_secret")?;
        if config.platform_push.callback_url.is_some() {
            self.push_ticket(config, &component);
        }
        Ok(ok(json!({})))
    }

    /// `api_component_token`: a new component token for a valid ticket (the last one keeps
    /// working for the overlap).
    fn component_token(&mut self, config: &SimConfig, body: &[u8]) -> Result<Reply, Reply> {
        let body = self.json_body(body)?;
        let named = text(&body, "component_appid").to_string();
        *self.stats.component_token_calls.entry(named).or_default() += 1;
        self.busy(config.faults.component_token_busy_rate)?;
        let component = self.credentials(config, &body, "component_appsecret")?;
        let now = Instant::now();
        let ticket = text(&body, "component_verify_ticket");
        if let Err(code) = self.platform_mut(&component).tickets.check(ticket, TICKET_TTL, now) {
            let what = if code == VERIFY_TICKET_EXPIRED {
                "expired"
            } else {
                "invalid"
            };
            return Err(self.fail(code, &format!("component_verify_ticket {what}")));
        }
        let token = self.component_tokens.issue(&component, config.token_ttl, now);
        self.issued.push(token.clone());
        Ok((
            200,
            json!({ "component_access_token": token, "expires_in": config.token_ttl.as_secs() }),
        ))
    }

    /// `api_create_preauthcode`: a pre-auth code for the QR-code page.
    fn create_preauthcode(&mut self, config: &SimConfig, token: Option<&str>, body: &[u8]) -> Result<Reply, Reply> {
        let body = self.json_body(body)?;
        self.stats.preauthcode_calls += 1;
        let component = self.component(config, token, &body)?;
        let now = Instant::now();
        let code = format!("preauthcode@@@{}", random_value(40));
        let codes = &mut self.platform_mut(&component).pre_auth_codes;
        codes.retain(|_, expires| *expires > now);
        codes.insert(code.clone(), now + PRE_AUTH_TTL);
        Ok(ok(
            json!({ "pre_auth_code": code, "expires_in": PRE_AUTH_TTL.as_secs() }),
        ))
    }

    /// `api_query_auth`: an authorization code, once, for the merchant's first tokens; the new
    /// refresh token replaces the merchant's last one, and its older access tokens stop working.
    fn query_auth(&mut self, config: &SimConfig, token: Option<&str>, body: &[u8]) -> Result<Reply, Reply> {
        let body = self.json_body(body)?;
        self.stats.query_auth_calls += 1;
        let component = self.component(config, token, &body)?;
        let now = Instant::now();
        let platform = self.platform_mut(&component);
        let Some(code) = platform.auth_codes.remove(text(&body, "authorization_code")) else {
            return Err(self.fail(AUTH_CODE_INVALID, "invalid authorization code"));
        };
        if now >= code.expires {
            return Err(self.fail(AUTH_CODE_EXPIRED, "authorization code expired"));
        }
        let Some(m) = platform.merchants.get_mut(&code.authorizer).filter(|m| m.authorized) else {
            return Err(self.fail(AUTH_CODE_INVALID, "invalid authorization code"));
        };
        m.func_info = code.func_info.clone();
        let refresh = m.new_refresh_token();
        let key: MerchantKey = (component, code.authorizer.clone());
        self.access_tokens.revoke(&key);
        let access = self.access_tokens.issue(&key, config.token_ttl, now);
        self.issued.extend([access.clone(), refresh.clone()]);
        let func_info: Vec<Value> = code
            .func_info
            .iter()
            .map(|id| json!({ "funcscope_category": { "id": id } }))
            .collect();
        Ok(ok(json!({ "authorization_info": {
            "authorizer_appid": code.authorizer,
            "authorizer_access_token": access,
            "expires_in": config.token_ttl.as_secs(),
            "authorizer_refresh_token": refresh,
            "func_info": func_info,
        } })))
    }

    /// `api_authorizer_token`: a new access token for the merchant's current refresh token (61023
    /// for any other); the same refresh token back, or a new one with `rotate_refresh_on_refresh`.
    fn authorizer_token(&mut self, config: &SimConfig, token: Option<&str>, body: &[u8]) -> Result<Reply, Reply> {
        let body = self.json_body(body)?;
        let authorizer = text(&body, "authorizer_appid").to_string();
        self.stats.authorizer_token_calls += 1;
        *self
            .stats
            .authorizer_token_calls_by_merchant
            .entry(authorizer.clone())
            .or_default() += 1;
        self.busy(config.faults.authorizer_token_busy_rate)?;
        let component = self.component(config, token, &body)?;
        let Some(m) = self.merchant_mut(&component, &authorizer) else {
            return Err(self.fail(COMPONENT_NOT_AUTHORIZED, "component is not authorized by this account"));
        };
        let given = text(&body, "authorizer_refresh_token");
        if !m.refresh_token_is(given) {
            self.stats.refresh_token_invalid += 1;
            return Err(self.fail(REFRESH_TOKEN_INVALID, "refresh_token is invalid"));
        }
        let refresh = if config.faults.rotate_refresh_on_refresh {
            let fresh = m.new_refresh_token();
            self.stats.refresh_tokens_rotated += 1;
            self.issued.push(fresh.clone());
            fresh
        } else {
            given.to_string()
        };
        let access = self
            .access_tokens
            .issue(&(component, authorizer), config.token_ttl, Instant::now());
        self.issued.push(access.clone());
        Ok(ok(json!({
            "authorizer_access_token": access,
            "expires_in": config.token_ttl.as_secs(),
            "authorizer_refresh_token": refresh,
        })))
    }

    /// `api_get_authorizer_list`: the authorized merchants, by appid, with their current refresh
    /// tokens (empty: authorized, no code exchanged yet).
    fn authorizer_list(&mut self, config: &SimConfig, token: Option<&str>, body: &[u8]) -> Result<Reply, Reply> {
        let body = self.json_body(body)?;
        self.stats.authorizer_list_calls += 1;
        let component = self.component(config, token, &body)?;
        let offset = body.get("offset").and_then(Value::as_u64).unwrap_or(0);
        let count = body.get("count").and_then(Value::as_u64).unwrap_or(0);
        if !(1..=MAX_LIST).contains(&count) {
            return Err(self.fail(ARGUMENT_INVALID, "argument invalid! count invalid"));
        }
        let authorized: Vec<Value> = self
            .platform_mut(&component)
            .merchants
            .iter()
            .filter(|(_, m)| m.authorized)
            .map(|(appid, m)| {
                json!({
                    "authorizer_appid": appid,
                    "refresh_token": m.refresh_token.clone().unwrap_or_default(),
                    "auth_time": m.auth_time,
                })
            })
            .collect();
        let total = authorized.len();
        let page: Vec<Value> = authorized
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(count).unwrap_or(usize::MAX))
            .collect();
        Ok(ok(json!({ "total_count": total, "list": page })))
    }

    /// `api_add_template` with a merchant's access token: a new template on its account (every
    /// call adds one), or 45026 when it holds 25.
    fn add_template(&mut self, config: &SimConfig, token: Option<&str>, body: &[u8]) -> Result<Reply, Reply> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(self.fail(TOKEN_MISSING, "access_token missing"));
        };
        let key = match self.access_tokens.check(token, config.overlap, Instant::now()) {
            Check::Valid(key) => key,
            Check::Expired => return Err(self.fail(TOKEN_EXPIRED, "access_token expired")),
            Check::Invalid => {
                return Err(self.fail(
                    TOKEN_INVALID,
                    "invalid credential, access_token is invalid or not latest",
                ));
            }
        };
        let body = self.json_body(body)?;
        let library = text(&body, "template_id_short").to_string();
        let keywords = body.get("keyword_name_list").map_or(Some(Vec::new()), |list| {
            list.as_array()?
                .iter()
                .map(|k| k.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
        });
        let Some(keywords) = keywords else {
            return Err(self.fail(DATA_FORMAT, "data format error"));
        };
        if library.is_empty() {
            return Err(self.fail(INVALID_TEMPLATE_ID, "invalid template_id_short"));
        }
        self.add_template_for(&key, &library, keywords, true)
            .map(|id| ok(json!({ "template_id": id })))
            .map_err(|code| self.fail(code, "template size out of limit"))
    }

    /// Adds `library` to the merchant's account (counted as an API call when `counted`); the new
    /// template id, or 45026 (61003 for a merchant that never authorized the platform).
    pub(crate) fn add_template_for(
        &mut self,
        key: &MerchantKey,
        library: &str,
        keywords: Vec<String>,
        counted: bool,
    ) -> Result<String, i64> {
        let (component, authorizer) = key;
        if counted {
            *self
                .stats
                .add_template_calls
                .entry(authorizer.clone())
                .or_default()
                .entry(library.to_string())
                .or_default() += 1;
        }
        let Some(m) = self.merchant_mut(component, authorizer) else {
            return Err(COMPONENT_NOT_AUTHORIZED);
        };
        let id = m.add_template(authorizer, library, keywords)?;
        self.template_owners.insert(id.clone(), Some(key.clone()));
        Ok(id)
    }
}
