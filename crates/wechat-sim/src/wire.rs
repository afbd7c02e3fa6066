//! WeChat's event push on the wire, written independently of the receiver it tests
//! (`WECHAT_API.md`, "Event push"): signatures, safe mode's encryption, the envelopes of safe and
//! compatible modes (XML and JSON), and the XML of the events the simulator pushes (what each
//! says is in [`document`]).

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockEncryptMut, KeyIvInit};
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use rand::Rng;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use crate::document::{self, Document};

/// `sha1(join(sort(parts)))`, lowercase hex.
pub fn sign(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    hex::encode(Sha1::digest(sorted.concat().as_bytes()))
}

/// The 32-byte key of a 43-character EncodingAESKey (base64 with one `=` added; the last
/// character's spare bits ignored, as WeChat's own decoders do). `None`: not such a key.
pub fn aes_key(encoding_aes_key: &str) -> Option<Vec<u8>> {
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    if encoding_aes_key.len() != 43 {
        return None;
    }
    ENGINE
        .decode(format!("{encoding_aes_key}="))
        .ok()
        .filter(|k| k.len() == 32)
}

/// Safe mode: base64(AES-256-CBC(key, iv = key[..16], random(16) ‖ len(4, BE) ‖ message ‖ appid,
/// PKCS#7 padded to 32 bytes)).
pub fn encrypt(key: &[u8], message: &str, app_id: &str) -> String {
    let mut plain: Vec<u8> = rand::rng().random::<[u8; 16]>().to_vec();
    plain.extend((message.len() as u32).to_be_bytes());
    plain.extend(message.as_bytes());
    plain.extend(app_id.as_bytes());
    let pad = 32 - plain.len() % 32;
    plain.extend(std::iter::repeat_n(pad as u8, pad));
    let len = plain.len();
    cbc::Encryptor::<aes::Aes256>::new(key.into(), key[..16].into())
        .encrypt_padded_mut::<NoPadding>(&mut plain, len)
        .expect("whole blocks");
    STANDARD.encode(plain)
}

/// The envelope of a safe-mode push.
pub fn safe_body(encrypted: &str) -> String {
    format!("<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>")
}

/// A compatible-mode push: the plain fields and `Encrypt` side by side.
pub fn compatible_body(plain_xml: &str, encrypted: &str) -> String {
    let inner = plain_xml.strip_suffix("</xml>").unwrap_or(plain_xml);
    format!("{inner}<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>")
}

/// The envelope of a safe-mode JSON push: `{"ToUserName": "gh_sim", "Encrypt": "…"}`.
pub fn json_safe_body(encrypted: &str) -> String {
    json!({ "ToUserName": "gh_sim", "Encrypt": encrypted }).to_string()
}

/// A compatible-mode JSON push: the plain fields and `Encrypt` in one object.
pub fn json_compatible_body(plain: &Document, encrypted: &str) -> String {
    let mut fields = plain.json();
    fields.insert("Encrypt".into(), encrypted.into());
    Value::Object(fields).to_string()
}

/// A template message's result, as XML ([`document::template_finish`]).
pub fn template_finish(openid: &str, created: i64, msgid: i64, status: &str) -> String {
    document::template_finish(openid, created, msgid, status).xml()
}

/// A subscribe message's result (one `List`), as XML ([`document::subscribe_msg_sent`]).
pub fn subscribe_msg_sent(openid: &str, created: i64, template_id: &str, msgid: i64, status: &str) -> String {
    document::subscribe_msg_sent(openid, created, template_id, msgid, status).xml()
}

/// `subscribe` (followed) or `unsubscribe` (left), as XML ([`document::follow`]).
pub fn follow(openid: &str, created: i64, followed: bool) -> String {
    document::follow(openid, created, followed).xml()
}
