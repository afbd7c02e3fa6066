//! The simulator's event push, as WeChat does it: after accepting a message, the result
//! (`TEMPLATESENDJOBFINISH`, `subscribe_msg_sent_event`) goes to the app's server URL after a
//! delay, signed, and encrypted when an EncodingAESKey is configured (safe mode, or compatible);
//! follower events (`subscribe`, `unsubscribe`) and subscription consent
//! (`subscribe_msg_popup_event`, `subscribe_msg_change_event`) on request. The body is XML, or JSON
//! for an app set to JSON ([`PushFormat`]). An answer other than `success` (or empty) within the
//! timeout is tried again, up to `tries` in all. Off unless `callback_url` is set.

use std::time::Duration;

use rand::Rng;

use serde::{Deserialize, Serialize};

use crate::consent::{ConsentItem, ConsentKind};
use crate::document::{self, Document};
use crate::state::Faults;
use crate::wire;

/// Where and how to push; `callback_url: None` (the default) pushes nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PushConfig {
    /// The server URL; `{appid}` is replaced by the app's id (e.g. `http://host/wechat/{appid}`).
    pub callback_url: Option<String>,
    /// The server-configuration token the pushes are signed with.
    pub token: String,
    /// The 43-character EncodingAESKey: pushes are encrypted (safe mode). `None`: plaintext.
    pub aes_key: Option<String>,
    /// With an AES key: compatible mode (plain fields beside `Encrypt`) instead of safe mode.
    pub compatible: bool,
    /// How long one try waits for the answer (WeChat: 5 s).
    pub timeout_ms: u64,
    /// Tries in all (WeChat: 3).
    pub tries: u32,
    /// Pause before trying again after an answer that was not `success`.
    pub retry_gap_ms: u64,
    /// XML (the default), or JSON as a mini program set to JSON gets it.
    pub format: PushFormat,
}

/// How a push's body is written (the message format of the app's server configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushFormat {
    /// `Content-Type: text/xml`, `<xml>…</xml>`.
    #[default]
    Xml,
    /// `Content-Type: application/json`, the same fields as one JSON object.
    Json,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            callback_url: None,
            token: String::new(),
            aes_key: None,
            compatible: false,
            timeout_ms: 5000,
            tries: 3,
            retry_gap_ms: 5000,
            format: PushFormat::Xml,
        }
    }
}

/// What a push says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PushKind {
    /// A template message's result; `status` as WeChat writes it (`success`, `failed:user block`,
    /// `failed: system failed`).
    TemplateFinish {
        msgid: i64,
        status: String,
    },
    /// A subscribe message's result (`success`, `failed:user refuse to accept the msg`, ...).
    SubscribeMsgSent {
        msgid: i64,
        template_id: String,
        status: String,
    },
    Subscribe,
    Unsubscribe,
    /// The user's answers in a subscription pop-up (`subscribe_msg_popup_event`); `create_time`
    /// (Unix seconds) is the push's `CreateTime` when set, else the time of the push.
    SubscribeMsgPopup {
        list: Vec<ConsentItem>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create_time: Option<i64>,
    },
    /// The user's refusals on the settings page (`subscribe_msg_change_event`); `create_time` as
    /// above.
    SubscribeMsgChange {
        list: Vec<ConsentItem>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create_time: Option<i64>,
    },
}

/// One push to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    pub appid: String,
    pub openid: String,
    #[serde(flatten)]
    pub kind: PushKind,
}

impl PushEvent {
    /// What the push says, pushed at `now` (Unix seconds; a consent event's own `create_time`
    /// wins).
    pub fn document(&self, now: i64) -> Document {
        let openid = self.openid.as_str();
        match &self.kind {
            PushKind::TemplateFinish { msgid, status } => document::template_finish(openid, now, *msgid, status),
            PushKind::SubscribeMsgSent {
                msgid,
                template_id,
                status,
            } => document::subscribe_msg_sent(openid, now, template_id, *msgid, status),
            PushKind::Subscribe => document::follow(openid, now, true),
            PushKind::Unsubscribe => document::follow(openid, now, false),
            PushKind::SubscribeMsgPopup { list, create_time } => {
                document::consent(openid, create_time.unwrap_or(now), ConsentKind::Popup, list)
            }
            PushKind::SubscribeMsgChange { list, create_time } => {
                document::consent(openid, create_time.unwrap_or(now), ConsentKind::Settings, list)
            }
        }
    }

    /// The plaintext XML, pushed at `created` (Unix seconds).
    pub fn xml(&self, created: i64) -> String {
        self.document(created).xml()
    }
}

/// What became of a push.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    #[serde(flatten)]
    pub event: PushEvent,
    pub tries: u32,
    /// The receiver answered `success` (or empty) to one of the tries.
    pub acknowledged: bool,
}

/// A result status drawn from the faults' mix: user block, then system failure, then (template
/// messages only) frequency limit, each its share of the draws.
pub(crate) fn draw_status(api: &str, faults: &Faults) -> &'static str {
    let x = rand::rng().random::<f64>();
    let block = faults.push_user_block_rate;
    let failed = block + faults.push_system_failed_rate;
    let freq = failed + faults.push_freq_limit_rate;
    match api {
        "subscribe" if x < block => "failed:user refuse to accept the msg",
        "subscribe" if x < failed => "failed:system failed",
        "subscribe" => "success",
        _ if x < block => "failed:user block",
        _ if x < failed => "failed: system failed",
        _ if x < freq => "failed:freq limit",
        _ => "success",
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl PushFormat {
    /// The body's `Content-Type`.
    fn content_type(self) -> &'static str {
        match self {
            PushFormat::Xml => "text/xml",
            PushFormat::Json => "application/json",
        }
    }

    /// The plaintext of `doc`.
    fn write(self, doc: &Document) -> String {
        match self {
            PushFormat::Xml => doc.xml(),
            PushFormat::Json => serde_json::Value::Object(doc.json()).to_string(),
        }
    }
}

/// The body of an encrypted push of `doc` (its plaintext `plain`, encrypted `encrypted`): safe
/// mode's envelope, or compatible mode's plain fields beside `Encrypt`.
fn encrypted_body(config: &PushConfig, doc: &Document, plain: &str, encrypted: &str) -> String {
    match (config.format, config.compatible) {
        (PushFormat::Xml, false) => wire::safe_body(encrypted),
        (PushFormat::Xml, true) => wire::compatible_body(plain, encrypted),
        (PushFormat::Json, false) => wire::json_safe_body(encrypted),
        (PushFormat::Json, true) => wire::json_compatible_body(doc, encrypted),
    }
}

/// Whom a push is for: its URL (placeholders replaced), the openid the query names (none for a
/// platform's authorization events), and the appid sealed into an encrypted body (the account's
/// own, or for a merchant's account and a platform, the platform's `component_appid`).
pub(crate) struct Target<'a> {
    pub(crate) url: String,
    pub(crate) openid: Option<&'a str>,
    pub(crate) sealed_appid: &'a str,
}

/// Signs (and encrypts) one try of `doc` for `target`; `None` when the configuration cannot make
/// it.
fn request(config: &PushConfig, target: &Target<'_>, doc: &Document) -> Option<(reqwest::Url, String)> {
    let mut url = reqwest::Url::parse(&target.url).ok()?;
    let timestamp = unix_now().to_string();
    let nonce = rand::rng().random::<u32>().to_string();
    let signature = wire::sign(&[&config.token, &timestamp, &nonce]);
    let mut query = url.query_pairs_mut();
    query
        .append_pair("signature", &signature)
        .append_pair("timestamp", &timestamp)
        .append_pair("nonce", &nonce);
    if let Some(openid) = target.openid {
        query.append_pair("openid", openid);
    }
    let plain = config.format.write(doc);
    let body = match &config.aes_key {
        None => plain,
        Some(key) => {
            let encrypted = wire::encrypt(&wire::aes_key(key)?, &plain, target.sealed_appid);
            let msg_signature = wire::sign(&[&config.token, &timestamp, &nonce, &encrypted]);
            query
                .append_pair("encrypt_type", "aes")
                .append_pair("msg_signature", &msg_signature);
            encrypted_body(config, doc, &plain, &encrypted)
        }
    };
    drop(query);
    Some((url, body))
}

/// Pushes `event` with WeChat's retries, sealing `sealed_appid` into an encrypted body, telling
/// `on_try` how each try went; returns how many tries it took and whether one was acknowledged.
pub(crate) async fn deliver(
    http: &reqwest::Client,
    config: &PushConfig,
    event: &PushEvent,
    sealed_appid: &str,
    on_try: impl Fn(bool),
) -> (u32, bool) {
    let Some(url) = &config.callback_url else {
        return (0, false);
    };
    let target = Target {
        url: url.replace("{appid}", &event.appid),
        openid: Some(&event.openid),
        sealed_appid,
    };
    // Written once: every try says the same, created at the same time.
    deliver_document(http, config, &target, &event.document(unix_now()), on_try).await
}

/// Pushes `doc` to `target` with WeChat's retries (see [`deliver`]).
pub(crate) async fn deliver_document(
    http: &reqwest::Client,
    config: &PushConfig,
    target: &Target<'_>,
    doc: &Document,
    on_try: impl Fn(bool),
) -> (u32, bool) {
    let tries = config.tries.max(1);
    for n in 1..=tries {
        let Some((url, body)) = request(config, target, doc) else {
            return (n, false);
        };
        let answer = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, config.format.content_type())
            .timeout(Duration::from_millis(config.timeout_ms))
            .body(body)
            .send()
            .await;
        let acknowledged = match answer {
            Ok(r) if r.status().is_success() => r.text().await.is_ok_and(|t| matches!(t.trim(), "success" | "")),
            _ => false,
        };
        on_try(acknowledged);
        if acknowledged {
            return (n, true);
        }
        if n < tries {
            tokio::time::sleep(Duration::from_millis(config.retry_gap_ms)).await;
        }
    }
    (tries, false)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use aes::cipher::block_padding::NoPadding;
    use aes::cipher::{BlockDecryptMut, KeyIvInit};
    use axum::extract::{Query, State};
    use base64::Engine;
    use sha1::Digest;

    use super::*;
    use crate::consent::ConsentStatus;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    /// Each try: its query, its body and its `Content-Type`.
    type Seen = Arc<Mutex<Vec<(HashMap<String, String>, String, String)>>>;

    /// A server that records every try and answers `fail` to the first `failures` of them.
    async fn server(failures: usize) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let record = move |State(seen): State<Seen>,
                           Query(q): Query<HashMap<String, String>>,
                           headers: axum::http::HeaderMap,
                           body: String| async move {
            let content_type = headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let mut seen = seen.lock().unwrap();
            seen.push((q, body, content_type));
            if seen.len() <= failures { "fail" } else { "success" }
        };
        let app = axum::Router::new()
            .route("/wechat/{app}", axum::routing::post(record))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/wechat/{{appid}}"), seen)
    }

    fn event() -> PushEvent {
        PushEvent {
            appid: "wx1111111111111111".into(),
            openid: "oUser".into(),
            kind: PushKind::TemplateFinish {
                msgid: 9_007_199_254_740_993,
                status: "success".into(),
            },
        }
    }

    #[tokio::test]
    async fn retries_until_success_and_signs_every_try() {
        let (url, seen) = server(1).await;
        let config = PushConfig {
            callback_url: Some(url),
            token: "tok123".into(),
            retry_gap_ms: 10,
            ..PushConfig::default()
        };
        let tries = Mutex::new(Vec::new());
        let outcome = deliver(&reqwest::Client::new(), &config, &event(), "wx1111111111111111", |ok| {
            tries.lock().unwrap().push(ok)
        })
        .await;
        assert_eq!(outcome, (2, true));
        assert_eq!(*tries.lock().unwrap(), vec![false, true]);
        let seen = seen.lock().unwrap();
        for (q, body, content_type) in seen.iter() {
            assert_eq!(content_type, "text/xml");
            let mut parts = [q["timestamp"].as_str(), q["nonce"].as_str(), "tok123"];
            parts.sort();
            let expected = hex::encode(sha1::Sha1::digest(parts.concat()));
            assert_eq!(q["signature"], expected);
            assert!(body.contains("<MsgID>9007199254740993</MsgID>"), "{body}");
        }
    }

    #[tokio::test]
    async fn gives_up_after_three_tries() {
        let (url, seen) = server(usize::MAX).await;
        let config = PushConfig {
            callback_url: Some(url),
            token: "tok123".into(),
            retry_gap_ms: 10,
            ..PushConfig::default()
        };
        assert_eq!(
            deliver(&reqwest::Client::new(), &config, &event(), "wx1111111111111111", |_| {}).await,
            (3, false)
        );
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn safe_mode_encrypts_with_the_appid_and_signs_the_ciphertext() {
        let (url, seen) = server(0).await;
        let config = PushConfig {
            callback_url: Some(url),
            token: "tok123".into(),
            aes_key: Some(KEY.into()),
            ..PushConfig::default()
        };
        assert_eq!(
            deliver(&reqwest::Client::new(), &config, &event(), "wx1111111111111111", |_| {}).await,
            (1, true)
        );
        let (q, body, _) = seen.lock().unwrap()[0].clone();
        assert_eq!(q["encrypt_type"], "aes");
        let b64 = body
            .split("<Encrypt><![CDATA[")
            .nth(1)
            .and_then(|r| r.split("]]>").next())
            .unwrap();
        assert!(!body.contains("MsgID"), "safe mode hides the fields");
        assert!(decrypt(&q, b64).contains("TEMPLATESENDJOBFINISH"));
    }

    /// Checks the `msg_signature` over `b64` and decrypts it; the message (its trailing appid
    /// checked).
    fn decrypt(q: &HashMap<String, String>, b64: &str) -> String {
        let mut parts = [q["timestamp"].as_str(), q["nonce"].as_str(), "tok123", b64];
        parts.sort();
        assert_eq!(q["msg_signature"], hex::encode(sha1::Sha1::digest(parts.concat())));
        let key = wire::aes_key(KEY).unwrap();
        let mut buf = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let plain = cbc::Decryptor::<aes::Aes256>::new(key[..].into(), key[..16].into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .unwrap();
        let pad = *plain.last().unwrap() as usize;
        let plain = &plain[..plain.len() - pad];
        let len = u32::from_be_bytes(plain[16..20].try_into().unwrap()) as usize;
        assert_eq!(&plain[20 + len..], b"wx1111111111111111");
        String::from_utf8(plain[20..20 + len].to_vec()).unwrap()
    }

    fn popup(items: &[(&str, ConsentStatus)], create_time: Option<i64>) -> PushEvent {
        PushEvent {
            appid: "wx1111111111111111".into(),
            openid: "oUser".into(),
            kind: PushKind::SubscribeMsgPopup {
                list: items
                    .iter()
                    .map(|(t, status)| ConsentItem {
                        template_id: t.to_string(),
                        status: *status,
                    })
                    .collect(),
                create_time,
            },
        }
    }

    /// Pushes `event` once with `config` pointed at a fresh server; what the server saw.
    async fn push_once(config: PushConfig, event: &PushEvent) -> (HashMap<String, String>, String, String) {
        let (url, seen) = server(0).await;
        let config = PushConfig {
            callback_url: Some(url),
            token: "tok123".into(),
            ..config
        };
        assert_eq!(
            deliver(&reqwest::Client::new(), &config, event, &event.appid, |_| {}).await,
            (1, true)
        );
        seen.lock().unwrap()[0].clone()
    }

    #[tokio::test]
    async fn a_popup_event_lists_each_answer_at_its_create_time() {
        let items = [("TPL_A", ConsentStatus::Accept), ("TPL_B", ConsentStatus::Reject)];
        let (_, body, _) = push_once(PushConfig::default(), &popup(&items, Some(1_610_969_440))).await;
        assert_eq!(
            body,
            "<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
             <CreateTime>1610969440</CreateTime><MsgType><![CDATA[event]]></MsgType>\
             <Event><![CDATA[subscribe_msg_popup_event]]></Event><SubscribeMsgPopupEvent>\
             <List><TemplateId><![CDATA[TPL_A]]></TemplateId><SubscribeStatusString><![CDATA[accept]]></SubscribeStatusString>\
             <PopupScene>0</PopupScene></List>\
             <List><TemplateId><![CDATA[TPL_B]]></TemplateId><SubscribeStatusString><![CDATA[reject]]></SubscribeStatusString>\
             <PopupScene>0</PopupScene></List></SubscribeMsgPopupEvent></xml>"
        );
        let change = PushEvent {
            kind: PushKind::SubscribeMsgChange {
                list: vec![ConsentItem {
                    template_id: "TPL_A".into(),
                    status: ConsentStatus::Reject,
                }],
                create_time: None,
            },
            ..popup(&[], None)
        };
        let before = unix_now();
        let (_, body, _) = push_once(PushConfig::default(), &change).await;
        assert!(
            body.contains(
                "<Event><![CDATA[subscribe_msg_change_event]]></Event><SubscribeMsgChangeEvent><List>\
                 <TemplateId><![CDATA[TPL_A]]></TemplateId><SubscribeStatusString><![CDATA[reject]]></SubscribeStatusString>\
                 </List></SubscribeMsgChangeEvent>"
            ),
            "{body}"
        );
        let created: i64 = body
            .split("<CreateTime>")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((before..=unix_now()).contains(&created), "now when not given");
    }

    fn json_config() -> PushConfig {
        PushConfig {
            format: PushFormat::Json,
            ..PushConfig::default()
        }
    }

    #[test]
    fn the_format_is_xml_unless_set_to_json() {
        let config: PushConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config.format, PushFormat::Xml);
        let config: PushConfig = serde_json::from_str(r#"{"format": "json"}"#).unwrap();
        assert_eq!(config.format, PushFormat::Json);
        assert!(serde_json::from_str::<PushConfig>(r#"{"format": "yaml"}"#).is_err());
    }

    #[tokio::test]
    async fn json_pushes_carry_the_same_fields_with_numbers_as_numbers() {
        let (_, body, content_type) = push_once(json_config(), &event()).await;
        assert_eq!(content_type, "application/json");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["Event"], "TEMPLATESENDJOBFINISH");
        assert_eq!(doc["FromUserName"], "oUser");
        assert_eq!(doc["MsgType"], "event");
        assert!(doc["CreateTime"].is_i64());
        assert_eq!(doc["MsgID"].to_string(), "9007199254740993", "exact, above 2^53");
        let one = [("TPL_A", ConsentStatus::Accept)];
        let (_, body, _) = push_once(json_config(), &popup(&one, Some(7))).await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["CreateTime"], 7);
        let list = &doc["SubscribeMsgPopupEvent"]["List"];
        assert_eq!(list["TemplateId"], "TPL_A", "one item: an object");
        assert_eq!(list["SubscribeStatusString"], "accept");
        let two = [("TPL_A", ConsentStatus::Accept), ("TPL_B", ConsentStatus::Reject)];
        let (_, body, _) = push_once(json_config(), &popup(&two, None)).await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        let list = doc["SubscribeMsgPopupEvent"]["List"]
            .as_array()
            .expect("several: an array");
        assert_eq!(list[1]["TemplateId"], "TPL_B");
    }

    #[tokio::test]
    async fn json_safe_mode_encrypts_the_json_text_and_compatible_mode_adds_the_fields() {
        let safe = PushConfig {
            aes_key: Some(KEY.into()),
            ..json_config()
        };
        let (q, body, content_type) = push_once(safe.clone(), &event()).await;
        assert_eq!(content_type, "application/json");
        assert_eq!(q["encrypt_type"], "aes");
        let envelope: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(envelope.as_object().unwrap().len(), 2, "{body}");
        assert_eq!(envelope["ToUserName"], "gh_sim");
        let inner: serde_json::Value =
            serde_json::from_str(&decrypt(&q, envelope["Encrypt"].as_str().unwrap())).unwrap();
        assert_eq!(inner["Event"], "TEMPLATESENDJOBFINISH");
        assert_eq!(inner["MsgID"].to_string(), "9007199254740993");
        let compatible = PushConfig {
            compatible: true,
            ..safe
        };
        let (q, body, _) = push_once(compatible, &event()).await;
        let envelope: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            envelope["Event"], "TEMPLATESENDJOBFINISH",
            "plain fields beside Encrypt"
        );
        assert_eq!(envelope["MsgID"].to_string(), "9007199254740993");
        let inner = decrypt(&q, envelope["Encrypt"].as_str().unwrap());
        assert!(inner.starts_with('{'), "{inner}");
    }
}
