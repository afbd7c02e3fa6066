//! The platform's rules end to end inside one simulator state: onboarding, tokens and refresh
//! tokens, revocation, templates, and sends with a merchant's token.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wechat_rules::errcode::{
    ARGUMENT_INVALID, AUTH_CODE_EXPIRED, AUTH_CODE_INVALID, COMPONENT_NOT_AUTHORIZED, INVALID_APPID, INVALID_APPSECRET,
    INVALID_TEMPLATE_ID, REFRESH_TOKEN_INVALID, SYSTEM_BUSY, TEMPLATE_LIMIT, TOKEN_EXPIRED, TOKEN_INVALID,
    TOKEN_MISSING, VERIFY_TICKET_EXPIRED, VERIFY_TICKET_INVALID,
};

use super::PlatformConfig;
use super::api::Api;
use super::event::PlatformInfo;
use super::merchant::MAX_TEMPLATES;
use super::onboard::Authorize;
use crate::state::{SimConfig, SimState};

const C: &str = "wx3333333333333333";
const OTHER: &str = "wx4444444444444444";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn platform(secret: &str) -> PlatformConfig {
    PlatformConfig {
        secret: secret.into(),
        token: "ptoken".into(),
        aes_key: KEY.into(),
    }
}

/// A simulator knowing two platforms.
fn sim() -> SimState {
    let mut config = SimConfig::default();
    config.platforms.insert(C.into(), platform("csecret"));
    config.platforms.insert(OTHER.into(), platform("osecret"));
    SimState::new(config)
}

/// Calls `api` with `token` and `body`; the answer.
fn call(s: &mut SimState, api: Api, token: Option<&str>, body: Value) -> Value {
    let (status, reply) = s.platforms.call(&s.config, api, token, body.to_string().as_bytes());
    assert_eq!(status, 200);
    reply
}

fn errcode(reply: &Value) -> i64 {
    reply["errcode"].as_i64().unwrap_or(0)
}

/// A component token of `component`, from a ticket pushed now.
fn component_token(s: &mut SimState, component: &str) -> String {
    let ticket = s.platforms.push_ticket(&s.config.clone(), component).unwrap();
    let secret = s.config.platforms[component].secret.clone();
    let body =
        json!({ "component_appid": component, "component_appsecret": secret, "component_verify_ticket": ticket });
    let reply = call(s, Api::ComponentToken, None, body);
    assert_eq!(reply["expires_in"], s.config.token_ttl.as_secs(), "{reply}");
    reply["component_access_token"].as_str().unwrap().to_string()
}

/// `authorizer` authorizes `C`; its authorization code.
fn authorize(s: &mut SimState, authorizer: &str) -> String {
    let config = s.config.clone();
    let done = s
        .platforms
        .authorize(&config, &Authorize::new(C, authorizer), false)
        .unwrap();
    done.authorization.authorization_code
}

/// Exchanges `code`; (access token, refresh token).
fn exchange(s: &mut SimState, ctoken: &str, code: &str) -> (String, String) {
    let reply = call(
        s,
        Api::QueryAuth,
        Some(ctoken),
        json!({ "component_appid": C, "authorization_code": code }),
    );
    let info = &reply["authorization_info"];
    let get = |k: &str| info[k].as_str().unwrap_or_else(|| panic!("{k} in {reply}")).to_string();
    (get("authorizer_access_token"), get("authorizer_refresh_token"))
}

/// A refresh of `authorizer`'s token with `refresh`: the answer.
fn refresh(s: &mut SimState, ctoken: &str, authorizer: &str, refresh: &str) -> Value {
    let body = json!({ "component_appid": C, "authorizer_appid": authorizer, "authorizer_refresh_token": refresh });
    call(s, Api::AuthorizerToken, Some(ctoken), body)
}

/// An onboarded merchant: (component token, access token, refresh token).
fn onboarded(s: &mut SimState, authorizer: &str) -> (String, String, String) {
    let ctoken = component_token(s, C);
    let code = authorize(s, authorizer);
    let (access, refresh) = exchange(s, &ctoken, &code);
    (ctoken, access, refresh)
}

/// A template send with `token` of `template_id`; the answer.
fn send(s: &mut SimState, token: &str, template_id: &str) -> Value {
    let body = json!({ "touser": "oU", "template_id": template_id, "data": { "thing1": { "value": "精洗套餐" } } });
    s.send("template", Some(token), body.to_string().as_bytes()).1
}

#[test]
fn a_pushed_ticket_and_the_secret_get_a_component_token_nothing_else_does() {
    let mut s = sim();
    let ticket = s.platforms.push_ticket(&s.config.clone(), C).unwrap();
    let token = |s: &mut SimState, appid: &str, secret: &str, ticket: &str| {
        let body =
            json!({ "component_appid": appid, "component_appsecret": secret, "component_verify_ticket": ticket });
        errcode(&call(s, Api::ComponentToken, None, body))
    };
    assert_eq!(token(&mut s, C, "csecret", &ticket), 0);
    assert_eq!(token(&mut s, C, "wrong", &ticket), INVALID_APPSECRET);
    assert_eq!(token(&mut s, "wxUnknown", "csecret", &ticket), INVALID_APPID);
    assert_eq!(token(&mut s, C, "csecret", "ticket@@@forged"), VERIFY_TICKET_INVALID);
    assert_eq!(
        token(&mut s, OTHER, "osecret", &ticket),
        VERIFY_TICKET_INVALID,
        "another platform's"
    );
    s.platforms.expire_tickets(&s.config.clone(), C);
    assert_eq!(token(&mut s, C, "csecret", &ticket), VERIFY_TICKET_EXPIRED);
    assert_eq!(s.platforms.stats.component_token_calls[C], 4);
    assert_eq!(s.platforms.stats.errors[&VERIFY_TICKET_EXPIRED], 1);
    assert_eq!(s.platforms.stats.tickets_issued[C], 1);
}

#[test]
fn every_component_token_call_issues_a_new_token_the_last_one_keeps_the_overlap() {
    let mut s = sim();
    let first = component_token(&mut s, C);
    let second = component_token(&mut s, C);
    assert_ne!(first, second);
    let body = json!({ "component_appid": C });
    for t in [&first, &second] {
        assert_eq!(errcode(&call(&mut s, Api::CreatePreauthcode, Some(t), body.clone())), 0);
    }
    s.config.overlap = Duration::ZERO;
    assert_eq!(
        errcode(&call(&mut s, Api::CreatePreauthcode, Some(&first), body.clone())),
        TOKEN_INVALID
    );
    assert_eq!(errcode(&call(&mut s, Api::CreatePreauthcode, Some(&second), body)), 0);
}

#[test]
fn component_apis_need_the_platforms_own_valid_component_token() {
    let mut s = sim();
    let ctoken = component_token(&mut s, C);
    let body = json!({ "component_appid": C });
    let code = |s: &mut SimState, t: Option<&str>, b: &Value| errcode(&call(s, Api::CreatePreauthcode, t, b.clone()));
    assert_eq!(code(&mut s, None, &body), TOKEN_MISSING);
    assert_eq!(code(&mut s, Some(""), &body), TOKEN_MISSING);
    assert_eq!(code(&mut s, Some("forged"), &body), TOKEN_INVALID);
    assert_eq!(
        code(&mut s, Some(&ctoken), &json!({ "component_appid": OTHER })),
        INVALID_APPID
    );
    let reply = call(&mut s, Api::CreatePreauthcode, Some(&ctoken), body.clone());
    assert!(reply["pre_auth_code"].as_str().unwrap().starts_with("preauthcode@@@"));
    assert_eq!(reply["expires_in"], 1800);
    s.config.token_ttl = Duration::ZERO;
    let expired = component_token(&mut s, C);
    assert_eq!(code(&mut s, Some(&expired), &body), TOKEN_EXPIRED);
    assert_eq!(s.platforms.stats.preauthcode_calls, 6);
}

#[test]
fn an_authorization_code_is_exchanged_once_for_tokens_and_the_refresh_token() {
    let mut s = sim();
    let ctoken = component_token(&mut s, C);
    let pre = call(
        &mut s,
        Api::CreatePreauthcode,
        Some(&ctoken),
        json!({ "component_appid": C }),
    );
    let pre = pre["pre_auth_code"].as_str().unwrap().to_string();
    let request = Authorize {
        func_info: Some(vec![1, 2]),
        pre_auth_code: Some(pre.clone()),
        ..Authorize::new(C, "wxM1")
    };
    let config = s.config.clone();
    let done = s.platforms.authorize(&config, &request, false).unwrap();
    assert_eq!(done.info_type, "authorized");
    assert_eq!(done.authorization.pre_auth_code, pre);
    assert!(
        s.platforms.authorize(&config, &request, false).is_err(),
        "the pre-auth code is used up"
    );
    let code = done.authorization.authorization_code;
    let reply = call(
        &mut s,
        Api::QueryAuth,
        Some(&ctoken),
        json!({ "component_appid": C, "authorization_code": code }),
    );
    let info = &reply["authorization_info"];
    assert_eq!(info["authorizer_appid"], "wxM1");
    assert_eq!(info["expires_in"], 7200);
    assert_eq!(
        info["func_info"],
        json!([{ "funcscope_category": { "id": 1 } }, { "funcscope_category": { "id": 2 } }])
    );
    let refresh = info["authorizer_refresh_token"].as_str().unwrap();
    assert_eq!(s.platforms.merchants()[0].refresh_token.as_deref(), Some(refresh));
    let again = call(
        &mut s,
        Api::QueryAuth,
        Some(&ctoken),
        json!({ "component_appid": C, "authorization_code": code }),
    );
    assert_eq!(errcode(&again), AUTH_CODE_INVALID, "used");
    let stale = authorize(&mut s, "wxM2");
    s.platforms
        .each
        .get_mut(C)
        .unwrap()
        .auth_codes
        .get_mut(&stale)
        .unwrap()
        .expires = Instant::now();
    let late = call(
        &mut s,
        Api::QueryAuth,
        Some(&ctoken),
        json!({ "component_appid": C, "authorization_code": stale }),
    );
    assert_eq!(errcode(&late), AUTH_CODE_EXPIRED);
}

#[test]
fn a_refresh_returns_the_same_refresh_token_and_only_the_current_one_works() {
    let mut s = sim();
    let (ctoken, access, first) = onboarded(&mut s, "wxM1");
    let reply = refresh(&mut s, &ctoken, "wxM1", &first);
    assert_eq!(reply["authorizer_refresh_token"], first.as_str(), "{reply}");
    assert_eq!(reply["expires_in"], 7200);
    assert_ne!(reply["authorizer_access_token"], access.as_str());
    // Re-authorized: the old refresh token works until the new code is exchanged.
    let code = authorize(&mut s, "wxM1");
    assert_eq!(errcode(&refresh(&mut s, &ctoken, "wxM1", &first)), 0);
    let (new_access, second) = exchange(&mut s, &ctoken, &code);
    assert_ne!(first, second);
    assert_eq!(
        errcode(&refresh(&mut s, &ctoken, "wxM1", &first)),
        REFRESH_TOKEN_INVALID
    );
    assert_eq!(errcode(&refresh(&mut s, &ctoken, "wxM1", &second)), 0);
    assert_eq!(
        errcode(&send(&mut s, &access, "TPL")),
        TOKEN_INVALID,
        "old tokens stop at the exchange"
    );
    assert_eq!(errcode(&send(&mut s, &new_access, "TPL")), 0);
    assert_eq!(
        errcode(&refresh(&mut s, &ctoken, "wxNever", &second)),
        COMPONENT_NOT_AUTHORIZED
    );
    let stats = &s.platforms.stats;
    assert_eq!(stats.refresh_token_invalid, 1);
    assert_eq!(stats.authorizer_token_calls, 5);
    assert_eq!(stats.authorizer_token_calls_by_merchant["wxM1"], 4);
}

#[test]
fn a_harsher_wechat_rotates_the_refresh_token_on_every_refresh() {
    let mut s = sim();
    let (ctoken, _, first) = onboarded(&mut s, "wxM1");
    s.config.faults.rotate_refresh_on_refresh = true;
    let reply = refresh(&mut s, &ctoken, "wxM1", &first);
    let second = reply["authorizer_refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(
        errcode(&refresh(&mut s, &ctoken, "wxM1", &first)),
        REFRESH_TOKEN_INVALID,
        "at once"
    );
    let listed = call(
        &mut s,
        Api::AuthorizerList,
        Some(&ctoken),
        json!({ "component_appid": C, "offset": 0, "count": 500 }),
    );
    assert_eq!(
        listed["list"][0]["refresh_token"],
        second.as_str(),
        "the list has the current one"
    );
    assert_eq!(s.platforms.stats.refresh_tokens_rotated, 1);
    assert_eq!(s.platforms.refresh_token_of(C, "wxM1"), Some(second));
}

#[test]
fn a_revocation_stops_tokens_refresh_token_and_codes_at_once_until_reauthorized() {
    let mut s = sim();
    let (ctoken, access, refresh_token) = onboarded(&mut s, "wxM1");
    let pending = authorize(&mut s, "wxM1");
    let config = s.config.clone();
    s.platforms.revoke(&config, C, "wxM1").unwrap();
    assert!(
        s.platforms.revoke(&config, C, "wxM1").is_err(),
        "not authorized any more"
    );
    assert_eq!(errcode(&send(&mut s, &access, "TPL")), TOKEN_INVALID);
    assert_eq!(
        errcode(&refresh(&mut s, &ctoken, "wxM1", &refresh_token)),
        REFRESH_TOKEN_INVALID
    );
    assert_eq!(s.platforms.refresh_token_of(C, "wxM1"), None);
    let exchanged = call(
        &mut s,
        Api::QueryAuth,
        Some(&ctoken),
        json!({ "component_appid": C, "authorization_code": pending }),
    );
    assert_eq!(errcode(&exchanged), AUTH_CODE_INVALID);
    let list = |s: &mut SimState| {
        call(
            s,
            Api::AuthorizerList,
            Some(&ctoken),
            json!({ "component_appid": C, "offset": 0, "count": 10 }),
        )
    };
    assert_eq!(list(&mut s)["total_count"], 0);
    assert!(
        s.platforms
            .authorize(&config, &Authorize::new(C, "wxNew"), true)
            .is_err(),
        "never authorized"
    );
    let done = s
        .platforms
        .authorize(&config, &Authorize::new(C, "wxM1"), true)
        .unwrap();
    assert_eq!(done.info_type, "authorized");
    assert!(
        s.platforms
            .authorize(&config, &Authorize::new(C, "wxM1"), true)
            .is_err(),
        "authorized now"
    );
    let listed = list(&mut s);
    assert_eq!(listed["list"][0]["refresh_token"], "", "authorized, code not exchanged");
    let (_, fresh) = exchange(&mut s, &ctoken, &done.authorization.authorization_code);
    assert_ne!(fresh, refresh_token);
    assert_eq!(errcode(&refresh(&mut s, &ctoken, "wxM1", &fresh)), 0);
}

#[test]
fn authorizations_are_pushed_only_when_the_platforms_url_is_set() {
    let mut s = sim();
    authorize(&mut s, "wxM1");
    assert!(s.platforms.outbox.is_empty());
    s.config.platform_push.callback_url = Some("http://127.0.0.1:9/wechat/platform/{component_appid}".into());
    authorize(&mut s, "wxM1");
    let config = s.config.clone();
    s.platforms.revoke(&config, C, "wxM1").unwrap();
    let kinds: Vec<&str> = s
        .platforms
        .outbox
        .iter()
        .map(|e| match &e.info {
            PlatformInfo::Authorized(_) => "authorized",
            PlatformInfo::UpdateAuthorized(_) => "updateauthorized",
            PlatformInfo::Unauthorized { .. } => "unauthorized",
            PlatformInfo::ComponentVerifyTicket { .. } => "ticket",
        })
        .collect();
    assert_eq!(kinds, ["updateauthorized", "unauthorized"]);
    assert!(s.platforms.outbox.iter().all(|e| e.component_appid == C));
}

#[test]
fn the_authorizer_list_pages_through_authorized_merchants() {
    let mut s = sim();
    let ctoken = component_token(&mut s, C);
    for m in ["wxA", "wxB", "wxC", "wxD"] {
        authorize(&mut s, m);
    }
    let config = s.config.clone();
    s.platforms.revoke(&config, C, "wxB").unwrap();
    let page = |s: &mut SimState, offset: u64, count: u64| {
        call(
            s,
            Api::AuthorizerList,
            Some(&ctoken),
            json!({ "component_appid": C, "offset": offset, "count": count }),
        )
    };
    let first = page(&mut s, 0, 2);
    assert_eq!(first["total_count"], 3);
    let appids = |v: &Value| -> Vec<String> {
        v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["authorizer_appid"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(appids(&first), ["wxA", "wxC"]);
    assert_eq!(appids(&page(&mut s, 2, 2)), ["wxD"]);
    assert!(first["list"][0]["auth_time"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(errcode(&page(&mut s, 0, 501)), ARGUMENT_INVALID);
    assert_eq!(errcode(&page(&mut s, 0, 0)), ARGUMENT_INVALID);
    assert_eq!(s.platforms.stats.authorizer_list_calls, 4);
}

#[test]
fn templates_are_the_merchants_own_and_the_twenty_sixth_is_refused() {
    let mut s = sim();
    let (_, m1, _) = onboarded(&mut s, "wxM1");
    let (_, m2, _) = onboarded(&mut s, "wxM2");
    let add = |s: &mut SimState, token: Option<&str>, library: &str| {
        let body = json!({ "template_id_short": library, "keyword_name_list": ["服务项目", "门店"] });
        call(s, Api::AddTemplate, token, body)
    };
    let reply = add(&mut s, Some(&m1), "OPENTM1");
    let id = reply["template_id"].as_str().unwrap().to_string();
    assert_eq!(errcode(&reply), 0);
    assert_eq!(errcode(&send(&mut s, &m1, &id)), 0);
    assert_eq!(
        errcode(&send(&mut s, &m2, &id)),
        INVALID_TEMPLATE_ID,
        "another merchant's template"
    );
    assert_eq!(
        errcode(&send(&mut s, &m2, "BY_HAND_IN_ITS_CONSOLE")),
        0,
        "app rules for ids never given"
    );
    assert_eq!(errcode(&send(&mut s, &m2, "INVALID_X")), INVALID_TEMPLATE_ID);
    assert_eq!(
        s.messages.iter().map(|m| m.appid.as_str()).collect::<Vec<_>>(),
        ["wxM1", "wxM2"]
    );
    for _ in 1..MAX_TEMPLATES {
        assert_eq!(errcode(&add(&mut s, Some(&m1), "OPENTM2")), 0);
    }
    let full = add(&mut s, Some(&m1), "OPENTM3");
    assert_eq!(errcode(&full), TEMPLATE_LIMIT);
    assert_eq!(errcode(&add(&mut s, Some(&m2), "OPENTM3")), 0, "per account");
    assert_eq!(errcode(&add(&mut s, None, "OPENTM3")), TOKEN_MISSING);
    assert_eq!(errcode(&add(&mut s, Some("forged"), "OPENTM3")), TOKEN_INVALID);
    assert_eq!(errcode(&add(&mut s, Some(&m2), "")), INVALID_TEMPLATE_ID);
    let calls = &s.platforms.stats.add_template_calls;
    assert_eq!(calls["wxM1"]["OPENTM1"], 1);
    assert_eq!(calls["wxM1"]["OPENTM2"], 24);
    assert_eq!(calls["wxM1"]["OPENTM3"], 1, "the refused one counts");
    let by_hand = s
        .platforms
        .add_template_for(&(C.into(), "wxM2".into()), "OPENTM9", vec![], false);
    assert!(
        by_hand.is_ok_and(|id| errcode(&send(&mut s, &m2, &id)) == 0),
        "added in its console"
    );
    assert!(
        !s.platforms.stats.add_template_calls["wxM2"].contains_key("OPENTM9"),
        "not an API call"
    );
    // The merchant deletes it in its console: sends with it are refused from then on.
    let id = s.platforms.merchants()[1].templates[1].template_id.clone();
    assert!(s.platforms.delete_template(C, "wxM2", &id));
    assert_eq!(errcode(&send(&mut s, &m2, &id)), INVALID_TEMPLATE_ID, "deleted");
    assert!(!s.platforms.delete_template(C, "wxM2", &id), "once");
    let never = s
        .platforms
        .add_template_for(&(C.into(), "wxNever".into()), "OPENTM9", vec![], false);
    assert_eq!(never, Err(COMPONENT_NOT_AUTHORIZED));
    let view = s.platforms.merchants();
    assert_eq!(view[0].templates.len(), 25);
    assert_eq!(view[0].templates[0].keywords, ["服务项目", "门店"]);
}

#[test]
fn a_rotation_revokes_a_merchants_access_tokens_not_its_refresh_token() {
    let mut s = sim();
    let (ctoken, a1, r1) = onboarded(&mut s, "wxM1");
    let (_, a2, _) = onboarded(&mut s, "wxM2");
    assert_eq!(s.platforms.rotate(Some(C), Some("wxM1")), ["wxM1"]);
    assert_eq!(errcode(&send(&mut s, &a1, "TPL")), TOKEN_INVALID);
    assert_eq!(errcode(&send(&mut s, &a2, "TPL")), 0, "another merchant's stays");
    let renewed = refresh(&mut s, &ctoken, "wxM1", &r1);
    assert_eq!(
        errcode(&send(
            &mut s,
            renewed["authorizer_access_token"].as_str().unwrap(),
            "TPL"
        )),
        0
    );
    assert_eq!(s.platforms.rotate(None, None), ["wxM1", "wxM2"]);
    assert_eq!(s.platforms.stats.merchant_rotations[C], 3);
}

#[test]
fn merchant_rotate_every_revokes_a_merchants_tokens_after_n_of_its_sends() {
    let mut s = sim();
    s.config.faults.merchant_rotate_every = 2;
    s.config.faults.rotate_every = 1;
    let (_, a1, _) = onboarded(&mut s, "wxM1");
    let (_, a2, _) = onboarded(&mut s, "wxM2");
    assert_eq!(errcode(&send(&mut s, &a1, "TPL")), 0);
    assert_eq!(errcode(&send(&mut s, &a2, "TPL")), 0);
    assert_eq!(errcode(&send(&mut s, &a1, "TPL")), 0);
    assert_eq!(errcode(&send(&mut s, &a1, "TPL")), TOKEN_INVALID, "after its 2nd send");
    assert_eq!(errcode(&send(&mut s, &a2, "TPL")), 0, "wxM2 had one");
    assert_eq!(s.platforms.stats.merchant_rotations[C], 2);
    assert_eq!(s.stats.rotations, 0, "rotate_every is the apps'");
}

#[test]
fn the_busy_faults_answer_minus_one() {
    let mut s = sim();
    let (ctoken, _, r1) = onboarded(&mut s, "wxM1");
    s.config.faults.authorizer_token_busy_rate = 1.0;
    assert_eq!(errcode(&refresh(&mut s, &ctoken, "wxM1", &r1)), SYSTEM_BUSY);
    s.config.faults.component_token_busy_rate = 1.0;
    let ticket = s.platforms.push_ticket(&s.config.clone(), C).unwrap();
    let body = json!({ "component_appid": C, "component_appsecret": "csecret", "component_verify_ticket": ticket });
    assert_eq!(errcode(&call(&mut s, Api::ComponentToken, None, body)), SYSTEM_BUSY);
    assert_eq!(s.platforms.stats.errors[&SYSTEM_BUSY], 2);
}

#[test]
fn merchant_pushes_use_the_platforms_token_and_key_and_seal_its_appid() {
    let mut s = sim();
    s.config.push.token = "apptoken".into();
    authorize(&mut s, "wxM1");
    let (config, sealed) = s.platforms.push_config_for(&s.config, "wxM1");
    assert_eq!(
        (config.token.as_str(), config.aes_key.as_deref(), sealed.as_str()),
        ("ptoken", Some(KEY), C)
    );
    let (config, sealed) = s.platforms.push_config_for(&s.config, "wx1111111111111111");
    assert_eq!(
        (config.token.as_str(), config.aes_key, sealed.as_str()),
        ("apptoken", None, "wx1111111111111111")
    );
}

#[test]
fn an_app_cannot_be_a_merchant_nor_a_platform_unknown() {
    let mut s = sim();
    let config = s.config.clone();
    assert!(
        s.platforms
            .authorize(&config, &Authorize::new(C, "wx1111111111111111"), false)
            .is_err()
    );
    assert!(
        s.platforms
            .authorize(&config, &Authorize::new("wxNope", "wxM1"), false)
            .is_err()
    );
    assert!(s.platforms.push_ticket(&config, "wxNope").is_none());
}
