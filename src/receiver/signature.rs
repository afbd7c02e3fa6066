//! WeChat's push signatures (`WECHAT_API.md`, "Event push"): SHA-1 over the parts sorted
//! lexicographically and concatenated, in lowercase hex. The URL check and plain pushes sign
//! `[token, timestamp, nonce]`; safe mode's `msg_signature` adds the `Encrypt` text.

use sha1::{Digest, Sha1};

/// `sha1(join(sort(parts)))` in lowercase hex.
pub(crate) fn sign(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for part in sorted {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Whether `given` is the signature of `parts`, compared in constant time.
pub(crate) fn verify(parts: &[&str], given: &str) -> bool {
    let expected = sign(parts);
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented algorithm written out by hand: sort, concatenate, SHA-1, hex.
    fn by_hand(token: &str, timestamp: &str, nonce: &str) -> String {
        let mut v = [token, timestamp, nonce];
        v.sort();
        let joined = v.concat();
        let digest = Sha1::digest(joined.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sorts_joins_and_hashes() {
        let s = by_hand("AAAAA", "1409735669", "1320562132");
        assert_eq!(sign(&["AAAAA", "1409735669", "1320562132"]), s);
        assert_eq!(sign(&["1320562132", "AAAAA", "1409735669"]), s, "order does not matter");
        assert_eq!(s.len(), 40);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn a_known_vector() {
        // sha1("123abcmytoken") — the three parts sorted: "123" < "abc" < "mytoken".
        assert_eq!(
            sign(&["mytoken", "abc", "123"]),
            hex::encode(Sha1::digest(b"123abcmytoken"))
        );
    }

    #[test]
    fn verify_refuses_any_other_signature() {
        let good = sign(&["tok", "1", "2", "encrypted"]);
        assert!(verify(&["tok", "1", "2", "encrypted"], &good));
        assert!(!verify(&["tok", "1", "2", "encrypted"], &good.to_uppercase()));
        assert!(!verify(&["tok", "1", "2", "encrypted"], &good[..39]));
        assert!(!verify(&["tok", "1", "2", "other"], &good));
        assert!(!verify(&["tok", "1", "2", "encrypted"], ""));
    }
}
