//! WeChat errcodes → what wxnotify does about them (WECHAT_API.md, "Error codes a sender meets").
//! Matching is on `errcode` only, never on `errmsg`.

/// The class of a failed send, one-to-one with a reaction in [`crate::retry::RetryPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 40001, 40014, 42001: the token was rejected. Invalidate it if still current, refresh once, requeue.
    Token,
    /// -1, 45011, HTTP 5xx, timeouts, connection errors: retry with backoff.
    Transient,
    /// 45011: the minute quota. Transient, but no sooner than the next minute.
    MinuteQuota,
    /// 45009: the daily quota. Defer until it resets; never hot-retry.
    DailyQuota,
    /// Everything else: dead-letter with the errcode.
    Permanent,
}

pub const TOKEN_INVALID: i64 = 40001;
pub const TOKEN_MALFORMED: i64 = 40014;
pub const TOKEN_EXPIRED: i64 = 42001;
pub const SYSTEM_BUSY: i64 = -1;
pub const DAILY_QUOTA: i64 = 45009;
pub const MINUTE_QUOTA: i64 = 45011;

/// The class of a non-zero errcode from a send API.
pub fn classify_send(errcode: i64) -> ErrorClass {
    match errcode {
        TOKEN_INVALID | TOKEN_MALFORMED | TOKEN_EXPIRED => ErrorClass::Token,
        SYSTEM_BUSY => ErrorClass::Transient,
        MINUTE_QUOTA => ErrorClass::MinuteQuota,
        DAILY_QUOTA => ErrorClass::DailyQuota,
        _ => ErrorClass::Permanent,
    }
}

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
        for c in [40001, 40014, 42001] {
            assert_eq!(classify_send(c), ErrorClass::Token);
        }
        assert_eq!(classify_send(-1), ErrorClass::Transient);
        assert_eq!(classify_send(45011), ErrorClass::MinuteQuota);
        assert_eq!(classify_send(45009), ErrorClass::DailyQuota);
        for c in [41001, 40003, 40037, 43004, 43101, 47001, 47003, 48001, 50001, 50002] {
            assert_eq!(classify_send(c), ErrorClass::Permanent, "{c}");
        }
        assert_eq!(classify_token_fetch(40125), TokenFetchClass::Credentials);
        assert_eq!(classify_token_fetch(45009), TokenFetchClass::DailyQuota);
        assert_eq!(classify_token_fetch(-1), TokenFetchClass::Transient);
    }
}
