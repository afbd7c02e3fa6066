//! What each push says, as one tree of named fields, and the two ways WeChat writes it
//! (`WECHAT_API.md`, "Event push"): XML (text in CDATA, numbers bare), or the same fields as a JSON
//! object for a mini program set to JSON (numbers as numbers; a repeated element such as `List`
//! an object when there is one and an array when there are several).

use serde_json::{Map, Value};

use crate::consent::{ConsentItem, ConsentKind};

/// One field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// Text: CDATA in XML, a string in JSON.
    Text(String),
    /// Text written bare in XML (escaped), as the platform's authorization events are; a string
    /// in JSON.
    Bare(String),
    /// A number (MsgID may exceed 2^53: written exactly either way).
    Number(i64),
    /// An element holding fields (`SubscribeMsgSentEvent`).
    Group(Document),
    /// The same element once per item (`List`).
    Items(Vec<Document>),
}

/// A push's fields, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Document(Vec<(&'static str, Field)>);

impl Document {
    /// Adds a text field.
    pub fn text(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.0.push((name, Field::Text(value.into())));
        self
    }

    /// Adds a text field written bare in XML (no CDATA).
    pub fn bare(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.0.push((name, Field::Bare(value.into())));
        self
    }

    /// Adds a number field.
    pub fn number(mut self, name: &'static str, value: i64) -> Self {
        self.0.push((name, Field::Number(value)));
        self
    }

    /// Adds an element holding `fields`.
    pub fn group(mut self, name: &'static str, fields: Document) -> Self {
        self.0.push((name, Field::Group(fields)));
        self
    }

    /// Adds one element called `name` per item.
    pub fn items(mut self, name: &'static str, items: Vec<Document>) -> Self {
        self.0.push((name, Field::Items(items)));
        self
    }

    /// `<xml>…</xml>`, as WeChat writes it.
    pub fn xml(&self) -> String {
        let mut out = String::from("<xml>");
        self.write_xml(&mut out);
        out.push_str("</xml>");
        out
    }

    fn write_xml(&self, out: &mut String) {
        for (name, field) in &self.0 {
            match field {
                Field::Text(t) => {
                    // `]]>` cannot stand inside CDATA: split it across two sections.
                    let t = t.replace("]]>", "]]]]><![CDATA[>");
                    out.push_str(&format!("<{name}><![CDATA[{t}]]></{name}>"));
                }
                Field::Bare(t) => {
                    let t = t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
                    out.push_str(&format!("<{name}>{t}</{name}>"));
                }
                Field::Number(n) => out.push_str(&format!("<{name}>{n}</{name}>")),
                Field::Group(d) => {
                    out.push_str(&format!("<{name}>"));
                    d.write_xml(out);
                    out.push_str(&format!("</{name}>"));
                }
                Field::Items(items) => {
                    for d in items {
                        out.push_str(&format!("<{name}>"));
                        d.write_xml(out);
                        out.push_str(&format!("</{name}>"));
                    }
                }
            }
        }
    }

    /// The same fields as a JSON object.
    pub fn json(&self) -> Map<String, Value> {
        self.0
            .iter()
            .map(|(name, field)| {
                let value = match field {
                    Field::Text(t) | Field::Bare(t) => Value::from(t.as_str()),
                    Field::Number(n) => Value::from(*n),
                    Field::Group(d) => Value::Object(d.json()),
                    Field::Items(items) => match items.as_slice() {
                        [one] => Value::Object(one.json()),
                        many => Value::Array(many.iter().map(|d| Value::Object(d.json())).collect()),
                    },
                };
                (name.to_string(), value)
            })
            .collect()
    }
}

/// The fields every event push starts with; `openid` is the user's.
fn event(openid: &str, created: i64, event: &str) -> Document {
    Document::default()
        .text("ToUserName", "gh_sim")
        .text("FromUserName", openid)
        .number("CreateTime", created)
        .text("MsgType", "event")
        .text("Event", event)
}

/// A template message's result (`TEMPLATESENDJOBFINISH`).
pub fn template_finish(openid: &str, created: i64, msgid: i64, status: &str) -> Document {
    event(openid, created, "TEMPLATESENDJOBFINISH")
        .number("MsgID", msgid)
        .text("Status", status)
}

/// A subscribe message's result (`subscribe_msg_sent_event`, one `List`).
pub fn subscribe_msg_sent(openid: &str, created: i64, template_id: &str, msgid: i64, status: &str) -> Document {
    let errcode = match status {
        "success" => 0,
        s if s.contains("user") => wechat_rules::errcode::USER_REFUSED,
        _ => 43107,
    };
    let item = Document::default()
        .text("TemplateId", template_id)
        .number("MsgID", msgid)
        .number("ErrorCode", errcode)
        .text("ErrorStatus", status);
    event(openid, created, "subscribe_msg_sent_event")
        .group("SubscribeMsgSentEvent", Document::default().items("List", vec![item]))
}

/// `subscribe` (followed) or `unsubscribe` (left).
pub fn follow(openid: &str, created: i64, followed: bool) -> Document {
    let name = if followed { "subscribe" } else { "unsubscribe" };
    event(openid, created, name).text("EventKey", "")
}

/// The user's answers in a subscription pop-up (`subscribe_msg_popup_event`, `PopupScene` 0: a
/// mini program page) or on the settings page (`subscribe_msg_change_event`), one `List` each.
pub fn consent(openid: &str, created: i64, kind: ConsentKind, list: &[ConsentItem]) -> Document {
    let item = |i: &ConsentItem| {
        let d = Document::default()
            .text("TemplateId", i.template_id.as_str())
            .text("SubscribeStatusString", i.status.as_str());
        match kind {
            ConsentKind::Popup => d.number("PopupScene", 0),
            ConsentKind::Settings => d,
        }
    };
    let (name, group) = match kind {
        ConsentKind::Popup => ("subscribe_msg_popup_event", "SubscribeMsgPopupEvent"),
        ConsentKind::Settings => ("subscribe_msg_change_event", "SubscribeMsgChangeEvent"),
    };
    let list = list.iter().map(item).collect();
    event(openid, created, name).group(group, Document::default().items("List", list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::ConsentStatus;

    #[test]
    fn xml_writes_text_in_cdata_and_numbers_bare() {
        assert_eq!(
            template_finish("oU", 1395658920, 9_007_199_254_740_993, "success").xml(),
            "<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName>\
             <CreateTime>1395658920</CreateTime><MsgType><![CDATA[event]]></MsgType>\
             <Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>9007199254740993</MsgID>\
             <Status><![CDATA[success]]></Status></xml>"
        );
        let tricky = Document::default().text("A", "x]]>y").xml();
        assert_eq!(tricky, "<xml><A><![CDATA[x]]]]><![CDATA[>y]]></A></xml>");
    }

    #[test]
    fn bare_text_is_escaped_in_xml_and_a_string_in_json() {
        let d = Document::default().bare("AppId", "wx3").bare("A", "a<b&c>");
        assert_eq!(d.xml(), "<xml><AppId>wx3</AppId><A>a&lt;b&amp;c&gt;</A></xml>");
        assert_eq!(d.json()["A"], Value::from("a<b&c>"));
    }

    #[test]
    fn json_lists_are_an_object_for_one_item_and_an_array_for_several() {
        let one = subscribe_msg_sent("oU", 1, "TPL", 9_007_199_254_740_993, "success").json();
        assert_eq!(one["CreateTime"], Value::from(1));
        let list = &one["SubscribeMsgSentEvent"]["List"];
        assert!(list.is_object(), "{list}");
        assert_eq!(list["MsgID"].to_string(), "9007199254740993");
        let items = [
            ConsentItem {
                template_id: "A".into(),
                status: ConsentStatus::Accept,
            },
            ConsentItem {
                template_id: "B".into(),
                status: ConsentStatus::Reject,
            },
        ];
        let two = consent("oU", 1, ConsentKind::Popup, &items).json();
        let list = two["SubscribeMsgPopupEvent"]["List"].as_array().expect("an array");
        assert_eq!(list[1]["SubscribeStatusString"], "reject");
        assert_eq!(list[0]["PopupScene"], Value::from(0));
    }
}
