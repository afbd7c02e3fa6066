//! WeChat errcodes → what wxnotify does about them (WECHAT_API.md, "Error codes a sender meets").
//! Matching is on `errcode` only, never on `errmsg`. The codes themselves are WeChat's facts and
//! live in `wechat_rules::errcode`, shared with the simulator; the classes here are wxnotify's.

pub use wechat_rules::errcode::{
    DAILY_QUOTA, INVALID_TEMPLATE_ID, MINUTE_QUOTA, SYSTEM_BUSY, TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_MALFORMED,
};

/// What a token API's errcode means. On the token APIs, 40001 means a wrong secret, not a bad token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFetchClass {
    /// Wrong or frozen credentials, IP not whitelisted: the app is misconfigured; retrying won't help.
    Credentials,
    DailyQuota,
    Transient,
}

pub fn classify_token_fetch(errcode: i64) -> TokenFetchClass {
    match errcode {
        SYSTEM_BUSY | MINUTE_QUOTA => TokenFetchClass::Transient,
        DAILY_QUOTA => TokenFetchClass::DailyQuota,
        // 40001 wrong secret, 40002 grant_type, 40013 appid, 40125 appsecret, 40164 IP whitelist,
        // 40243 secret frozen, and anything else we do not know: a person must look.
        _ => TokenFetchClass::Credentials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(classify_token_fetch(40125), TokenFetchClass::Credentials);
        assert_eq!(classify_token_fetch(45009), TokenFetchClass::DailyQuota);
        assert_eq!(classify_token_fetch(-1), TokenFetchClass::Transient);
    }
}
