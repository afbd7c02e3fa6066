//! The simulator's event push, as WeChat does it: after accepting a message, the result
//! (`TEMPLATESENDJOBFINISH`, `subscribe_msg_sent_event`) goes to the app's server URL after a
//! delay, signed, and encrypted when an EncodingAESKey is configured (safe mode, or compatible);
//! follower events (`subscribe`, `unsubscribe`) on request. An answer other than `success` (or
//! empty) within the timeout is tried again, up to `tries` in all. Off unless `callback_url` is set.

use std::time::Duration;

use rand::Rng;

use serde::{Deserialize, Serialize};

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
    /// The plaintext XML, created at `created` (Unix seconds).
    pub fn xml(&self, created: i64) -> String {
        match &self.kind {
            PushKind::TemplateFinish { msgid, status } => wire::template_finish(&self.openid, created, *msgid, status),
            PushKind::SubscribeMsgSent {
                msgid,
                template_id,
                status,
            } => wire::subscribe_msg_sent(&self.openid, created, template_id, *msgid, status),
            PushKind::Subscribe => wire::follow(&self.openid, created, true),
            PushKind::Unsubscribe => wire::follow(&self.openid, created, false),
        }
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

/// A result status drawn from the configured mix.
pub(crate) fn draw_status(api: &str, user_block_rate: f64, system_failed_rate: f64) -> &'static str {
    let x = rand::rng().random::<f64>();
    match (x < user_block_rate, x < user_block_rate + system_failed_rate, api) {
        (true, _, "subscribe") => "failed:user refuse to accept the msg",
        (true, _, _) => "failed:user block",
        (false, true, "subscribe") => "failed:system failed",
        (false, true, _) => "failed: system failed",
        _ => "success",
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Signs (and encrypts) one try of `event`; `None` when the configuration cannot make it.
fn request(config: &PushConfig, url: &str, event: &PushEvent, xml: &str) -> Option<(reqwest::Url, String)> {
    let mut url = reqwest::Url::parse(&url.replace("{appid}", &event.appid)).ok()?;
    let timestamp = unix_now().to_string();
    let nonce = rand::rng().random::<u32>().to_string();
    let signature = wire::sign(&[&config.token, &timestamp, &nonce]);
    let mut query = url.query_pairs_mut();
    query
        .append_pair("signature", &signature)
        .append_pair("timestamp", &timestamp)
        .append_pair("nonce", &nonce)
        .append_pair("openid", &event.openid);
    let body = match &config.aes_key {
        None => xml.to_string(),
        Some(key) => {
            let encrypted = wire::encrypt(&wire::aes_key(key)?, xml, &event.appid);
            let msg_signature = wire::sign(&[&config.token, &timestamp, &nonce, &encrypted]);
            query
                .append_pair("encrypt_type", "aes")
                .append_pair("msg_signature", &msg_signature);
            if config.compatible {
                wire::compatible_body(xml, &encrypted)
            } else {
                wire::safe_body(&encrypted)
            }
        }
    };
    drop(query);
    Some((url, body))
}

/// Pushes `event` with WeChat's retries, telling `on_try` how each try went; returns how many
/// tries it took and whether one was acknowledged.
pub(crate) async fn deliver(
    http: &reqwest::Client,
    config: &PushConfig,
    event: &PushEvent,
    on_try: impl Fn(bool),
) -> (u32, bool) {
    let Some(url) = &config.callback_url else {
        return (0, false);
    };
    let xml = event.xml(unix_now());
    let tries = config.tries.max(1);
    for n in 1..=tries {
        let Some((url, body)) = request(config, url, event, &xml) else {
            return (n, false);
        };
        let answer = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "text/xml")
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

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    type Seen = Arc<Mutex<Vec<(HashMap<String, String>, String)>>>;

    /// A server that records every try and answers `fail` to the first `failures` of them.
    async fn server(failures: usize) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .route(
                "/wechat/{app}",
                axum::routing::post(
                    move |State(seen): State<Seen>, Query(q): Query<HashMap<String, String>>, body: String| async move {
                        let mut seen = seen.lock().unwrap();
                        seen.push((q, body));
                        if seen.len() <= failures { "fail" } else { "success" }
                    },
                ),
            )
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
        let outcome = deliver(&reqwest::Client::new(), &config, &event(), |ok| {
            tries.lock().unwrap().push(ok)
        })
        .await;
        assert_eq!(outcome, (2, true));
        assert_eq!(*tries.lock().unwrap(), vec![false, true]);
        let seen = seen.lock().unwrap();
        for (q, body) in seen.iter() {
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
            deliver(&reqwest::Client::new(), &config, &event(), |_| {}).await,
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
            deliver(&reqwest::Client::new(), &config, &event(), |_| {}).await,
            (1, true)
        );
        let (q, body) = seen.lock().unwrap()[0].clone();
        assert_eq!(q["encrypt_type"], "aes");
        let b64 = body
            .split("<Encrypt><![CDATA[")
            .nth(1)
            .and_then(|r| r.split("]]>").next())
            .unwrap();
        assert!(!body.contains("MsgID"), "safe mode hides the fields");
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
        assert!(
            std::str::from_utf8(&plain[20..20 + len])
                .unwrap()
                .contains("TEMPLATESENDJOBFINISH")
        );
        assert_eq!(&plain[20 + len..], b"wx1111111111111111");
    }
}
