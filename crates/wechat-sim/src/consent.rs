//! Subscription consent, as WeChat keeps it (`WECHAT_API.md`, "Subscription consent (mini
//! program)"): each one-time `accept` in a pop-up (`wx.requestSubscribeMessage`) allows one
//! subscribe message of that template to that user; a `reject` in the pop-up changes nothing. A
//! `reject` on the settings page (`subscribe_msg_change_event`) takes every credit away and blocks
//! the template for the user until the next pop-up `accept`; an `accept` there only lifts the block.
//!
//! The credits are kept per (appid, openid, template id) whether or not they are enforced; with
//! `SimConfig::enforce_consent` a subscribe send needs one and an accepted send uses it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Where the user made the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentKind {
    /// The pop-up of `wx.requestSubscribeMessage` (pushed as `subscribe_msg_popup_event`).
    Popup,
    /// The settings page (pushed as `subscribe_msg_change_event`; WeChat documents pushing only
    /// rejects from there, so a test that means to be realistic passes rejects only).
    Settings,
}

/// The user's answer for one template, as WeChat writes it (`SubscribeStatusString`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    Accept,
    Reject,
}

impl ConsentStatus {
    /// `accept` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::Accept => "accept",
            ConsentStatus::Reject => "reject",
        }
    }
}

/// One template's answer in a consent event (one `<List>` of the push).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentItem {
    pub template_id: String,
    pub status: ConsentStatus,
}

/// One user's standing with one template.
#[derive(Debug, Clone, Copy, Default)]
struct Standing {
    /// Messages the user still allows (one per pop-up `accept`).
    credits: u32,
    /// Refused on the settings page; lifted by the next pop-up `accept` (or a settings `accept`).
    blocked: bool,
}

/// Credits per (appid, openid, template id).
#[derive(Debug, Default)]
pub(crate) struct Credits {
    standing: HashMap<(String, String, String), Standing>,
}

fn key(appid: &str, openid: &str, template_id: &str) -> (String, String, String) {
    (appid.to_string(), openid.to_string(), template_id.to_string())
}

impl Credits {
    /// Applies one answer the user gave in `kind`.
    pub(crate) fn apply(&mut self, appid: &str, openid: &str, kind: ConsentKind, item: &ConsentItem) {
        let s = self.standing.entry(key(appid, openid, &item.template_id)).or_default();
        match (kind, item.status) {
            (ConsentKind::Popup, ConsentStatus::Accept) => {
                s.credits = s.credits.saturating_add(1);
                s.blocked = false;
            }
            (ConsentKind::Popup, ConsentStatus::Reject) => {}
            (ConsentKind::Settings, ConsentStatus::Reject) => {
                *s = Standing {
                    credits: 0,
                    blocked: true,
                }
            }
            (ConsentKind::Settings, ConsentStatus::Accept) => s.blocked = false,
        }
    }

    /// The messages of `template_id` the user still allows (0 while blocked).
    pub(crate) fn get(&self, appid: &str, openid: &str, template_id: &str) -> u32 {
        self.standing
            .get(&key(appid, openid, template_id))
            .filter(|s| !s.blocked)
            .map_or(0, |s| s.credits)
    }

    /// Uses one credit; `false` when there was none to use.
    pub(crate) fn take(&mut self, appid: &str, openid: &str, template_id: &str) -> bool {
        match self.standing.get_mut(&key(appid, openid, template_id)) {
            Some(s) if !s.blocked && s.credits > 0 => {
                s.credits -= 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "wxMini";

    fn item(template_id: &str, status: ConsentStatus) -> ConsentItem {
        ConsentItem {
            template_id: template_id.into(),
            status,
        }
    }

    #[test]
    fn each_popup_accept_adds_one_credit_and_a_popup_reject_changes_nothing() {
        let mut c = Credits::default();
        assert_eq!(c.get(APP, "oU", "TPL_A"), 0);
        c.apply(APP, "oU", ConsentKind::Popup, &item("TPL_A", ConsentStatus::Accept));
        c.apply(APP, "oU", ConsentKind::Popup, &item("TPL_A", ConsentStatus::Accept));
        c.apply(APP, "oU", ConsentKind::Popup, &item("TPL_A", ConsentStatus::Reject));
        assert_eq!(c.get(APP, "oU", "TPL_A"), 2);
        assert_eq!(c.get(APP, "oU", "TPL_B"), 0, "per template");
        assert_eq!(c.get(APP, "oOther", "TPL_A"), 0, "per user");
        assert_eq!(c.get("wxOther", "oU", "TPL_A"), 0, "per app");
        assert!(c.take(APP, "oU", "TPL_A"));
        assert!(c.take(APP, "oU", "TPL_A"));
        assert!(!c.take(APP, "oU", "TPL_A"), "used up");
        assert_eq!(c.get(APP, "oU", "TPL_A"), 0);
    }

    #[test]
    fn a_settings_reject_clears_and_blocks_until_the_next_popup_accept() {
        let mut c = Credits::default();
        c.apply(APP, "oU", ConsentKind::Popup, &item("TPL_A", ConsentStatus::Accept));
        c.apply(APP, "oU", ConsentKind::Popup, &item("TPL_A", ConsentStatus::Accept));
        c.apply(APP, "oU", ConsentKind::Settings, &item("TPL_A", ConsentStatus::Reject));
        assert_eq!(c.get(APP, "oU", "TPL_A"), 0);
        assert!(!c.take(APP, "oU", "TPL_A"));
        c.apply(APP, "oU", ConsentKind::Popup, &item("TPL_A", ConsentStatus::Accept));
        assert_eq!(
            c.get(APP, "oU", "TPL_A"),
            1,
            "the pop-up accept lifts the block and counts"
        );
        assert!(c.take(APP, "oU", "TPL_A"));
    }

    #[test]
    fn a_settings_accept_only_lifts_the_block() {
        let mut c = Credits::default();
        c.apply(APP, "oU", ConsentKind::Settings, &item("TPL_A", ConsentStatus::Reject));
        c.apply(APP, "oU", ConsentKind::Settings, &item("TPL_A", ConsentStatus::Accept));
        assert_eq!(c.get(APP, "oU", "TPL_A"), 0, "no credit from the settings page");
        c.apply(APP, "oU", ConsentKind::Popup, &item("TPL_A", ConsentStatus::Accept));
        c.apply(APP, "oU", ConsentKind::Settings, &item("TPL_A", ConsentStatus::Accept));
        assert_eq!(c.get(APP, "oU", "TPL_A"), 1, "nor does it take one away");
    }
}
