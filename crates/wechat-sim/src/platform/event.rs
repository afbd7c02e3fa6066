//! What WeChat pushes to a platform's authorization event URL (`WECHAT_API.md`, "Third-party
//! platform"): `component_verify_ticket`, `authorized`, `updateauthorized`, `unauthorized`, as
//! XML with bare text (as WeChat documents them), always in safe mode with the platform's token
//! and key, the decrypted trailing appid being the `component_appid`.

use serde::{Deserialize, Serialize};

use crate::document::Document;

/// What a push to the platform says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "info_type", rename_all = "snake_case")]
pub enum PlatformInfo {
    /// A new verify ticket (`ticket@@@…`).
    ComponentVerifyTicket { ticket: String },
    /// A merchant authorized the platform.
    Authorized(Authorization),
    /// An authorized merchant authorized it again (permissions changed).
    #[serde(rename = "updateauthorized")]
    UpdateAuthorized(Authorization),
    /// A merchant revoked its authorization.
    Unauthorized { authorizer_appid: String },
}

/// The fields of `authorized` and `updateauthorized`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub authorizer_appid: String,
    /// To exchange with `api_query_auth`.
    pub authorization_code: String,
    /// When the code expires, Unix seconds.
    pub authorization_code_expired_time: i64,
    /// The pre-auth code of the page the merchant scanned.
    pub pre_auth_code: String,
}

/// One push to a platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformEvent {
    pub component_appid: String,
    #[serde(flatten)]
    pub info: PlatformInfo,
}

/// What became of a push to a platform.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformPushed {
    #[serde(flatten)]
    pub event: PlatformEvent,
    pub tries: u32,
    /// The receiver answered `success` (or empty) to one of the tries.
    pub acknowledged: bool,
}

impl PlatformEvent {
    /// What the push says, pushed at `created` (Unix seconds).
    pub fn document(&self, created: i64) -> Document {
        let head = |info_type: &str| {
            Document::default()
                .bare("AppId", self.component_appid.as_str())
                .number("CreateTime", created)
                .bare("InfoType", info_type)
        };
        let authorization = |d: Document, a: &Authorization| {
            d.bare("AuthorizerAppid", a.authorizer_appid.as_str())
                .bare("AuthorizationCode", a.authorization_code.as_str())
                .number("AuthorizationCodeExpiredTime", a.authorization_code_expired_time)
                .bare("PreAuthCode", a.pre_auth_code.as_str())
        };
        match &self.info {
            PlatformInfo::ComponentVerifyTicket { ticket } => {
                head("component_verify_ticket").bare("ComponentVerifyTicket", ticket.as_str())
            }
            PlatformInfo::Authorized(a) => authorization(head("authorized"), a),
            PlatformInfo::UpdateAuthorized(a) => authorization(head("updateauthorized"), a),
            PlatformInfo::Unauthorized { authorizer_appid } => {
                head("unauthorized").bare("AuthorizerAppid", authorizer_appid.as_str())
            }
        }
    }

    /// The plaintext XML, pushed at `created` (Unix seconds).
    pub fn xml(&self, created: i64) -> String {
        self.document(created).xml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(info: PlatformInfo) -> PlatformEvent {
        PlatformEvent {
            component_appid: "wx3333333333333333".into(),
            info,
        }
    }

    #[test]
    fn a_ticket_push_is_the_documented_xml() {
        let ticket = event(PlatformInfo::ComponentVerifyTicket {
            ticket: "ticket@@@abc".into(),
        });
        assert_eq!(
            ticket.xml(1413192605),
            "<xml><AppId>wx3333333333333333</AppId><CreateTime>1413192605</CreateTime>\
             <InfoType>component_verify_ticket</InfoType>\
             <ComponentVerifyTicket>ticket@@@abc</ComponentVerifyTicket></xml>"
        );
    }

    #[test]
    fn authorization_pushes_carry_the_code_and_unauthorized_only_the_appid() {
        let a = Authorization {
            authorizer_appid: "wxM1".into(),
            authorization_code: "queryauthcode@@@c".into(),
            authorization_code_expired_time: 1413196360,
            pre_auth_code: "preauthcode@@@p".into(),
        };
        let fields = "<AuthorizerAppid>wxM1</AuthorizerAppid><AuthorizationCode>queryauthcode@@@c</AuthorizationCode>\
                      <AuthorizationCodeExpiredTime>1413196360</AuthorizationCodeExpiredTime>\
                      <PreAuthCode>preauthcode@@@p</PreAuthCode></xml>";
        let head = |t: &str| {
            format!("<xml><AppId>wx3333333333333333</AppId><CreateTime>1413192760</CreateTime><InfoType>{t}</InfoType>")
        };
        assert_eq!(
            event(PlatformInfo::Authorized(a.clone())).xml(1413192760),
            format!("{}{fields}", head("authorized"))
        );
        assert_eq!(
            event(PlatformInfo::UpdateAuthorized(a)).xml(1413192760),
            format!("{}{fields}", head("updateauthorized"))
        );
        assert_eq!(
            event(PlatformInfo::Unauthorized {
                authorizer_appid: "wxM1".into()
            })
            .xml(1413192760),
            format!("{}<AuthorizerAppid>wxM1</AuthorizerAppid></xml>", head("unauthorized"))
        );
    }

    #[test]
    fn the_log_names_the_info_type_as_wechat_does() {
        let e = event(PlatformInfo::UpdateAuthorized(Authorization {
            authorizer_appid: "wxM1".into(),
            authorization_code: "c".into(),
            authorization_code_expired_time: 1,
            pre_auth_code: "p".into(),
        }));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["info_type"], "updateauthorized");
        assert_eq!(v["component_appid"], "wx3333333333333333");
        assert_eq!(v["authorizer_appid"], "wxM1");
    }
}
