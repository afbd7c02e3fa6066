//! One merchant (an "authorizer": an official account that authorized a platform), as WeChat
//! keeps it: whether the authorization stands, its permissions (`func_info`), **exactly one valid
//! refresh token** (born when an authorization code is exchanged, replaced by the next exchange,
//! gone with a revocation), and the templates added to its account (at most 25).

use serde::{Deserialize, Serialize};
use wechat_rules::errcode::TEMPLATE_LIMIT;

use super::lease::random_value;

/// The most templates an account holds (WeChat: 25); one more is refused with 45026.
pub const MAX_TEMPLATES: usize = 25;

/// The permission sets granted when an authorization names none: message management (1), user
/// management (2), account services (3), web services (4), and a few more.
pub(crate) const DEFAULT_FUNC_INFO: [u32; 6] = [1, 2, 3, 4, 7, 11];

/// A template on a merchant's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantTemplate {
    /// The id sends must use: this merchant's own.
    pub template_id: String,
    /// The library template it was added from (`template_id_short`).
    pub library_id: String,
    /// The keyword names asked for (`keyword_name_list`).
    pub keywords: Vec<String>,
}

/// A merchant's standing with one platform.
#[derive(Debug, Clone, Default)]
pub(crate) struct Merchant {
    /// The authorization stands (authorized, or re-authorized after a revocation).
    pub(crate) authorized: bool,
    pub(crate) func_info: Vec<u32>,
    /// The last authorization, Unix seconds.
    pub(crate) auth_time: i64,
    /// The one refresh token WeChat accepts; `None` until a code is exchanged, and after a
    /// revocation.
    pub(crate) refresh_token: Option<String>,
    pub(crate) templates: Vec<MerchantTemplate>,
    /// Sends accepted from its account (`merchant_rotate_every` counts them).
    pub(crate) accepted: u64,
    /// Numbers the templates it was given, so no id is ever given twice.
    template_serial: u64,
}

impl Merchant {
    /// A new refresh token replaces the current one (which stops working at once).
    pub(crate) fn new_refresh_token(&mut self) -> String {
        let value = format!("refreshtoken@@@{}", random_value(43));
        self.refresh_token = Some(value.clone());
        value
    }

    /// `given` is the merchant's current refresh token and the authorization stands.
    pub(crate) fn refresh_token_is(&self, given: &str) -> bool {
        self.authorized && self.refresh_token.as_deref() == Some(given)
    }

    /// The authorization ends: the refresh token stops working at once.
    pub(crate) fn revoke(&mut self) {
        self.authorized = false;
        self.refresh_token = None;
    }

    /// Adds `library_id` to the account as `authorizer`'s new template; its id, or 45026 when the
    /// account is full. Every call adds one, as WeChat's does (adding twice fills the account
    /// twice as fast).
    pub(crate) fn add_template(
        &mut self,
        authorizer: &str,
        library_id: &str,
        keywords: Vec<String>,
    ) -> Result<String, i64> {
        if self.templates.len() >= MAX_TEMPLATES {
            return Err(TEMPLATE_LIMIT);
        }
        self.template_serial += 1;
        let template_id = format!("{authorizer}_{library_id}_{}", self.template_serial);
        self.templates.push(MerchantTemplate {
            template_id: template_id.clone(),
            library_id: library_id.to_string(),
            keywords,
        });
        Ok(template_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_refresh_token_at_a_time_and_none_after_a_revocation() {
        let mut m = Merchant {
            authorized: true,
            ..Merchant::default()
        };
        assert!(!m.refresh_token_is(""), "none before an exchange");
        let first = m.new_refresh_token();
        assert!(m.refresh_token_is(&first));
        let second = m.new_refresh_token();
        assert!(!m.refresh_token_is(&first), "replaced at once");
        assert!(m.refresh_token_is(&second));
        m.revoke();
        assert!(!m.refresh_token_is(&second));
        assert_eq!(m.refresh_token, None);
    }

    #[test]
    fn the_twenty_sixth_template_is_refused_with_45026() {
        let mut m = Merchant::default();
        let ids: Vec<String> = (0..MAX_TEMPLATES)
            .map(|_| m.add_template("wxM", "OPENTM1", vec!["门店".into()]).unwrap())
            .collect();
        assert_eq!(ids[0], "wxM_OPENTM1_1");
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), MAX_TEMPLATES, "every call adds a new one");
        assert_eq!(m.add_template("wxM", "OPENTM2", vec![]), Err(TEMPLATE_LIMIT));
        assert_eq!(m.templates.len(), MAX_TEMPLATES);
    }
}
