//! The simulator's model of WeChat: apps, tokens (classic and stable, with their overlap rules),
//! accepted messages (template values cut as since 2023, see [`cut`]), template `client_msg_id`
//! dedup (subscribe sends have none), quotas, users and their subscription consent (see
//! [`crate::consent`]), and injected faults.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use wechat_rules::errcode::{
    ARGUMENT_INVALID, DAILY_QUOTA, DATA_FORMAT, INVALID_APPID, INVALID_APPSECRET, INVALID_GRANT_TYPE, INVALID_OPENID,
    INVALID_TEMPLATE_ID, MINUTE_QUOTA, REQUIRE_SUBSCRIBE, SYSTEM_BUSY, TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_MISSING,
    USER_REFUSED,
};
use wechat_rules::keywords;

use crate::consent::{ConsentItem, ConsentKind, ConsentStatus, Credits};
use crate::cut;
use crate::platform::{Check, PlatformConfig, PlatformPushConfig, Platforms};
use crate::push::{PushConfig, PushEvent, PushKind, Pushed, draw_status};

/// Faults to inject; every field optional in the `/sim/faults` body (missing = unchanged).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share of sends answered `-1 system busy`.
    pub busy_rate: f64,
    /// Share of sends answered HTTP 502.
    pub http_5xx_rate: f64,
    /// Delay of every send's answer, milliseconds; WeChat acts on the send halfway through.
    pub latency_ms: u64,
    /// Revoke the app's tokens (no overlap) after every N accepted sends; 0 = never.
    pub rotate_every: u64,
    /// Sends allowed per minute before 45011; 0 = unlimited.
    pub minute_quota: u64,
    /// Sends allowed per day before 45009; 0 = unlimited (WeChat's default is 100,000).
    pub daily_quota: u64,
    /// Share of token API calls (classic and stable) answered `-1 system busy`.
    pub token_busy_rate: f64,
    /// Delay of every token API answer (classic and stable), milliseconds: a stalled token
    /// endpoint.
    pub token_latency_ms: u64,
    /// Delay between accepting a message (or a follower event) and pushing it, milliseconds.
    pub push_delay_ms: u64,
    /// Share of pushed results that say the user blocked the account.
    pub push_user_block_rate: f64,
    /// Share of pushed results that say WeChat failed.
    pub push_system_failed_rate: f64,
    /// Share of pushed template message results that say `failed:freq limit` (subscribe results
    /// never do).
    pub push_freq_limit_rate: f64,
    /// Share of `api_component_token` calls answered `-1 system busy`.
    pub component_token_busy_rate: f64,
    /// Share of `api_authorizer_token` calls answered `-1 system busy`.
    pub authorizer_token_busy_rate: f64,
    /// Delay of every third-party platform API answer (`/cgi-bin/component/*`,
    /// `api_add_template`), milliseconds; WeChat acts on the call halfway through.
    pub platform_latency_ms: u64,
    /// A harsher WeChat than the real one: every `api_authorizer_token` issues a new refresh token
    /// and the old one stops working at once (61023).
    pub rotate_refresh_on_refresh: bool,
    /// Revoke a merchant's access tokens (no overlap) after every N sends accepted from its
    /// account; 0 = never.
    pub merchant_rotate_every: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FaultsPatch {
    pub busy_rate: Option<f64>,
    pub http_5xx_rate: Option<f64>,
    pub latency_ms: Option<u64>,
    pub rotate_every: Option<u64>,
    pub minute_quota: Option<u64>,
    pub daily_quota: Option<u64>,
    pub token_busy_rate: Option<f64>,
    pub token_latency_ms: Option<u64>,
    pub push_delay_ms: Option<u64>,
    pub push_user_block_rate: Option<f64>,
    pub push_system_failed_rate: Option<f64>,
    pub push_freq_limit_rate: Option<f64>,
    pub component_token_busy_rate: Option<f64>,
    pub authorizer_token_busy_rate: Option<f64>,
    pub platform_latency_ms: Option<u64>,
    pub rotate_refresh_on_refresh: Option<bool>,
    pub merchant_rotate_every: Option<u64>,
}

/// How the simulator starts.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// app id → secret.
    pub apps: HashMap<String, String>,
    pub token_ttl: Duration,
    /// How long a replaced token keeps working (WeChat: about 5 minutes).
    pub overlap: Duration,
    /// Known template ids; `None` accepts any (except ids starting with `INVALID`).
    pub templates: Option<HashSet<String>>,
    pub unsubscribed: HashSet<String>,
    pub refused: HashSet<String>,
    /// Calls to `/cgi-bin/token` a day before 45009 (WeChat: 2000).
    pub token_daily_quota: u64,
    pub faults: Faults,
    /// The event push (receipts, follower events); off by default.
    pub push: PushConfig,
    /// A subscribe send needs a credit from a pop-up `accept` (43101 without one), and an
    /// accepted send uses it; off by default (credits are kept all the same).
    pub enforce_consent: bool,
    /// Third-party platforms: component appid → credentials (none by default; see
    /// [`crate::platform`]). Component and merchant tokens live `token_ttl`, with `overlap`.
    pub platforms: HashMap<String, PlatformConfig>,
    /// Where the platforms' authorization events go, and the ticket period; off by default.
    pub platform_push: PlatformPushConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            apps: HashMap::from([("wx1111111111111111".to_string(), "sim-secret".to_string())]),
            token_ttl: Duration::from_secs(7200),
            overlap: Duration::from_secs(300),
            templates: None,
            unsubscribed: HashSet::new(),
            refused: HashSet::new(),
            token_daily_quota: 2000,
            faults: Faults::default(),
            push: PushConfig::default(),
            enforce_consent: false,
            platforms: HashMap::new(),
            platform_push: PlatformPushConfig::default(),
        }
    }
}

struct Token {
    value: String,
    app: String,
    issued: Instant,
    expires: Instant,
    /// Replaced by a newer token at this instant: still valid for `overlap`.
    retired: Option<Instant>,
    /// Revoked by a forced rotation: invalid at once.
    revoked: bool,
}

/// One message WeChat accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    pub msgid: i64,
    pub api: String,
    pub appid: String,
    pub touser: String,
    pub template_id: String,
    pub client_msg_id: Option<String>,
    pub data: BTreeMap<String, String>,
    pub url: Option<String>,
    pub page: Option<String>,
    /// When it was accepted, in milliseconds since the Unix epoch (tests check send times).
    #[serde(default)]
    pub accepted_at_ms: i64,
    /// The `data` keys whose value WeChat cut (template messages since 2023: at the first line
    /// break, then at 20 characters); `data` holds the cut values.
    #[serde(default)]
    pub cut: Vec<String>,
}

/// Counters for tests and people.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// `/cgi-bin/token` calls (each issues a token, when it succeeds).
    pub token_calls: u64,
    pub stable_token_calls: u64,
    pub forced_refreshes: u64,
    /// Sends that reached the token check.
    pub send_requests: u64,
    pub accepted: u64,
    /// Template resends dropped by client_msg_id dedup (answered like a success).
    pub deduplicated: u64,
    pub rotations: u64,
    /// errcode → how often it was answered (token and send APIs).
    pub errors: BTreeMap<i64, u64>,
    pub http_5xx: u64,
    /// Event push: tries made, tries not answered `success`, pushes acknowledged, pushes given up.
    pub push_tries: u64,
    pub push_tries_failed: u64,
    pub pushes_acknowledged: u64,
    pub pushes_abandoned: u64,
    /// Keyword values WeChat cut in accepted template messages (one per key).
    #[serde(default)]
    pub values_cut: u64,
    /// Subscribe sends refused (43101, also in `errors`) for want of a consent credit, with
    /// `enforce_consent` on; the `refused` users' 43101s are not counted here.
    #[serde(default)]
    pub consent_refusals: u64,
}

pub struct SimState {
    pub config: SimConfig,
    tokens: Vec<Token>,
    pub messages: Vec<Accepted>,
    dedup: HashMap<(String, String), (i64, Instant)>,
    pub stats: Stats,
    next_msgid: i64,
    forced: HashMap<String, (u64, Option<Instant>)>,
    token_calls_per_app: HashMap<String, u64>,
    minute_window: (Instant, u64),
    sends_today: u64,
    /// Every token value ever issued, for leak tests.
    pub issued: Vec<String>,
    /// Pushes to make, taken by the HTTP layer (which spawns them) after each call.
    pub outbox: Vec<PushEvent>,
    /// Pushes made, with their fate.
    pub pushed: Vec<Pushed>,
    /// Subscription consent per (appid, openid, template id).
    credits: Credits,
    /// The third-party platforms' tickets, tokens, merchants, counters and pushes.
    pub(crate) platforms: Platforms,
}

/// An answer: HTTP status and JSON body.
pub type Reply = (u16, Value);

/// A send's fields, checked.
struct SendRequest {
    touser: String,
    template_id: String,
    data: BTreeMap<String, String>,
    client_msg_id: Option<String>,
    url: Option<String>,
    page: Option<String>,
    /// The keys whose value WeChat cut (template sends).
    cut: Vec<String>,
}

fn rid() -> String {
    let mut r = rand::rng();
    format!(
        "{:08x}-{:08x}-{:08x}",
        r.random::<u32>(),
        r.random::<u32>(),
        r.random::<u32>()
    )
}

pub fn error(errcode: i64, errmsg: &str) -> Value {
    json!({ "errcode": errcode, "errmsg": format!("{errmsg} rid: {}", rid()) })
}

fn new_token_value() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(136)
        .map(char::from)
        .collect()
}

/// Whose token a send carries: an app's own, or a merchant's (`component`: its platform).
struct Sender {
    appid: String,
    component: Option<String>,
}

/// A token must be sent byte for byte; these are the errcodes for what is not.
enum TokenCheck {
    Ok(Sender),
    Missing,
    Invalid,
    Expired,
}

impl SimState {
    pub fn new(config: SimConfig) -> Self {
        Self {
            config,
            tokens: Vec::new(),
            messages: Vec::new(),
            dedup: HashMap::new(),
            stats: Stats::default(),
            // Above 2^53, like real msgids: proves nobody parses them through f64.
            next_msgid: 3_717_005_636_572_528_642,
            forced: HashMap::new(),
            token_calls_per_app: HashMap::new(),
            minute_window: (Instant::now(), 0),
            sends_today: 0,
            issued: Vec::new(),
            outbox: Vec::new(),
            pushed: Vec::new(),
            credits: Credits::default(),
            platforms: Platforms::default(),
        }
    }

    /// Queues the result of an accepted message, when pushes are on.
    fn queue_result(&mut self, api: &str, appid: &str, openid: &str, template_id: &str, msgid: i64) {
        if self.config.push.callback_url.is_none() {
            return;
        }
        let f = &self.config.faults;
        let status = draw_status(api, f).to_string();
        let kind = if api == "subscribe" {
            PushKind::SubscribeMsgSent {
                msgid,
                template_id: template_id.to_string(),
                status,
            }
        } else {
            PushKind::TemplateFinish { msgid, status }
        };
        self.outbox.push(PushEvent {
            appid: appid.to_string(),
            openid: openid.to_string(),
            kind,
        });
    }

    /// A user follows the account again (`subscribe`) or leaves it (`unsubscribe`): sends to it
    /// answer 43004 while it is away, and the event is pushed when pushes are on.
    pub fn follow(&mut self, appid: &str, openid: &str, followed: bool) {
        if followed {
            self.config.unsubscribed.remove(openid);
        } else {
            self.config.unsubscribed.insert(openid.to_string());
        }
        if self.config.push.callback_url.is_some() {
            self.outbox.push(PushEvent {
                appid: appid.to_string(),
                openid: openid.to_string(),
                kind: if followed {
                    PushKind::Subscribe
                } else {
                    PushKind::Unsubscribe
                },
            });
        }
    }

    /// The user's answers in a pop-up or on the settings page: applied to the credits, and
    /// pushed as given (one `List` each) when pushes are on.
    pub fn consent(
        &mut self,
        appid: &str,
        openid: &str,
        kind: ConsentKind,
        items: &[(&str, ConsentStatus)],
        create_time: Option<i64>,
    ) {
        let list: Vec<ConsentItem> = items
            .iter()
            .map(|(template_id, status)| ConsentItem {
                template_id: template_id.to_string(),
                status: *status,
            })
            .collect();
        for item in &list {
            self.credits.apply(appid, openid, kind, item);
        }
        if self.config.push.callback_url.is_none() || list.is_empty() {
            return;
        }
        self.outbox.push(PushEvent {
            appid: appid.to_string(),
            openid: openid.to_string(),
            kind: match kind {
                ConsentKind::Popup => PushKind::SubscribeMsgPopup { list, create_time },
                ConsentKind::Settings => PushKind::SubscribeMsgChange { list, create_time },
            },
        });
    }

    /// The subscribe messages of `template_id` the user still allows `appid` (0 while blocked).
    pub fn credits(&self, appid: &str, openid: &str, template_id: &str) -> u32 {
        self.credits.get(appid, openid, template_id)
    }

    fn count_error(&mut self, errcode: i64, errmsg: &str) -> Reply {
        *self.stats.errors.entry(errcode).or_default() += 1;
        (200, error(errcode, errmsg))
    }

    fn valid_until(&self, t: &Token) -> Instant {
        match t.retired {
            Some(r) => t.expires.min(r + self.config.overlap),
            None => t.expires,
        }
    }

    fn issue(&mut self, app: &str) -> (String, u64) {
        let now = Instant::now();
        let value = new_token_value();
        self.issued.push(value.clone());
        self.tokens.push(Token {
            value: value.clone(),
            app: app.to_string(),
            issued: now,
            expires: now + self.config.token_ttl,
            retired: None,
            revoked: false,
        });
        // Forget tokens long dead.
        let horizon = Duration::from_secs(3600);
        self.tokens.retain(|t| t.expires + horizon > now);
        (value, self.config.token_ttl.as_secs())
    }

    fn retire_current(&mut self, app: &str) {
        let now = Instant::now();
        for t in self.tokens.iter_mut().filter(|t| t.app == app && t.retired.is_none()) {
            t.retired = Some(now);
        }
    }

    /// Revokes every token of an app at once (a rotation behind the workers' back).
    pub fn rotate(&mut self, app: &str) {
        for t in self.tokens.iter_mut().filter(|t| t.app == app) {
            t.revoked = true;
        }
        self.stats.rotations += 1;
    }

    /// WeChat answers a token call `-1` as often as `token_busy_rate` says.
    fn token_busy(&mut self) -> Option<Reply> {
        (rand::rng().random::<f64>() < self.config.faults.token_busy_rate)
            .then(|| self.count_error(SYSTEM_BUSY, "system error"))
    }

    fn check_credentials(
        &mut self,
        grant_type: Option<&str>,
        appid: Option<&str>,
        secret: Option<&str>,
    ) -> Result<String, Reply> {
        if grant_type != Some("client_credential") {
            return Err(self.count_error(INVALID_GRANT_TYPE, "invalid grant_type"));
        }
        let appid = appid.unwrap_or_default();
        let Some(expected) = self.config.apps.get(appid).cloned() else {
            return Err(self.count_error(INVALID_APPID, "invalid appid"));
        };
        if secret != Some(expected.as_str()) {
            return Err(self.count_error(INVALID_APPSECRET, "invalid appsecret"));
        }
        Ok(appid.to_string())
    }

    /// `GET /cgi-bin/token`: always a new token; the previous one keeps working for `overlap`.
    pub fn classic_token(&mut self, grant_type: Option<&str>, appid: Option<&str>, secret: Option<&str>) -> Reply {
        self.stats.token_calls += 1;
        if let Some(busy) = self.token_busy() {
            return busy;
        }
        let app = match self.check_credentials(grant_type, appid, secret) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let calls = self.token_calls_per_app.entry(app.clone()).or_default();
        *calls += 1;
        if *calls > self.config.token_daily_quota {
            return self.count_error(DAILY_QUOTA, "reach max api daily quota limit");
        }
        self.retire_current(&app);
        let (token, expires_in) = self.issue(&app);
        (200, json!({ "access_token": token, "expires_in": expires_in }))
    }

    /// `POST /cgi-bin/stable_token`: the same token while valid; the next one in its last
    /// `overlap`; a forced refresh (20 a day, 30 s apart) replaces it at once.
    pub fn stable_token(&mut self, body: &Value) -> Reply {
        self.stats.stable_token_calls += 1;
        if let Some(busy) = self.token_busy() {
            return busy;
        }
        let s = |k: &str| body.get(k).and_then(Value::as_str);
        let app = match self.check_credentials(s("grant_type"), s("appid"), s("secret")) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let force = body.get("force_refresh").and_then(Value::as_bool).unwrap_or(false);
        let now = Instant::now();
        let current = self
            .tokens
            .iter()
            .filter(|t| t.app == app && t.retired.is_none() && !t.revoked && t.expires > now)
            .max_by_key(|t| t.issued)
            .map(|t| (t.value.clone(), t.expires));
        let (count, last) = self.forced.get(&app).copied().unwrap_or((0, None));
        let may_force = count < 20 && last.is_none_or(|l| now.duration_since(l) >= Duration::from_secs(30));
        let reuse = match current {
            Some((value, expires)) if !(force && may_force) && expires.duration_since(now) > self.config.overlap => {
                Some((value, expires))
            }
            // Forced but not allowed: WeChat does not refresh; it answers with the current token.
            Some((value, expires)) if force && !may_force => Some((value, expires)),
            _ => None,
        };
        if let Some((value, expires)) = reuse {
            return (
                200,
                json!({ "access_token": value, "expires_in": expires.duration_since(now).as_secs() }),
            );
        }
        if force && may_force {
            self.forced.insert(app.clone(), (count + 1, Some(now)));
            self.stats.forced_refreshes += 1;
        }
        self.retire_current(&app);
        let (token, expires_in) = self.issue(&app);
        (200, json!({ "access_token": token, "expires_in": expires_in }))
    }

    fn check_token(&self, token: Option<&str>) -> TokenCheck {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return TokenCheck::Missing;
        };
        let now = Instant::now();
        match self.tokens.iter().find(|t| t.value == token) {
            Some(t) if !t.revoked && now < self.valid_until(t) => TokenCheck::Ok(Sender {
                appid: t.app.clone(),
                component: None,
            }),
            Some(t) if !t.revoked && now >= t.expires => TokenCheck::Expired,
            Some(_) => TokenCheck::Invalid,
            None => match self.platforms.check_access_token(token, self.config.overlap, now) {
                Check::Valid((component, appid)) => TokenCheck::Ok(Sender {
                    appid,
                    component: Some(component),
                }),
                Check::Expired => TokenCheck::Expired,
                Check::Invalid => TokenCheck::Invalid,
            },
        }
    }

    /// Decides a send before latency and faults, which the HTTP layer applies.
    pub fn send(&mut self, api: &str, token: Option<&str>, body: &[u8]) -> Reply {
        match self.try_send(api, token, body) {
            Ok(reply) | Err(reply) => reply,
        }
    }

    /// Each check in WeChat's order; the first refusal is the answer (`Err`).
    fn try_send(&mut self, api: &str, token: Option<&str>, body: &[u8]) -> Result<Reply, Reply> {
        let sender = self.authorize(token)?;
        self.stats.send_requests += 1;
        if rand::rng().random::<f64>() < self.config.faults.busy_rate {
            return Err(self.count_error(SYSTEM_BUSY, "system error"));
        }
        let req = self.read_request(api, &sender, body)?;
        self.check_recipient(api, &sender.appid, &req)?;
        let now = Instant::now();
        if let Some(msgid) = self.deduplicated(&req, now) {
            self.stats.deduplicated += 1;
            return Ok((200, json!({ "errcode": 0, "errmsg": "ok", "msgid": msgid })));
        }
        self.take_quota(now)?;
        let msgid = self.accept(api, &sender, req, now);
        Ok((200, json!({ "errcode": 0, "errmsg": "ok", "msgid": msgid })))
    }

    /// The app (or merchant) whose access token this is.
    fn authorize(&mut self, token: Option<&str>) -> Result<Sender, Reply> {
        match self.check_token(token) {
            TokenCheck::Ok(sender) => Ok(sender),
            TokenCheck::Missing => Err(self.count_error(TOKEN_MISSING, "access_token missing")),
            TokenCheck::Invalid => Err(self.count_error(
                TOKEN_INVALID,
                "invalid credential, access_token is invalid or not latest",
            )),
            TokenCheck::Expired => Err(self.count_error(TOKEN_EXPIRED, "access_token expired")),
        }
    }

    /// The body's fields, each checked as WeChat checks it.
    fn read_request(&mut self, api: &str, sender: &Sender, body: &[u8]) -> Result<SendRequest, Reply> {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return Err(self.count_error(DATA_FORMAT, "data format error"));
        };
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let Some(touser) = s("touser").filter(|t| !t.is_empty()) else {
            return Err(self.count_error(INVALID_OPENID, "invalid openid"));
        };
        let template_id = s("template_id").filter(|t| !t.is_empty());
        let known = template_id.as_ref().is_some_and(|id| self.template_known(sender, id));
        let (Some(template_id), true) = (template_id, known) else {
            return Err(self.count_error(INVALID_TEMPLATE_ID, "invalid template_id"));
        };
        let (data, cut) = self.read_data(api, &body)?;
        if api == "subscribe" {
            self.check_subscribe_fields(s("miniprogram_state"), s("lang"))?;
        }
        Ok(SendRequest {
            touser,
            template_id,
            data,
            // Only template send has a client_msg_id: subscribe send ignores one, so WeChat does
            // not deduplicate subscribe messages and a resend reaches the user again.
            client_msg_id: s("client_msg_id").filter(|c| api == "template" && !c.is_empty()),
            url: s("url"),
            page: s("page"),
            cut,
        })
    }

    /// A merchant may send the templates on its account (a template the simulator gave another
    /// merchant: no); anything else follows the app rules: the configured ids, or any id not
    /// starting with `INVALID`.
    fn template_known(&self, sender: &Sender, id: &str) -> bool {
        let merchant = sender
            .component
            .as_ref()
            .and_then(|c| self.platforms.template_allowed(c, &sender.appid, id));
        match (merchant, &self.config.templates) {
            (Some(allowed), _) => allowed,
            (None, Some(set)) => set.contains(id),
            (None, None) => !id.starts_with("INVALID"),
        }
    }

    /// `data`: every keyword's value by its type's rules; `first` and `remark` are dropped silently
    /// (since 2023). A template message's values are cut first ([`cut`]); the keys cut come second.
    fn read_data(&mut self, api: &str, body: &Value) -> Result<(BTreeMap<String, String>, Vec<String>), Reply> {
        let Some(obj) = body.get("data").and_then(Value::as_object) else {
            return Err(self.count_error(DATA_FORMAT, "data format error"));
        };
        let mut data = BTreeMap::new();
        let mut cut_keys = Vec::new();
        for (k, v) in obj {
            if k == "first" || k == "remark" {
                continue;
            }
            let Some(sent) = v.get("value").and_then(Value::as_str) else {
                return Err(self.count_error(ARGUMENT_INVALID, &format!("argument invalid! data.{k}.value empty")));
            };
            let value = if api == "template" { cut::cut(sent) } else { sent };
            if keywords::check(k, value).is_err() {
                return Err(self.count_error(ARGUMENT_INVALID, &format!("argument invalid! data.{k}.value invalid")));
            }
            if value.len() != sent.len() {
                cut_keys.push(k.clone());
            }
            data.insert(k.clone(), value.to_string());
        }
        Ok((data, cut_keys))
    }

    fn check_subscribe_fields(&mut self, state: Option<String>, lang: Option<String>) -> Result<(), Reply> {
        if state.is_some_and(|s| !["developer", "trial", "formal"].contains(&s.as_str())) {
            return Err(self.count_error(ARGUMENT_INVALID, "argument invalid! miniprogram_state invalid"));
        }
        if lang.is_some_and(|l| !["zh_CN", "en_US", "zh_HK", "zh_TW"].contains(&l.as_str())) {
            return Err(self.count_error(ARGUMENT_INVALID, "argument invalid! lang invalid"));
        }
        Ok(())
    }

    /// A subscribe message to a user who refused it (or, with `enforce_consent`, has no consent
    /// credit for its template); a template message to one who left.
    fn check_recipient(&mut self, api: &str, app: &str, req: &SendRequest) -> Result<(), Reply> {
        if api == "subscribe" {
            if self.config.refused.contains(&req.touser) {
                return Err(self.count_error(USER_REFUSED, "user refuse to accept the msg"));
            }
            if self.config.enforce_consent && self.credits.get(app, &req.touser, &req.template_id) == 0 {
                self.stats.consent_refusals += 1;
                return Err(self.count_error(USER_REFUSED, "user refuse to accept the msg"));
            }
        } else if self.config.unsubscribed.contains(&req.touser) {
            return Err(self.count_error(REQUIRE_SUBSCRIBE, "require subscribe"));
        }
        Ok(())
    }

    /// The msgid of the same template send (user, client_msg_id) within 10 minutes.
    fn deduplicated(&self, req: &SendRequest, now: Instant) -> Option<i64> {
        let cmid = req.client_msg_id.as_ref()?;
        let (msgid, at) = self.dedup.get(&(req.touser.clone(), cmid.clone())).copied()?;
        (now.duration_since(at) < Duration::from_secs(600)).then_some(msgid)
    }

    /// One send of the minute's and the day's quotas (the faults set them), or 45011 / 45009.
    fn take_quota(&mut self, now: Instant) -> Result<(), Reply> {
        if now.duration_since(self.minute_window.0) >= Duration::from_secs(60) {
            self.minute_window = (now, 0);
        }
        let faults = &self.config.faults;
        if faults.minute_quota > 0 && self.minute_window.1 >= faults.minute_quota {
            return Err(self.count_error(
                MINUTE_QUOTA,
                "api minute-quota reach limit, must slower, retry next minute",
            ));
        }
        if faults.daily_quota > 0 && self.sends_today >= faults.daily_quota {
            return Err(self.count_error(DAILY_QUOTA, "reach max api daily quota limit"));
        }
        self.minute_window.1 += 1;
        self.sends_today += 1;
        Ok(())
    }

    /// Records the accepted message (and its result push), using its consent credit when they
    /// are enforced; returns its msgid.
    fn accept(&mut self, api: &str, sender: &Sender, req: SendRequest, now: Instant) -> i64 {
        let app = sender.appid.as_str();
        let msgid = self.next_msgid;
        self.next_msgid += 1;
        if api == "subscribe" && self.config.enforce_consent {
            self.credits.take(app, &req.touser, &req.template_id);
        }
        self.stats.values_cut += req.cut.len() as u64;
        if let Some(cmid) = &req.client_msg_id {
            self.dedup.insert((req.touser.clone(), cmid.clone()), (msgid, now));
        }
        self.queue_result(api, app, &req.touser, &req.template_id, msgid);
        self.messages.push(Accepted {
            msgid,
            api: api.to_string(),
            appid: app.to_string(),
            touser: req.touser,
            template_id: req.template_id,
            client_msg_id: req.client_msg_id,
            data: req.data,
            url: req.url,
            page: req.page,
            accepted_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            cut: req.cut,
        });
        self.stats.accepted += 1;
        let every = self.config.faults.rotate_every;
        match &sender.component {
            Some(c) => {
                let every = self.config.faults.merchant_rotate_every;
                self.platforms.count_send(c, app, every);
            }
            None if every > 0 && self.stats.accepted.is_multiple_of(every) => self.rotate(app),
            None => {}
        }
        msgid
    }

    pub fn patch_faults(&mut self, p: FaultsPatch) {
        let f = &mut self.config.faults;
        if let Some(v) = p.busy_rate {
            f.busy_rate = v;
        }
        if let Some(v) = p.http_5xx_rate {
            f.http_5xx_rate = v;
        }
        if let Some(v) = p.latency_ms {
            f.latency_ms = v;
        }
        if let Some(v) = p.rotate_every {
            f.rotate_every = v;
        }
        if let Some(v) = p.minute_quota {
            f.minute_quota = v;
        }
        if let Some(v) = p.daily_quota {
            f.daily_quota = v;
        }
        if let Some(v) = p.token_busy_rate {
            f.token_busy_rate = v;
        }
        if let Some(v) = p.token_latency_ms {
            f.token_latency_ms = v;
        }
        if let Some(v) = p.push_delay_ms {
            f.push_delay_ms = v;
        }
        if let Some(v) = p.push_user_block_rate {
            f.push_user_block_rate = v;
        }
        if let Some(v) = p.push_system_failed_rate {
            f.push_system_failed_rate = v;
        }
        if let Some(v) = p.push_freq_limit_rate {
            f.push_freq_limit_rate = v;
        }
        if let Some(v) = p.component_token_busy_rate {
            f.component_token_busy_rate = v;
        }
        if let Some(v) = p.authorizer_token_busy_rate {
            f.authorizer_token_busy_rate = v;
        }
        if let Some(v) = p.platform_latency_ms {
            f.platform_latency_ms = v;
        }
        if let Some(v) = p.rotate_refresh_on_refresh {
            f.rotate_refresh_on_refresh = v;
        }
        if let Some(v) = p.merchant_rotate_every {
            f.merchant_rotate_every = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::ConsentItem;

    const APP: &str = "wx1111111111111111";

    /// A simulator and an access token of its app.
    fn sim_with_token(config: SimConfig) -> (SimState, String) {
        let mut sim = SimState::new(config);
        let (_, token) = sim.classic_token(Some("client_credential"), Some(APP), Some("sim-secret"));
        let token = token["access_token"].as_str().expect("a token").to_string();
        (sim, token)
    }

    /// Sends `data` to `oU` with template `TPL` through `api`; the errcode.
    fn send_data(sim: &mut SimState, token: &str, api: &str, data: Value) -> i64 {
        let body = json!({ "touser": "oU", "template_id": "TPL", "data": data }).to_string();
        let (status, reply) = sim.send(api, Some(token), body.as_bytes());
        assert_eq!(status, 200);
        reply["errcode"].as_i64().expect("an errcode")
    }

    /// Sends the same message (same openid and client_msg_id) twice through `api`; the msgids.
    fn send_twice(api: &str) -> (SimState, Vec<i64>) {
        let mut sim = SimState::new(SimConfig::default());
        let (_, token) = sim.classic_token(
            Some("client_credential"),
            Some("wx1111111111111111"),
            Some("sim-secret"),
        );
        let token = token["access_token"].as_str().expect("a token").to_string();
        let body = json!({
            "touser": "oResend",
            "template_id": "TPL",
            "client_msg_id": "wxn-same",
            "data": { "thing1": { "value": "精洗套餐" } },
        })
        .to_string();
        let msgids = (0..2)
            .map(|_| {
                let (status, reply) = sim.send(api, Some(&token), body.as_bytes());
                assert_eq!((status, reply["errcode"].as_i64()), (200, Some(0)), "{reply}");
                reply["msgid"].as_i64().expect("a msgid")
            })
            .collect();
        (sim, msgids)
    }

    #[test]
    fn a_subscribe_resend_with_the_same_client_msg_id_is_accepted_again() {
        let (sim, msgids) = send_twice("subscribe");
        assert_ne!(msgids[0], msgids[1], "two messages");
        assert_eq!(sim.stats.accepted, 2);
        assert_eq!(sim.stats.deduplicated, 0);
        assert!(
            sim.messages.iter().all(|m| m.client_msg_id.is_none()),
            "ignored on subscribe"
        );
    }

    #[test]
    fn a_template_resend_with_the_same_client_msg_id_is_dropped() {
        let (sim, msgids) = send_twice("template");
        assert_eq!(msgids[0], msgids[1], "the first message's msgid, answered again");
        assert_eq!(sim.stats.accepted, 1);
        assert_eq!(sim.stats.deduplicated, 1);
    }

    fn enforcing() -> (SimState, String) {
        sim_with_token(SimConfig {
            enforce_consent: true,
            ..SimConfig::default()
        })
    }

    fn subscribe(sim: &mut SimState, token: &str) -> i64 {
        send_data(sim, token, "subscribe", json!({ "thing1": { "value": "精洗套餐" } }))
    }

    #[test]
    fn with_consent_enforced_a_subscribe_send_needs_and_uses_a_popup_credit() {
        let (mut sim, token) = enforcing();
        assert_eq!(subscribe(&mut sim, &token), USER_REFUSED, "no credit yet");
        sim.consent(APP, "oU", ConsentKind::Popup, &[("TPL", ConsentStatus::Accept)], None);
        sim.consent(APP, "oU", ConsentKind::Popup, &[("TPL", ConsentStatus::Accept)], None);
        assert_eq!(sim.credits(APP, "oU", "TPL"), 2);
        assert_eq!(subscribe(&mut sim, &token), 0);
        assert_eq!(sim.credits(APP, "oU", "TPL"), 1, "one credit used");
        assert_eq!(subscribe(&mut sim, &token), 0);
        assert_eq!(subscribe(&mut sim, &token), USER_REFUSED, "used up");
        assert_eq!(sim.stats.accepted, 2);
        assert_eq!(sim.stats.errors.get(&USER_REFUSED), Some(&2));
        assert_eq!(sim.stats.consent_refusals, 2);
        // Template sends need no consent.
        assert_eq!(
            send_data(&mut sim, &token, "template", json!({ "thing1": { "value": "x" } })),
            0
        );
    }

    #[test]
    fn a_settings_reject_blocks_until_the_next_popup_accept() {
        let (mut sim, token) = enforcing();
        sim.consent(APP, "oU", ConsentKind::Popup, &[("TPL", ConsentStatus::Accept)], None);
        sim.consent(
            APP,
            "oU",
            ConsentKind::Settings,
            &[("TPL", ConsentStatus::Reject)],
            None,
        );
        assert_eq!(sim.credits(APP, "oU", "TPL"), 0);
        assert_eq!(subscribe(&mut sim, &token), USER_REFUSED);
        sim.consent(
            APP,
            "oU",
            ConsentKind::Settings,
            &[("TPL", ConsentStatus::Accept)],
            None,
        );
        assert_eq!(
            subscribe(&mut sim, &token),
            USER_REFUSED,
            "a settings accept gives no credit"
        );
        sim.consent(APP, "oU", ConsentKind::Popup, &[("TPL", ConsentStatus::Reject)], None);
        assert_eq!(
            subscribe(&mut sim, &token),
            USER_REFUSED,
            "a pop-up reject changes nothing"
        );
        sim.consent(APP, "oU", ConsentKind::Popup, &[("TPL", ConsentStatus::Accept)], None);
        assert_eq!(subscribe(&mut sim, &token), 0);
    }

    #[test]
    fn a_credit_is_used_only_by_an_accepted_send() {
        let (mut sim, token) = enforcing();
        sim.config.faults.daily_quota = 1;
        sim.consent(APP, "oU", ConsentKind::Popup, &[("TPL", ConsentStatus::Accept)], None);
        sim.consent(APP, "oU", ConsentKind::Popup, &[("TPL", ConsentStatus::Accept)], None);
        assert_eq!(subscribe(&mut sim, &token), 0);
        assert_eq!(subscribe(&mut sim, &token), DAILY_QUOTA);
        assert_eq!(sim.credits(APP, "oU", "TPL"), 1, "kept: the send was refused");
        let bad = send_data(
            &mut sim,
            &token,
            "subscribe",
            json!({ "thing1": { "value": "x".repeat(21) } }),
        );
        assert_eq!(bad, ARGUMENT_INVALID);
        assert_eq!(sim.credits(APP, "oU", "TPL"), 1);
    }

    #[test]
    fn refused_users_get_43101_with_or_without_consent_enforced() {
        for enforce in [false, true] {
            let (mut sim, token) = sim_with_token(SimConfig {
                enforce_consent: enforce,
                refused: HashSet::from(["oU".to_string()]),
                ..SimConfig::default()
            });
            sim.consent(APP, "oU", ConsentKind::Popup, &[("TPL", ConsentStatus::Accept)], None);
            assert_eq!(subscribe(&mut sim, &token), USER_REFUSED);
            assert_eq!(sim.stats.consent_refusals, 0, "not for want of consent");
        }
        let (mut sim, token) = sim_with_token(SimConfig::default());
        assert_eq!(subscribe(&mut sim, &token), 0, "not enforced by default");
    }

    #[test]
    fn consent_is_pushed_as_given_when_pushes_are_on() {
        let (mut sim, _) = sim_with_token(SimConfig::default());
        sim.consent(APP, "oU", ConsentKind::Popup, &[("TPL", ConsentStatus::Accept)], None);
        assert!(sim.outbox.is_empty(), "pushes are off");
        sim.config.push.callback_url = Some("http://127.0.0.1:9/wechat/{appid}".into());
        let items = [("TPL_A", ConsentStatus::Accept), ("TPL_B", ConsentStatus::Reject)];
        sim.consent(APP, "oU", ConsentKind::Popup, &items, Some(1_610_969_440));
        sim.consent(APP, "oU", ConsentKind::Settings, &items[1..], None);
        let item = |t: &str, status| ConsentItem {
            template_id: t.into(),
            status,
        };
        let kinds: Vec<PushKind> = sim.outbox.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                PushKind::SubscribeMsgPopup {
                    list: vec![
                        item("TPL_A", ConsentStatus::Accept),
                        item("TPL_B", ConsentStatus::Reject)
                    ],
                    create_time: Some(1_610_969_440),
                },
                PushKind::SubscribeMsgChange {
                    list: vec![item("TPL_B", ConsentStatus::Reject)],
                    create_time: None,
                },
            ]
        );
        assert!(sim.outbox.iter().all(|e| e.appid == APP && e.openid == "oU"));
    }

    #[test]
    fn template_values_are_cut_at_a_line_break_then_at_twenty_characters() {
        let (mut sim, token) = sim_with_token(SimConfig::default());
        let long = "精".repeat(30);
        let data = json!({
            "first": { "value": "dropped" },
            "thing1": { "value": long },
            "thing2": { "value": "徐汇店\n请提前十分钟到达" },
            "time3": { "value": "2026年11月22日 14:00\r\n(周日)" },
            "character_string4": { "value": "B-10023" },
        });
        assert_eq!(send_data(&mut sim, &token, "template", data), 0);
        let m = sim.messages.last().expect("accepted");
        assert_eq!(m.data["thing1"], "精".repeat(20));
        assert_eq!(m.data["thing2"], "徐汇店");
        assert_eq!(m.data["time3"], "2026年11月22日 14:00");
        assert_eq!(m.data["character_string4"], "B-10023");
        assert!(!m.data.contains_key("first"));
        assert_eq!(m.cut, vec!["thing1", "thing2", "time3"]);
        assert_eq!(sim.stats.values_cut, 3);
        let reply = serde_json::to_value(m).unwrap();
        assert_eq!(reply["cut"], json!(["thing1", "thing2", "time3"]), "in the message log");
    }

    #[test]
    fn a_cut_template_value_that_breaks_its_type_is_still_refused() {
        let (mut sim, token) = sim_with_token(SimConfig::default());
        let range = json!({ "time1": { "value": "2026-11-22 14:00 ~ 2026-11-22 16:00" } });
        assert_eq!(send_data(&mut sim, &token, "template", range), ARGUMENT_INVALID);
        let empty = json!({ "thing1": { "value": "\n第二行" } });
        assert_eq!(send_data(&mut sim, &token, "template", empty), ARGUMENT_INVALID);
        assert_eq!(sim.stats.accepted, 0);
        assert_eq!(sim.stats.values_cut, 0);
    }

    #[test]
    fn subscribe_values_are_checked_as_before_and_never_cut() {
        let (mut sim, token) = sim_with_token(SimConfig::default());
        let long = json!({ "thing1": { "value": "精".repeat(21) } });
        assert_eq!(send_data(&mut sim, &token, "subscribe", long), ARGUMENT_INVALID);
        let lines = json!({ "thing1": { "value": "第一行\n第二行" } });
        assert_eq!(send_data(&mut sim, &token, "subscribe", lines), 0);
        let m = sim.messages.last().expect("accepted");
        assert_eq!(m.data["thing1"], "第一行\n第二行");
        assert!(m.cut.is_empty());
        assert_eq!(sim.stats.values_cut, 0);
    }

    #[test]
    fn freq_limit_results_are_pushed_for_template_messages_only() {
        let (mut sim, token) = sim_with_token(SimConfig::default());
        sim.config.push.callback_url = Some("http://127.0.0.1:9/wechat/{appid}".into());
        sim.patch_faults(FaultsPatch {
            push_freq_limit_rate: Some(1.0),
            ..FaultsPatch::default()
        });
        let data = json!({ "thing1": { "value": "x" } });
        assert_eq!(send_data(&mut sim, &token, "template", data.clone()), 0);
        assert_eq!(send_data(&mut sim, &token, "subscribe", data), 0);
        let statuses: Vec<&str> = sim
            .outbox
            .iter()
            .map(|e| match &e.kind {
                PushKind::TemplateFinish { status, .. } | PushKind::SubscribeMsgSent { status, .. } => status.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(statuses, vec!["failed:freq limit", "success"]);
    }
}
