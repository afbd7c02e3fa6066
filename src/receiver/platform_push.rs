//! What a third-party platform's push says (docs/interface.md §10), read from its [`Node`] tree:
//! WeChat's verify ticket (every 10 minutes) and a merchant's authorization changes
//! (`authorized`, `updateauthorized`, `unauthorized`). These documents carry `InfoType` where a
//! message push carries `MsgType`; they arrive at `POST /wechat/platform/{component_appid}`, always
//! encrypted with the platform's token and key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::document::Node;
use super::push::PushError;

/// Tickets and authorization codes are opaque text of a hundred characters or so.
const MAX_OPAQUE: usize = 512;
/// App ids are 18 characters.
const MAX_APPID: usize = 64;

/// What happened, by `InfoType`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PlatformInfo {
    /// `component_verify_ticket`: the ticket the platform's token is asked with (valid 12 h).
    Ticket { ticket: String },
    /// `authorized` (or, with `update`, `updateauthorized`): a merchant authorized the platform;
    /// its code is exchanged for the merchant's tokens.
    Authorized {
        authorizer_appid: String,
        code: String,
        code_expires_at: Option<DateTime<Utc>>,
        update: bool,
    },
    /// `unauthorized`: the merchant withdrew the authorization.
    Unauthorized { authorizer_appid: String },
}

/// A platform push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PlatformPush {
    /// `AppId`: the platform the push is for.
    pub component_appid: String,
    /// `CreateTime` (no later than the push's arrival, see `Push::arrived_at`).
    pub at: DateTime<Utc>,
    pub info: PlatformInfo,
}

/// Whether `root` is a platform push (`InfoType`, no `MsgType`).
pub(crate) fn is_platform_push(root: &Node) -> bool {
    root.text_of("InfoType").is_some() && root.text_of("MsgType").is_none()
}

fn text<'a>(node: &'a Node, field: &'static str, max: usize) -> Result<&'a str, PushError> {
    let t = node.text_of(field).ok_or(PushError::Missing(field))?;
    if t.chars().count() > max {
        return Err(PushError::TooLong(field));
    }
    if t.contains('\0') {
        return Err(PushError::Nul(field));
    }
    Ok(t)
}

fn time(node: &Node, field: &'static str) -> Result<DateTime<Utc>, PushError> {
    let secs: i64 = text(node, field, 20)?
        .parse()
        .map_err(|_| PushError::NotInteger(field))?;
    DateTime::from_timestamp(secs, 0).ok_or(PushError::Time)
}

/// Reads a platform push; `Ok(None)`: an `InfoType` wxnotify does not act on (answered
/// `success`, counted).
pub(crate) fn read(root: &Node) -> Result<Option<PlatformPush>, PushError> {
    let component_appid = text(root, "AppId", MAX_APPID)?.to_string();
    let at = time(root, "CreateTime")?;
    let info = match text(root, "InfoType", MAX_APPID)? {
        "component_verify_ticket" => PlatformInfo::Ticket {
            ticket: text(root, "ComponentVerifyTicket", MAX_OPAQUE)?.to_string(),
        },
        kind @ ("authorized" | "updateauthorized") => PlatformInfo::Authorized {
            authorizer_appid: text(root, "AuthorizerAppid", MAX_APPID)?.to_string(),
            code: text(root, "AuthorizationCode", MAX_OPAQUE)?.to_string(),
            code_expires_at: root
                .text_of("AuthorizationCodeExpiredTime")
                .map(|_| time(root, "AuthorizationCodeExpiredTime"))
                .transpose()?,
            update: kind == "updateauthorized",
        },
        "unauthorized" => PlatformInfo::Unauthorized {
            authorizer_appid: text(root, "AuthorizerAppid", MAX_APPID)?.to_string(),
        },
        _ => return Ok(None),
    };
    Ok(Some(PlatformPush {
        component_appid,
        at,
        info,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::document::parse;

    fn read_body(body: &str) -> Result<Option<PlatformPush>, PushError> {
        read(&parse(body.as_bytes()).expect("a document"))
    }

    #[test]
    fn tickets_and_authorizations_as_wechat_writes_them() {
        let ticket = "<xml><AppId>wx3333333333333333</AppId><CreateTime>1413192605</CreateTime>\
                      <InfoType>component_verify_ticket</InfoType>\
                      <ComponentVerifyTicket>ticket@@@lEHjsBEi_TPDey0IZxw4Zbb7JRYLOtEf9ksvDpSwzkwog3R6xEpdaK0yIee7JOyOXM0V7cp0dpM58GKmb8FOKA</ComponentVerifyTicket></xml>";
        let doc = parse(ticket.as_bytes()).unwrap();
        assert!(is_platform_push(&doc));
        let push = read(&doc).unwrap().unwrap();
        assert_eq!(push.component_appid, "wx3333333333333333");
        assert_eq!(push.at.timestamp(), 1_413_192_605);
        assert!(matches!(&push.info, PlatformInfo::Ticket { ticket } if ticket.starts_with("ticket@@@")));

        let authorized = "<xml><AppId><![CDATA[wx3333333333333333]]></AppId><CreateTime>1413192760</CreateTime>\
                          <InfoType><![CDATA[updateauthorized]]></InfoType><AuthorizerAppid><![CDATA[wxMERCHANT000001]]></AuthorizerAppid>\
                          <AuthorizationCode><![CDATA[queryauthcode@@@abc]]></AuthorizationCode>\
                          <AuthorizationCodeExpiredTime>1413196360</AuthorizationCodeExpiredTime>\
                          <PreAuthCode><![CDATA[preauthcode@@@xyz]]></PreAuthCode></xml>";
        let push = read_body(authorized).unwrap().unwrap();
        assert_eq!(
            push.info,
            PlatformInfo::Authorized {
                authorizer_appid: "wxMERCHANT000001".into(),
                code: "queryauthcode@@@abc".into(),
                code_expires_at: DateTime::from_timestamp(1_413_196_360, 0),
                update: true,
            }
        );
        let unauthorized = "<xml><AppId>wx3333333333333333</AppId><CreateTime>1413192760</CreateTime>\
                            <InfoType>unauthorized</InfoType><AuthorizerAppid>wxMERCHANT000001</AuthorizerAppid></xml>";
        assert_eq!(
            read_body(unauthorized).unwrap().unwrap().info,
            PlatformInfo::Unauthorized {
                authorizer_appid: "wxMERCHANT000001".into()
            }
        );
        let other =
            "<xml><AppId>wx3</AppId><CreateTime>1</CreateTime><InfoType>notify_third_fasteregister</InfoType></xml>";
        assert_eq!(read_body(other), Ok(None));
    }

    #[test]
    fn refuses_what_is_missing_too_long_or_not_a_time() {
        let no_code = "<xml><AppId>wx3</AppId><CreateTime>1</CreateTime><InfoType>authorized</InfoType>\
                       <AuthorizerAppid>wxM</AuthorizerAppid></xml>";
        assert_eq!(read_body(no_code), Err(PushError::Missing("AuthorizationCode")));
        let long = format!(
            "<xml><AppId>wx3</AppId><CreateTime>1</CreateTime><InfoType>component_verify_ticket</InfoType>\
             <ComponentVerifyTicket>{}</ComponentVerifyTicket></xml>",
            "t".repeat(600)
        );
        assert_eq!(read_body(&long), Err(PushError::TooLong("ComponentVerifyTicket")));
        let bad_time = "<xml><AppId>wx3</AppId><CreateTime>soon</CreateTime><InfoType>unauthorized</InfoType>\
                        <AuthorizerAppid>wxM</AuthorizerAppid></xml>";
        assert_eq!(read_body(bad_time), Err(PushError::NotInteger("CreateTime")));
    }
}
