//! The templates file (TOML) as written by people: `[[templates]]`, `[[apps]]` and `[[platforms]]`
//! (docs/interface.md §6, §10).
//! Unknown keys are refused, so a typo fails at boot instead of being silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::wechat::{Api, Miniprogram};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplatesFile {
    #[serde(default)]
    pub templates: Vec<TemplateSpec>,
    #[serde(default)]
    pub apps: Vec<AppSpec>,
    #[serde(default)]
    pub platforms: Vec<PlatformSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplateSpec {
    pub event_type: String,
    /// The account's template id; empty when `library_id` names the template instead.
    #[serde(default)]
    pub template_id: String,
    /// A library template (`template_id_short`) added to each merchant's account
    /// (docs/interface.md §10), instead of a fixed `template_id`.
    #[serde(default)]
    pub library_id: Option<String>,
    /// The library template's keyword names (`keyword_name_list`).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Restricts this template to one app (template ids belong to an account); any app when absent.
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub api: Api,
    /// Template messages: the page opened on tap (MiniJinja).
    #[serde(default)]
    pub url: Option<String>,
    /// Template messages: open a mini program instead of `url`.
    #[serde(default)]
    pub miniprogram: Option<Miniprogram>,
    /// Subscribe messages: the mini-program page (MiniJinja).
    #[serde(default)]
    pub page: Option<String>,
    #[serde(default)]
    pub miniprogram_state: Option<String>,
    #[serde(default)]
    pub lang: Option<String>,
    /// Hold until this instant (MiniJinja rendering to RFC 3339), docs/interface.md §8.
    #[serde(default)]
    pub send_at: Option<String>,
    /// Never send after this instant (MiniJinja rendering to RFC 3339): the delivery ends `expired`.
    #[serde(default)]
    pub not_after: Option<String>,
    /// `"22:00-08:00"`, Beijing time: a delivery falling due inside waits until the window ends.
    #[serde(default)]
    pub quiet_hours: Option<String>,
    /// What cancelling events refer to (MiniJinja), rendered over the delivery's event and over
    /// the cancelling event alike.
    #[serde(default)]
    pub cancel_key: Option<String>,
    /// Event types that cancel this template's waiting deliveries with the same `cancel_key`.
    #[serde(default)]
    pub cancelled_by: Vec<String>,
    /// Keyword → MiniJinja source (a table here is refused with WeChat's reason: colours).
    pub data: BTreeMap<String, DataValue>,
    /// Refused with WeChat's reason: colours are dropped since 2023-05-04.
    #[serde(default, alias = "colour", alias = "topcolor")]
    pub color: Option<toml::Value>,
    /// `"tracked"`: a subscribe message is sent only with the user's consent (docs/interface.md
    /// §12); the app's setting when absent.
    #[serde(default)]
    pub consent: Option<ConsentMode>,
    /// Extra or overriding sample event fields for the start-up render check
    /// (e.g. `sample = { data = { room = "A1" } }`).
    #[serde(default)]
    pub sample: Option<toml::Table>,
}

/// A keyword's value as written: MiniJinja source, or (refused at start-up) a table such as
/// `{ value = "…", color = "#173177" }` from the pre-2023 template-message API.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum DataValue {
    Source(String),
    Table(toml::Table),
}

/// Whether subscribe messages wait for the user's consent (docs/interface.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentMode {
    /// Sent only with a credit from the user's `accept`; without one, `suppressed`.
    Tracked,
    /// Sent as before; WeChat's 43101 is the only word on consent.
    Untracked,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub app_id: String,
    /// The environment variable holding this app's secret; never the secret itself.
    pub secret_env: String,
    /// `wxnotify receiver`: the environment variable holding this app's callback (server
    /// configuration) token.
    #[serde(default)]
    pub callback_token_env: Option<String>,
    /// `wxnotify receiver`: the environment variable holding this app's 43-character
    /// EncodingAESKey (safe and compatible modes); plaintext mode only when absent.
    #[serde(default)]
    pub aes_key_env: Option<String>,
    /// Sends a second for this app, for the whole fleet (instead of `WXNOTIFY_RATE_LIMIT`).
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// The consent mode of this app's subscribe templates that do not set their own.
    #[serde(default)]
    pub consent: Option<ConsentMode>,
}

/// A WeChat third-party platform that sends for the merchants who authorize it (docs/interface.md
/// §10). Its secrets are named, never written here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformSpec {
    pub component_appid: String,
    /// The environment variable holding the platform's AppSecret.
    pub secret_env: String,
    /// The environment variable holding the platform's message-check token.
    pub callback_token_env: String,
    /// The environment variable holding the platform's 43-character EncodingAESKey (its pushes
    /// are always encrypted).
    pub aes_key_env: String,
}
