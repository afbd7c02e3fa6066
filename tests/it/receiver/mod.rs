//! `wxnotify receiver` (docs/interface.md §9) on real Postgres: the three modes, forged and hostile
//! pushes, receipts before their rows, repeats and races, an unreachable database, follower
//! events, and the whole trip from the worker through the simulator's push.
//!
//! Pushes are signed and encrypted with the simulator's own `wire` module, written apart from
//! the receiver from the documented algorithm.
//!
//! Shared here: how a test push is made and sent; the tests, by topic, in the files below.

mod durability;
mod followers;
mod hostile;
mod merchant_push;
mod platform;
mod receipts;
mod signatures;
mod slow;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wechat_sim::wire;

use crate::helpers::{AES_KEY, APP_ID, CALLBACK_TOKEN, ReceiverHandle, TestEnv, WorkerOpts, event, wait_for};
use crate::proxy::Proxy;

/// A receiver whose app has no AES key: it takes plaintext pushes only (docs/interface.md §9).
async fn spawn_plain_receiver(env: &TestEnv) -> ReceiverHandle {
    env.spawn_receiver_with(None, false, |args| args.wechat_encoding_aes_key = None)
        .await
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// How a test push is signed and wrapped.
#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Compatible,
    Safe,
}

/// A push as WeChat would make it, with knobs to forge it.
struct Push<'a> {
    xml: &'a str,
    mode: Mode,
    token: &'a str,
    aes_key: &'a str,
    /// The appid encrypted after the message.
    appid: &'a str,
    timestamp: i64,
}

impl<'a> Push<'a> {
    fn new(xml: &'a str, mode: Mode) -> Self {
        Self {
            xml,
            mode,
            token: CALLBACK_TOKEN,
            aes_key: AES_KEY,
            appid: APP_ID,
            timestamp: unix_now(),
        }
    }

    /// The query pairs and the body.
    fn build(&self) -> (Vec<(&'static str, String)>, String) {
        let ts = self.timestamp.to_string();
        let nonce = format!("{}", rand::random::<u32>());
        let mut query = vec![
            ("signature", wire::sign(&[self.token, &ts, &nonce])),
            ("timestamp", ts.clone()),
            ("nonce", nonce.clone()),
            ("openid", "oUser".to_string()),
        ];
        let body = match self.mode {
            Mode::Plain => self.xml.to_string(),
            Mode::Compatible | Mode::Safe => {
                let key = wire::aes_key(self.aes_key).expect("a 43-character key");
                let encrypted = wire::encrypt(&key, self.xml, self.appid);
                query.push(("encrypt_type", "aes".into()));
                query.push(("msg_signature", wire::sign(&[self.token, &ts, &nonce, &encrypted])));
                match self.mode {
                    Mode::Compatible => wire::compatible_body(self.xml, &encrypted),
                    _ => wire::safe_body(&encrypted),
                }
            }
        };
        (query, body)
    }

    async fn send(&self, receiver: &ReceiverHandle) -> (StatusCode, String) {
        self.send_to(&receiver.url()).await
    }

    async fn send_to(&self, url: &str) -> (StatusCode, String) {
        let (query, body) = self.build();
        post(url, &query, body).await
    }
}

/// `url` with the query pairs appended.
fn with_query(url: &str, query: &[(&str, String)]) -> reqwest::Url {
    let mut url = reqwest::Url::parse(url).expect("a URL");
    url.query_pairs_mut().extend_pairs(query);
    url
}

async fn post(url: &str, query: &[(&str, String)], body: impl Into<reqwest::Body>) -> (StatusCode, String) {
    let r = reqwest::Client::new()
        .post(with_query(url, query))
        .header("content-type", "text/xml")
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .expect("the receiver answers");
    (r.status(), r.text().await.unwrap_or_default())
}

fn finish(msgid: i64, status: &str) -> String {
    wire::template_finish("oUser", unix_now(), msgid, status)
}

async fn metrics(receiver: &ReceiverHandle) -> String {
    reqwest::get(format!("http://{}/metrics", receiver.admin_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

async fn readyz(receiver: &ReceiverHandle) -> StatusCode {
    reqwest::get(format!("http://{}/readyz", receiver.admin_addr))
        .await
        .expect("readyz")
        .status()
}

async fn stored_receipts(env: &TestEnv) -> i64 {
    env.count("SELECT count(*) FROM delivery_receipts").await
}
