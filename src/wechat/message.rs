//! The JSON bodies of `message/template/send` and `message/subscribe/send`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

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
    /// The request body WeChat expects for this message's API.
    pub fn body(&self) -> Value {
        let data: Map<String, Value> = self
            .data
            .iter()
            .map(|(k, v)| (k.clone(), json!({ "value": v })))
            .collect();
        let mut body = json!({
            "touser": self.touser,
            "template_id": self.template_id,
            "client_msg_id": self.client_msg_id,
            "data": data,
        });
        let obj = body.as_object_mut().expect("object literal");
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                obj.insert(k.to_string(), Value::String(v.clone()));
            }
        };
        match self.api {
            Api::Template => {
                put("url", &self.url);
                if let Some(mp) = &self.miniprogram {
                    obj.insert("miniprogram".into(), serde_json::to_value(mp).expect("plain struct"));
                }
            }
            Api::Subscribe => {
                put("page", &self.page);
                put("miniprogram_state", &self.miniprogram_state);
                put("lang", &self.lang);
            }
        }
        body
    }
}
