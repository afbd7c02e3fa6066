//! What a push says, read from its [`Node`] tree (docs/interface.md §9, §12): delivery receipts
//! (`TEMPLATESENDJOBFINISH`, `subscribe_msg_sent_event`), follower changes (`subscribe`,
//! `unsubscribe`), subscription consent (`subscribe_msg_popup_event`,
//! `subscribe_msg_change_event`), or anything else (answered `success`, counted, not stored).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::document::Node;
use super::platform_push::{self, PlatformInfo, PlatformPush};

/// What WeChat says became of a message (`deliveries.receipt_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ReceiptStatus {
    Delivered,
    UserBlock,
    SystemFailed,
    /// `failed:freq limit`: WeChat held it back, the user gets too many.
    FreqLimit,
}

impl ReceiptStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::UserBlock => "user_block",
            ReceiptStatus::SystemFailed => "system_failed",
            ReceiptStatus::FreqLimit => "freq_limit",
        }
    }

    /// WeChat's status text: `success`; `failed:user block` (spacing varies, and a subscribe
    /// result says `failed:user refuse to accept the msg`); `failed:freq limit`; any other
    /// failure is the system's.
    fn from_wechat(status: &str) -> Self {
        let squeezed: String = status
            .chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_lowercase)
            .collect();
        if squeezed == "success" {
            ReceiptStatus::Delivered
        } else if squeezed.starts_with("failed:user") {
            ReceiptStatus::UserBlock
        } else if squeezed == "failed:freqlimit" {
            ReceiptStatus::FreqLimit
        } else {
            ReceiptStatus::SystemFailed
        }
    }
}

/// One message's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Receipt {
    pub msgid: i64,
    pub status: ReceiptStatus,
    /// WeChat's own words, kept (bounded) for people.
    pub wechat_status: String,
}

/// The kinds of push, as the metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum EventKind {
    TemplateFinish,
    SubscribeMsgSent,
    Subscribe,
    Unsubscribe,
    ConsentPopup,
    ConsentChange,
    /// A third-party platform's pushes (docs/interface.md §10).
    Ticket,
    Authorized,
    UpdateAuthorized,
    Unauthorized,
    Other,
}

impl EventKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            EventKind::TemplateFinish => "TEMPLATESENDJOBFINISH",
            EventKind::SubscribeMsgSent => "subscribe_msg_sent_event",
            EventKind::Subscribe => "subscribe",
            EventKind::Unsubscribe => "unsubscribe",
            EventKind::ConsentPopup => "subscribe_msg_popup_event",
            EventKind::ConsentChange => "subscribe_msg_change_event",
            EventKind::Ticket => "component_verify_ticket",
            EventKind::Authorized => "authorized",
            EventKind::UpdateAuthorized => "updateauthorized",
            EventKind::Unauthorized => "unauthorized",
            EventKind::Other => "other",
        }
    }
}

/// A user's word on one subscribe template (`consent_log.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Choice {
    /// The pop-up's `accept`: one message allowed.
    Accept,
    /// The pop-up's `reject`.
    Reject,
    /// The settings page switched the template back on.
    SettingsAccept,
    /// The settings page switched it off: nothing until the next accept.
    SettingsReject,
}

impl Choice {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Choice::Accept => "accept",
            Choice::Reject => "reject",
            Choice::SettingsAccept => "settings_accept",
            Choice::SettingsReject => "settings_reject",
        }
    }
}

/// One template of a consent push, and the user's word on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Consent {
    pub template_id: String,
    pub choice: Choice,
}

/// A push, read (and, when Postgres cannot take it in time, queued as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Push {
    Receipts {
        kind: EventKind,
        openid: Option<String>,
        at: DateTime<Utc>,
        receipts: Vec<Receipt>,
    },
    Follow {
        openid: String,
        followed: bool,
        at: DateTime<Utc>,
    },
    /// Subscription consent (docs/interface.md §12).
    Consent {
        kind: EventKind,
        openid: String,
        at: DateTime<Utc>,
        /// The push's `CreateTime` as written: a repeated push is the same push.
        created: i64,
        consents: Vec<Consent>,
    },
    /// A third-party platform's push (docs/interface.md §10).
    Platform(PlatformPush),
    Other,
}

impl Push {
    /// The push with a `CreateTime` later than its arrival moved back to the arrival
    /// (docs/interface.md §9): pushes are ordered by it (newer wins), so none may outrank the ones
    /// after it by claiming the future.
    pub(crate) fn arrived_at(self, arrival: DateTime<Utc>) -> Self {
        match self {
            Push::Receipts {
                kind,
                openid,
                at,
                receipts,
            } => Push::Receipts {
                kind,
                openid,
                at: at.min(arrival),
                receipts,
            },
            Push::Follow { openid, followed, at } => Push::Follow {
                openid,
                followed,
                at: at.min(arrival),
            },
            Push::Consent {
                kind,
                openid,
                at,
                created,
                consents,
            } => Push::Consent {
                kind,
                openid,
                at: at.min(arrival),
                created,
                consents,
            },
            Push::Platform(p) => Push::Platform(PlatformPush {
                at: p.at.min(arrival),
                ..p
            }),
            Push::Other => Push::Other,
        }
    }

    pub(crate) fn kind(&self) -> EventKind {
        match self {
            Push::Receipts { kind, .. } => *kind,
            Push::Follow { followed: true, .. } => EventKind::Subscribe,
            Push::Follow { followed: false, .. } => EventKind::Unsubscribe,
            Push::Consent { kind, .. } => *kind,
            Push::Platform(p) => match &p.info {
                PlatformInfo::Ticket { .. } => EventKind::Ticket,
                PlatformInfo::Authorized { update: false, .. } => EventKind::Authorized,
                PlatformInfo::Authorized { update: true, .. } => EventKind::UpdateAuthorized,
                PlatformInfo::Unauthorized { .. } => EventKind::Unauthorized,
            },
            Push::Other => EventKind::Other,
        }
    }
}

/// Why a push cannot be read (the text names fields, never their values).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PushError {
    #[error("no {0}")]
    Missing(&'static str),
    #[error("{0} is not a 64-bit integer")]
    NotInteger(&'static str),
    #[error("CreateTime is out of range")]
    Time,
    #[error("{0} is longer than {MAX_TEXT} characters")]
    TooLong(&'static str),
    #[error("{0} holds a NUL, which Postgres text cannot store")]
    Nul(&'static str),
    #[error("a platform's push at an app's URL, or an app's at a platform's (or another platform's)")]
    Misdirected,
}

/// Openids are 28 characters; statuses a few words. Anything longer is not WeChat's.
const MAX_TEXT: usize = 128;

fn bounded<'a>(node: &'a Node, field: &'static str) -> Result<Option<&'a str>, PushError> {
    match node.text_of(field) {
        Some(t) if t.chars().count() > MAX_TEXT => Err(PushError::TooLong(field)),
        Some(t) if t.contains('\0') => Err(PushError::Nul(field)),
        other => Ok(other),
    }
}

fn required<'a>(node: &'a Node, field: &'static str) -> Result<&'a str, PushError> {
    bounded(node, field)?.ok_or(PushError::Missing(field))
}

/// An integer field read as text: exact for every i64 (MsgIDs exceed 2^53).
fn integer(node: &Node, field: &'static str) -> Result<i64, PushError> {
    required(node, field)?.parse().map_err(|_| PushError::NotInteger(field))
}

/// Reads a decrypted (or plain) push.
pub(crate) fn read(root: &Node) -> Result<Push, PushError> {
    if platform_push::is_platform_push(root) {
        return Ok(platform_push::read(root)?.map_or(Push::Other, Push::Platform));
    }
    let msg_type = required(root, "MsgType")?;
    if msg_type != "event" {
        return Ok(Push::Other);
    }
    let event = required(root, "Event")?;
    let at = || -> Result<DateTime<Utc>, PushError> {
        DateTime::from_timestamp(integer(root, "CreateTime")?, 0).ok_or(PushError::Time)
    };
    let openid = || -> Result<Option<String>, PushError> { Ok(bounded(root, "FromUserName")?.map(str::to_string)) };
    if event == "TEMPLATESENDJOBFINISH" {
        let status = required(root, "Status")?;
        return Ok(Push::Receipts {
            kind: EventKind::TemplateFinish,
            openid: openid()?,
            at: at()?,
            receipts: vec![Receipt {
                msgid: integer(root, "MsgID")?,
                status: ReceiptStatus::from_wechat(status),
                wechat_status: status.to_string(),
            }],
        });
    }
    if event == "subscribe_msg_sent_event" {
        return Ok(Push::Receipts {
            kind: EventKind::SubscribeMsgSent,
            openid: openid()?,
            at: at()?,
            receipts: subscribe_results(root)?,
        });
    }
    if let Some((kind, list)) = consent_event(event) {
        let created = integer(root, "CreateTime")?;
        return Ok(Push::Consent {
            kind,
            openid: required(root, "FromUserName")?.to_string(),
            at: at()?,
            created,
            consents: consents(root, kind, list)?,
        });
    }
    if event.eq_ignore_ascii_case("subscribe") || event.eq_ignore_ascii_case("unsubscribe") {
        return Ok(Push::Follow {
            openid: required(root, "FromUserName")?.to_string(),
            followed: event.eq_ignore_ascii_case("subscribe"),
            at: at()?,
        });
    }
    Ok(Push::Other)
}

/// The results of a `subscribe_msg_sent_event`, one per `List`.
fn subscribe_results(root: &Node) -> Result<Vec<Receipt>, PushError> {
    let list = root
        .child("SubscribeMsgSentEvent")
        .ok_or(PushError::Missing("SubscribeMsgSentEvent"))?;
    let receipts = list
        .all("List")
        .map(|item| {
            let status = required(item, "ErrorStatus")?;
            Ok(Receipt {
                msgid: integer(item, "MsgID")?,
                status: ReceiptStatus::from_wechat(status),
                wechat_status: status.to_string(),
            })
        })
        .collect::<Result<Vec<_>, PushError>>()?;
    if receipts.is_empty() {
        return Err(PushError::Missing("List"));
    }
    Ok(receipts)
}

/// A consent event's kind and the element holding its `List`s.
fn consent_event(event: &str) -> Option<(EventKind, &'static str)> {
    match event {
        "subscribe_msg_popup_event" => Some((EventKind::ConsentPopup, "SubscribeMsgPopupEvent")),
        "subscribe_msg_change_event" => Some((EventKind::ConsentChange, "SubscribeMsgChangeEvent")),
        _ => None,
    }
}

/// The templates of a consent push and the user's word on each (`List` under the event's own
/// element, or at the top as WeChat's JSON pushes put it). A status other than `accept`
/// or `reject` (WeChat's long-term subscriptions also say `ban`) moves no credit: that item is
/// skipped, the rest kept.
fn consents(root: &Node, kind: EventKind, list: &'static str) -> Result<Vec<Consent>, PushError> {
    // XML wraps the `List`s in an element named after the event; WeChat's JSON has them at the top.
    let items = root.child(list).unwrap_or(root).all("List");
    let mut consents = Vec::new();
    let mut listed = 0;
    for item in items {
        listed += 1;
        let template_id = required(item, "TemplateId")?.to_string();
        let choice = match (kind, required(item, "SubscribeStatusString")?) {
            (EventKind::ConsentPopup, "accept") => Choice::Accept,
            (EventKind::ConsentPopup, "reject") => Choice::Reject,
            (_, "accept") => Choice::SettingsAccept,
            (_, "reject") => Choice::SettingsReject,
            _ => continue,
        };
        consents.push(Consent { template_id, choice });
    }
    if listed == 0 {
        return Err(PushError::Missing("List"));
    }
    Ok(consents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::document::parse;

    fn read_body(body: &str) -> Result<Push, PushError> {
        read(&parse(body.as_bytes()).expect("a document"))
    }

    fn template_finish(status: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>\
             <FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>\
             <CreateTime>1395658920</CreateTime><MsgType><![CDATA[event]]></MsgType>\
             <Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>9007199254740993</MsgID>\
             <Status><![CDATA[{status}]]></Status></xml>"
        )
    }

    #[test]
    fn template_results_map_every_spelling() {
        for (status, expected) in [
            ("success", ReceiptStatus::Delivered),
            ("failed:user block", ReceiptStatus::UserBlock),
            ("failed: user block", ReceiptStatus::UserBlock),
            ("failed: system failed", ReceiptStatus::SystemFailed),
            ("failed:system failed", ReceiptStatus::SystemFailed),
            ("failed:freq limit", ReceiptStatus::FreqLimit),
            ("failed: freq limit", ReceiptStatus::FreqLimit),
        ] {
            let Push::Receipts {
                kind,
                openid,
                at,
                receipts,
            } = read_body(&template_finish(status)).unwrap()
            else {
                panic!("a receipt");
            };
            assert_eq!(kind, EventKind::TemplateFinish);
            assert_eq!(openid.as_deref(), Some("oia2TjuEGTNoeX76QEjQNrcURxG8"));
            assert_eq!(at.timestamp(), 1395658920);
            // 2^53 + 1: would round to 2^53 through an f64.
            assert_eq!(receipts[0].msgid, 9_007_199_254_740_993);
            assert_eq!(receipts[0].status, expected, "{status}");
            assert_eq!(receipts[0].wechat_status, status);
        }
    }

    #[test]
    fn subscribe_results_in_xml_and_both_json_shapes() {
        let xml = "<xml><ToUserName>gh</ToUserName><FromUserName>oU</FromUserName><CreateTime>1620963428</CreateTime>\
                   <MsgType>event</MsgType><Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent>\
                   <List><TemplateId>T1</TemplateId><MsgID>1700827132819554304</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List>\
                   <List><TemplateId>T2</TemplateId><MsgID>1700827132819554305</MsgID><ErrorCode>43101</ErrorCode><ErrorStatus>failed:user refuse to accept the msg</ErrorStatus></List>\
                   </SubscribeMsgSentEvent></xml>";
        let Push::Receipts { kind, receipts, .. } = read_body(xml).unwrap() else {
            panic!("receipts")
        };
        assert_eq!(kind, EventKind::SubscribeMsgSent);
        assert_eq!(
            receipts.iter().map(|r| (r.msgid, r.status)).collect::<Vec<_>>(),
            vec![
                (1_700_827_132_819_554_304, ReceiptStatus::Delivered),
                (1_700_827_132_819_554_305, ReceiptStatus::UserBlock)
            ]
        );
        let one = r#"{"ToUserName":"gh","FromUserName":"oU","CreateTime":1620963428,"MsgType":"event",
            "Event":"subscribe_msg_sent_event","SubscribeMsgSentEvent":{"List":
            {"TemplateId":"T1","MsgID":"1700827132819554304","ErrorCode":0,"ErrorStatus":"success"}}}"#;
        let many = r#"{"ToUserName":"gh","FromUserName":"oU","CreateTime":1620963428,"MsgType":"event",
            "Event":"subscribe_msg_sent_event","SubscribeMsgSentEvent":{"List":[
            {"TemplateId":"T1","MsgID":9223372036854775807,"ErrorCode":0,"ErrorStatus":"success"},
            {"TemplateId":"T2","MsgID":2,"ErrorCode":1,"ErrorStatus":"failed:system failed"}]}}"#;
        let count = |body: &str| match read_body(body).unwrap() {
            Push::Receipts { receipts, .. } => receipts,
            other => panic!("{other:?}"),
        };
        assert_eq!(count(one).len(), 1);
        let many = count(many);
        assert_eq!(many[0].msgid, i64::MAX);
        assert_eq!(many[1].status, ReceiptStatus::SystemFailed);
    }

    #[test]
    fn follower_events_and_others() {
        let ev = |event: &str| {
            format!(
                "<xml><FromUserName>oFan</FromUserName><CreateTime>100</CreateTime><MsgType>event</MsgType>\
                 <Event>{event}</Event><EventKey>qrscene_1</EventKey></xml>"
            )
        };
        assert_eq!(
            read_body(&ev("subscribe")).unwrap(),
            Push::Follow {
                openid: "oFan".into(),
                followed: true,
                at: DateTime::from_timestamp(100, 0).unwrap()
            }
        );
        assert_eq!(read_body(&ev("unsubscribe")).unwrap().kind(), EventKind::Unsubscribe);
        assert_eq!(read_body(&ev("VIEW")).unwrap(), Push::Other);
        assert_eq!(
            read_body("<xml><MsgType>text</MsgType><Content>hi</Content></xml>").unwrap(),
            Push::Other
        );
    }

    #[test]
    fn a_create_time_in_the_future_becomes_the_arrival_time() {
        let arrival = DateTime::from_timestamp(1_795_000_000, 500_000_000).unwrap();
        let follow = |at: i64| Push::Follow {
            openid: "oU".into(),
            followed: false,
            at: DateTime::from_timestamp(at, 0).unwrap(),
        };
        assert_eq!(
            follow(4_102_444_800).arrived_at(arrival),
            Push::Follow {
                openid: "oU".into(),
                followed: false,
                at: arrival
            }
        );
        assert_eq!(
            follow(1_795_000_000).arrived_at(arrival),
            follow(1_795_000_000),
            "the past is kept"
        );
        let Push::Receipts { at, .. } = read_body(&template_finish("success").replace("1395658920", "4102444800"))
            .unwrap()
            .arrived_at(arrival)
        else {
            panic!("a receipt")
        };
        assert_eq!(at, arrival);
        assert_eq!(Push::Other.arrived_at(arrival), Push::Other);
    }

    #[test]
    fn refuses_what_is_missing_or_not_a_number() {
        assert_eq!(
            read_body("<xml><Event>subscribe</Event></xml>"),
            Err(PushError::Missing("MsgType"))
        );
        let no_msgid = template_finish("success").replace("<MsgID>9007199254740993</MsgID>", "");
        assert_eq!(read_body(&no_msgid), Err(PushError::Missing("MsgID")));
        let float = template_finish("success").replace("9007199254740993", "9.007e15");
        assert_eq!(read_body(&float), Err(PushError::NotInteger("MsgID")));
        let huge = template_finish("success").replace("9007199254740993", "99999999999999999999");
        assert_eq!(read_body(&huge), Err(PushError::NotInteger("MsgID")));
        let empty_list = "<xml><CreateTime>1</CreateTime><MsgType>event</MsgType>\
                          <Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent/></xml>";
        assert_eq!(read_body(empty_list), Err(PushError::Missing("List")));
    }

    #[test]
    fn consent_pop_ups_and_settings_changes_in_xml_and_json() {
        let popup = "<xml><ToUserName><![CDATA[gh_123456789abc]]></ToUserName><FromUserName><![CDATA[oUSER]]></FromUserName>\
            <CreateTime>1610969440</CreateTime><MsgType><![CDATA[event]]></MsgType>\
            <Event><![CDATA[subscribe_msg_popup_event]]></Event>\
            <SubscribeMsgPopupEvent><List><TemplateId><![CDATA[TPL_A]]></TemplateId>\
            <SubscribeStatusString><![CDATA[accept]]></SubscribeStatusString><PopupScene>0</PopupScene></List>\
            <List><TemplateId><![CDATA[TPL_B]]></TemplateId><SubscribeStatusString><![CDATA[reject]]></SubscribeStatusString>\
            <PopupScene>0</PopupScene></List></SubscribeMsgPopupEvent></xml>";
        let choice = |template_id: &str, choice| Consent {
            template_id: template_id.into(),
            choice,
        };
        assert_eq!(
            read_body(popup).unwrap(),
            Push::Consent {
                kind: EventKind::ConsentPopup,
                openid: "oUSER".into(),
                at: DateTime::from_timestamp(1_610_969_440, 0).unwrap(),
                created: 1_610_969_440,
                consents: vec![choice("TPL_A", Choice::Accept), choice("TPL_B", Choice::Reject)],
            }
        );
        let change_one = r#"{"ToUserName":"gh","FromUserName":"oUSER","CreateTime":1610969441,"MsgType":"event",
            "Event":"subscribe_msg_change_event","SubscribeMsgChangeEvent":{"List":
            {"TemplateId":"TPL_A","SubscribeStatusString":"reject"}}}"#;
        let Push::Consent { kind, consents, .. } = read_body(change_one).unwrap() else {
            panic!("a consent push")
        };
        assert_eq!(kind, EventKind::ConsentChange);
        assert_eq!(consents, vec![choice("TPL_A", Choice::SettingsReject)]);
        let popup_many = r#"{"ToUserName":"gh","FromUserName":"oUSER","CreateTime":"1610969442","MsgType":"event",
            "Event":"subscribe_msg_popup_event","List":[
            {"TemplateId":"TPL_A","SubscribeStatusString":"accept","PopupScene":"2"},
            {"TemplateId":"TPL_C","SubscribeStatusString":"ban","PopupScene":"2"},
            {"TemplateId":"TPL_B","SubscribeStatusString":"accept","PopupScene":"2"}]}"#;
        let Push::Consent { consents, .. } = read_body(popup_many).unwrap() else {
            panic!("a consent push")
        };
        assert_eq!(
            consents,
            vec![choice("TPL_A", Choice::Accept), choice("TPL_B", Choice::Accept)],
            "an unknown status is skipped, the rest kept"
        );
        let empty = "<xml><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType>\
                     <Event>subscribe_msg_popup_event</Event><SubscribeMsgPopupEvent/></xml>";
        assert_eq!(read_body(empty), Err(PushError::Missing("List")));
        let no_template = popup.replace("<TemplateId><![CDATA[TPL_A]]></TemplateId>", "");
        assert_eq!(read_body(&no_template), Err(PushError::Missing("TemplateId")));
        let future = read_body(popup)
            .unwrap()
            .arrived_at(DateTime::from_timestamp(1_610_969_000, 0).unwrap());
        let Push::Consent { at, created, .. } = future else {
            panic!("a consent push")
        };
        assert_eq!(
            (at.timestamp(), created),
            (1_610_969_000, 1_610_969_440),
            "ordered by arrival, recognised by CreateTime"
        );
    }
}
