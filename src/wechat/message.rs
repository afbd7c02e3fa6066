//! The JSON bodies of `message/template/send` and `message/subscribe/send`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which send API a template uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Official-account template message: `/cgi-bin/message/template/send`.
    #[default]
    Template,
    /// Mini-program subscribe message: `/cgi-bin/message/subscribe/send`.
    Subscribe,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Api::Template => "/cgi-bin/message/template/send",
            Api::Subscribe => "/cgi-bin/message/subscribe/send",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miniprogram {
    pub appid: String,
    #[serde(default)]
    pub pagepath: Option<String>,
}

/// A rendered message, ready to send. Holds no token: the token travels only in the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub api: Api,
    pub touser: String,
    pub template_id: String,
    pub client_msg_id: String,
    pub url: Option<String>,
    pub miniprogram: Option<Miniprogram>,
    pub page: Option<String>,
    pub miniprogram_state: Option<String>,
    pub lang: Option<String>,
    pub data: BTreeMap<String, String>,
    /// Keys whose value was shortened to WeChat's template-message limit (not sent; counted).
    pub shortened: Vec<String>,
}

impl OutgoingMessage {
    /// The request body WeChat expects for this message's API, serialized straight from the
    /// message (borrowed: no JSON tree is built).
    pub fn body(&self) -> Body<'_> {
        let (template, subscribe) = (self.api == Api::Template, self.api == Api::Subscribe);
        Body {
            touser: &self.touser,
            template_id: &self.template_id,
            client_msg_id: &self.client_msg_id,
            data: Data(&self.data),
            url: only(template, &self.url),
            miniprogram: self.miniprogram.as_ref().filter(|_| template),
            page: only(subscribe, &self.page),
            miniprogram_state: only(subscribe, &self.miniprogram_state),
            lang: only(subscribe, &self.lang),
        }
    }
}

/// `v`, if this API has the field.
fn only(on: bool, v: &Option<String>) -> Option<&str> {
    if on { v.as_deref() } else { None }
}

/// The JSON body of one send: the fields of its API only, those not given left out.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    touser: &'a str,
    template_id: &'a str,
    client_msg_id: &'a str,
    data: Data<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    miniprogram: Option<&'a Miniprogram>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    miniprogram_state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lang: Option<&'a str>,
}

/// `"data": {"key": {"value": "…"}, …}`.
#[derive(Debug)]
struct Data<'a>(&'a BTreeMap<String, String>);

impl Serialize for Data<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Valued<'v> {
            value: &'v str,
        }
        s.collect_map(self.0.iter().map(|(k, v)| (k, Valued { value: v })))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(api: Api) -> OutgoingMessage {
        OutgoingMessage {
            api,
            touser: "oU".into(),
            template_id: "T".into(),
            client_msg_id: "c1".into(),
            url: Some("https://u".into()),
            miniprogram: Some(Miniprogram {
                appid: "wxm".into(),
                pagepath: None,
            }),
            page: Some("pages/a".into()),
            miniprogram_state: Some("formal".into()),
            lang: None,
            data: BTreeMap::from([("thing1".into(), "洗车".into()), ("time2".into(), "10:00".into())]),
            shortened: vec![],
        }
    }

    #[test]
    fn each_api_gets_its_own_fields_and_data_as_values() {
        let data = json!({"thing1": {"value": "洗车"}, "time2": {"value": "10:00"}});
        let template = serde_json::to_value(message(Api::Template).body()).expect("json");
        assert_eq!(
            template,
            json!({"touser": "oU", "template_id": "T", "client_msg_id": "c1", "data": data,
                   "url": "https://u", "miniprogram": {"appid": "wxm", "pagepath": null}})
        );
        let subscribe = serde_json::to_value(message(Api::Subscribe).body()).expect("json");
        assert_eq!(
            subscribe,
            json!({"touser": "oU", "template_id": "T", "client_msg_id": "c1", "data": data,
                   "page": "pages/a", "miniprogram_state": "formal"})
        );
    }
}
