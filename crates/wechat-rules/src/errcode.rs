//! The errcodes WeChat's server API answers (WECHAT_API.md, "Error codes a sender meets" and the
//! token APIs), by name. Matching is on `errcode` only, never on `errmsg`.

/// `-1`: system busy.
pub const SYSTEM_BUSY: i64 = -1;
/// `40001`: on the send APIs, the token is invalid or not the latest; on the token APIs, a wrong
/// secret.
pub const TOKEN_INVALID: i64 = 40001;
/// `40002`: invalid `grant_type` (token APIs).
pub const INVALID_GRANT_TYPE: i64 = 40002;
/// `40003`: invalid openid.
pub const INVALID_OPENID: i64 = 40003;
/// `40013`: invalid appid (token APIs).
pub const INVALID_APPID: i64 = 40013;
/// `40014`: invalid access_token.
pub const TOKEN_MALFORMED: i64 = 40014;
/// `40037`: invalid template_id.
pub const INVALID_TEMPLATE_ID: i64 = 40037;
/// `40125`: invalid appsecret (token APIs).
pub const INVALID_APPSECRET: i64 = 40125;
/// `41001`: access_token missing (not in the query string).
pub const TOKEN_MISSING: i64 = 41001;
/// `42001`: access_token expired.
pub const TOKEN_EXPIRED: i64 = 42001;
/// `43004`: the user does not follow the account (template send).
pub const REQUIRE_SUBSCRIBE: i64 = 43004;
/// `43101`: the user refused the message or used up the one-time authorization (subscribe send).
pub const USER_REFUSED: i64 = 43101;
/// `45009`: the daily quota is reached.
pub const DAILY_QUOTA: i64 = 45009;
/// `45011`: the minute quota is reached.
pub const MINUTE_QUOTA: i64 = 45011;
/// `47001`: the body is not parseable.
pub const DATA_FORMAT: i64 = 47001;
/// `47003`: an argument is invalid (a data value breaks its keyword's type).
pub const ARGUMENT_INVALID: i64 = 47003;
/// `45026`: the account already holds the most templates it may (25): `api_add_template` refused.
pub const TEMPLATE_LIMIT: i64 = 45026;
/// `48001`: the API is not authorized for this account (or this kind of token).
pub const API_UNAUTHORIZED: i64 = 48001;
/// `61003`: the account never authorized this third-party platform (`api_authorizer_token`).
pub const COMPONENT_NOT_AUTHORIZED: i64 = 61003;
/// `61005`: the component verify ticket is expired (older than 12 h; `api_component_token`).
pub const VERIFY_TICKET_EXPIRED: i64 = 61005;
/// `61006`: the component verify ticket is invalid: not one WeChat pushed, or superseded.
pub const VERIFY_TICKET_INVALID: i64 = 61006;
/// `61009`: the authorization code is invalid or already used (`api_query_auth`).
pub const AUTH_CODE_INVALID: i64 = 61009;
/// `61010`: the authorization code is expired (`api_query_auth`; codes last about an hour).
pub const AUTH_CODE_EXPIRED: i64 = 61010;
/// `61023`: the authorizer refresh token is invalid: not the merchant's current one (a
/// re-authorization replaced it, or the merchant revoked the platform).
pub const REFRESH_TOKEN_INVALID: i64 = 61023;
