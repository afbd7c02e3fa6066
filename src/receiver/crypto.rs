//! Safe mode's encryption (`WECHAT_API.md`, "Event push"): the 43-character EncodingAESKey is
//! base64 of a 32-byte key (add one `=`); AES-256-CBC with the key's first 16 bytes as IV;
//! PKCS#7 padding to a 32-byte block; the plaintext is
//! `random(16) ‖ length(4, big-endian) ‖ message ‖ appid`, and the trailing appid must be the
//! account's own.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, KeyIvInit};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use secrecy::{ExposeSecret, SecretBox};

/// WeChat pads to this block size, not AES's 16.
const PAD_BLOCK: usize = 32;

/// The EncodingAESKey's engine: WeChat's keys are 43 random characters, so the last one's two
/// spare bits are often not zero; their decoders ignore them, and so must we.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// An app's AES key; its `Debug` prints nothing of it.
pub(crate) struct AesKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey([REDACTED])")
    }
}

/// Why an EncodingAESKey is unusable (the message names no part of the key).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("must be 43 characters, has {0}")]
    Length(usize),
    #[error("is not base64 (A–Z, a–z, 0–9, + and /)")]
    NotBase64,
}

/// Why an `Encrypt` payload was refused: the sender does not hold the account's key or appid.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecryptError {
    #[error("the encrypted text is not base64")]
    NotBase64,
    #[error("the encrypted text is not a whole number of 32-byte blocks")]
    BlockLength,
    #[error("bad padding (wrong key?)")]
    Padding,
    #[error("the decrypted text is not laid out as random ‖ length ‖ message ‖ appid")]
    Layout,
    #[error("the trailing appid is not this app's")]
    AppId,
    #[error("the message is not UTF-8")]
    NotUtf8,
}

impl AesKey {
    pub(crate) fn parse(encoding_aes_key: &str) -> Result<Self, KeyError> {
        let chars = encoding_aes_key.chars().count();
        if chars != 43 {
            return Err(KeyError::Length(chars));
        }
        let mut key = Box::new([0u8; 32]);
        let decoded = KEY_ENGINE
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| KeyError::NotBase64)?;
        // 43 base64 characters and one `=` are always 32 bytes.
        key.copy_from_slice(&decoded);
        Ok(Self(SecretBox::new(key)))
    }

    /// Decrypts an `Encrypt` payload addressed to `app_id`; the message (XML or JSON) inside.
    pub(crate) fn decrypt(&self, encrypted_b64: &str, app_id: &str) -> Result<String, DecryptError> {
        let mut buf = STANDARD
            .decode(encrypted_b64.trim())
            .map_err(|_| DecryptError::NotBase64)?;
        if buf.is_empty() || buf.len() % PAD_BLOCK != 0 {
            return Err(DecryptError::BlockLength);
        }
        let key = self.0.expose_secret();
        let iv: [u8; 16] = key[..16].try_into().expect("16 of 32 bytes");
        let plain = cbc::Decryptor::<aes::Aes256>::new(key.into(), &iv.into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| DecryptError::BlockLength)?;
        let pad = usize::from(*plain.last().ok_or(DecryptError::Padding)?);
        if !(1..=PAD_BLOCK).contains(&pad)
            || pad > plain.len()
            || plain[plain.len() - pad..].iter().any(|&b| usize::from(b) != pad)
        {
            return Err(DecryptError::Padding);
        }
        let plain = &plain[..plain.len() - pad];
        if plain.len() < 20 {
            return Err(DecryptError::Layout);
        }
        let len = u32::from_be_bytes(plain[16..20].try_into().expect("4 bytes")) as usize;
        let rest = &plain[20..];
        if len > rest.len() {
            return Err(DecryptError::Layout);
        }
        let (message, trailing) = rest.split_at(len);
        if trailing != app_id.as_bytes() {
            return Err(DecryptError::AppId);
        }
        String::from_utf8(message.to_vec()).map_err(|_| DecryptError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use aes::cipher::BlockEncryptMut;

    use super::*;

    const ENCODING_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    /// The documented algorithm written out with the `aes`/`cbc` crates directly: key =
    /// base64(EncodingAESKey + "=") (trailing bits ignored), IV = key[..16], PKCS#7 to 32 bytes.
    fn encrypt(encoding_aes_key: &str, message: &str, app_id: &str) -> String {
        let key = KEY_ENGINE.decode(format!("{encoding_aes_key}=")).unwrap();
        let mut plain = b"0123456789abcdef".to_vec();
        plain.extend((message.len() as u32).to_be_bytes());
        plain.extend(message.as_bytes());
        plain.extend(app_id.as_bytes());
        let pad = 32 - plain.len() % 32;
        plain.extend(std::iter::repeat_n(pad as u8, pad));
        let len = plain.len();
        let enc = cbc::Encryptor::<aes::Aes256>::new(key[..].into(), key[..16].into());
        enc.encrypt_padded_mut::<NoPadding>(&mut plain, len).unwrap();
        STANDARD.encode(&plain)
    }

    #[test]
    fn a_key_is_43_base64_characters() {
        assert!(AesKey::parse(ENCODING_AES_KEY).is_ok());
        assert_eq!(AesKey::parse("short").unwrap_err(), KeyError::Length(5));
        assert_eq!(AesKey::parse(&"!".repeat(43)).unwrap_err(), KeyError::NotBase64);
        assert_eq!(
            format!("{:?}", AesKey::parse(ENCODING_AES_KEY).unwrap()),
            "AesKey([REDACTED])"
        );
    }

    #[test]
    fn decrypts_what_the_documented_algorithm_encrypts() {
        let xml = "<xml><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event></xml>";
        let b64 = encrypt(ENCODING_AES_KEY, xml, "wx1111111111111111");
        let key = AesKey::parse(ENCODING_AES_KEY).unwrap();
        assert_eq!(key.decrypt(&b64, "wx1111111111111111").unwrap(), xml);
        // A message whose plaintext is exactly a multiple of 32 gets a whole block of padding.
        let exact = "x".repeat(32 * 3 - 20 - 18);
        let b64 = encrypt(ENCODING_AES_KEY, &exact, "wx1111111111111111");
        assert_eq!(key.decrypt(&b64, "wx1111111111111111").unwrap(), exact);
    }

    #[test]
    fn refuses_another_appid_another_key_and_garbage() {
        let b64 = encrypt(ENCODING_AES_KEY, "<xml/>", "wx1111111111111111");
        let key = AesKey::parse(ENCODING_AES_KEY).unwrap();
        assert_eq!(key.decrypt(&b64, "wx2222222222222222"), Err(DecryptError::AppId));
        let other = AesKey::parse("ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut").unwrap();
        assert!(other.decrypt(&b64, "wx1111111111111111").is_err());
        assert_eq!(
            key.decrypt("not base64!", "wx1111111111111111"),
            Err(DecryptError::NotBase64)
        );
        assert_eq!(
            key.decrypt(&STANDARD.encode([0u8; 16]), "wx1111111111111111"),
            Err(DecryptError::BlockLength)
        );
    }
}
