//! Whole trips: users answer the simulator's pop-up (pushed to the receiver, stored), bookings go
//! through the worker, and WeChat (enforcing consent) sees only the messages users allowed.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use wechat_sim::{ConsentKind, ConsentStatus};

use super::*;

const CONFIRMED: &str = "TPL_MP_CONFIRMED";
const REMINDER: &str = "TPL_MP_REMINDER";

/// A mini program's templates, both tracked: a confirmation at once and a reminder an hour
/// before the slot (due at once for a slot within the hour), and a plain reminder event.
const TEMPLATES: &str = r#"
[[templates]]
event_type = "booking.confirmed"
api = "subscribe"
template_id = "TPL_MP_CONFIRMED"
consent = "tracked"
page = "pages/booking/detail?id={{ data.booking_id }}"
[templates.data]
thing1 = "{{ data.service }}"
time2 = "{{ data.slot_start | datetime('%Y-%m-%d %H:%M') }}"

[[templates]]
event_type = "booking.confirmed"
api = "subscribe"
template_id = "TPL_MP_REMINDER"
consent = "tracked"
send_at = "{{ data.slot_start | add_minutes(-60) }}"
not_after = "{{ data.slot_start }}"
page = "pages/booking/detail?id={{ data.booking_id }}"
[templates.data]
thing1 = "{{ data.service }}"
time2 = "{{ data.slot_start | datetime('%Y-%m-%d %H:%M') }}"

[[templates]]
event_type = "booking.reminder"
api = "subscribe"
template_id = "TPL_MP_REMINDER"
consent = "tracked"
page = "pages/booking/detail?id={{ data.booking_id }}"
[templates.data]
thing1 = "{{ data.service }}"
time2 = "{{ data.slot_start | datetime('%Y-%m-%d %H:%M') }}"
"#;

/// The templates file, removed when dropped.
struct TemplatesFile(PathBuf);

impl TemplatesFile {
    fn write() -> Self {
        let path = std::env::temp_dir().join(format!("wxnotify-consent-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, TEMPLATES).unwrap();
        Self(path)
    }
}

impl Drop for TemplatesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A booking that occurred now, its slot in 30 minutes (its reminder due at once).
fn booking(id: &str, event_type: &str, openid: &str) -> serde_json::Value {
    let now = Utc::now();
    serde_json::json!({
        "event_id": id, "event_type": event_type, "occurred_at": now.to_rfc3339(), "openid": openid,
        "data": {"booking_id": id, "service": "精洗套餐", "slot_start": (now + TimeDelta::minutes(30)).to_rfc3339()}
    })
}

/// A worker and a receiver on `env` with the mini program's templates; the simulator enforces
/// consent and pushes to the receiver.
async fn mini_program(env: &mut TestEnv, file: &TemplatesFile) -> (WorkerHandle, ReceiverHandle) {
    env.templates = file.0.clone();
    env.sim.set_enforce_consent(true);
    let receiver = env.spawn_receiver(None, false).await;
    env.push_to(&receiver, true, 0);
    let worker = env
        .spawn_worker(&WorkerOpts {
            templates: Some(file.0.clone()),
            ..WorkerOpts::default()
        })
        .await;
    (worker, receiver)
}

async fn wait_consents_stored(env: &TestEnv, rows: i64) {
    wait_for("the consent pushes stored", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM consent_log WHERE kind <> 'use'").await >= rows
    })
    .await;
}

/// (openid, template) → status, and `last_error` of the suppressed ones.
async fn outcomes(env: &TestEnv) -> (BTreeMap<(String, String), String>, HashSet<Option<String>>) {
    let rows: Vec<(String, String, String, Option<String>)> =
        sqlx::query_as("SELECT openid, template_id, status, last_error FROM deliveries")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let errors = rows
        .iter()
        .filter(|r| r.2 == "suppressed")
        .map(|r| r.3.clone())
        .collect();
    (rows.into_iter().map(|r| ((r.0, r.1), r.2)).collect(), errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_messages_users_allowed_are_sent_and_wechat_never_says_43101() {
    const USERS: usize = 1000;
    let file = TemplatesFile::write();
    let mut env = TestEnv::new().await;
    let (worker, receiver) = mini_program(&mut env, &file).await;
    // Half accept both, a quarter only the confirmation, a quarter neither.
    let answers = |i: usize| match i % 4 {
        0 | 1 => (ConsentStatus::Accept, ConsentStatus::Accept),
        2 => (ConsentStatus::Accept, ConsentStatus::Reject),
        _ => (ConsentStatus::Reject, ConsentStatus::Reject),
    };
    for i in 0..USERS {
        let (c, r) = answers(i);
        env.sim.consent(
            APP_ID,
            &format!("oUser{i}"),
            ConsentKind::Popup,
            &[(CONFIRMED, c), (REMINDER, r)],
            None,
        );
    }
    wait_consents_stored(&env, 2 * USERS as i64).await;
    for i in 0..USERS {
        env.publish(&booking(&format!("c-{i}"), "booking.confirmed", &format!("oUser{i}")))
            .await;
    }
    wait_for("every delivery final", Duration::from_secs(180), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status IN ('sent', 'suppressed')")
            .await
            == 2 * USERS as i64
    })
    .await;
    let (outcomes, errors) = outcomes(&env).await;
    let sent: HashSet<(String, String)> = env
        .sim
        .messages()
        .into_iter()
        .map(|m| (m.touser, m.template_id))
        .collect();
    let stats = env.sim.stats();
    println!(
        "{USERS} users: {} messages at WeChat, {} deliveries suppressed, WeChat's 43101s: {}",
        sent.len(),
        outcomes.values().filter(|s| *s == "suppressed").count(),
        stats.errors.get(&43101).copied().unwrap_or(0)
    );
    for i in 0..USERS {
        let openid = format!("oUser{i}");
        let (c, r) = answers(i);
        for (template, answer) in [(CONFIRMED, c), (REMINDER, r)] {
            let expected = if answer == ConsentStatus::Accept {
                "sent"
            } else {
                "suppressed"
            };
            let key = (openid.clone(), template.to_string());
            assert_eq!(outcomes[&key], expected, "{key:?}");
            assert_eq!(sent.contains(&key), expected == "sent", "{key:?} at WeChat");
        }
    }
    assert_eq!(stats.errors.get(&43101), None, "WeChat never refused one");
    assert_eq!(errors, HashSet::from([Some("no subscription consent".to_string())]));
    assert_eq!(
        env.collect_dlq(0, Duration::from_millis(200)).await.len(),
        0,
        "no dead letter"
    );
    worker.stop().await;
    receiver.stop().await;
    assert_report(&env).await;
}

/// `wxnotify report` counts the consents by template: granted, used, missing, rejected.
async fn assert_report(env: &TestEnv) {
    let out = env.wxnotify(&["report", "--format", "json"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let by_template: BTreeMap<String, [i64; 4]> = report["consents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = |k: &str| c[k].as_i64().unwrap();
            let counts = [n("granted"), n("used"), n("missing"), n("rejected")];
            (c["template_id"].as_str().unwrap().to_string(), counts)
        })
        .collect();
    assert_eq!(
        by_template,
        BTreeMap::from([
            (CONFIRMED.to_string(), [750, 750, 250, 250]),
            (REMINDER.to_string(), [500, 500, 500, 500]),
        ])
    );
    let summary = &report["summary"][0];
    assert_eq!(
        (summary["consents_used"].as_i64(), summary["consents_missing"].as_i64()),
        (Some(1250), Some(750))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accepts_pay_for_two_reminders_and_the_third_is_suppressed() {
    let file = TemplatesFile::write();
    let mut env = TestEnv::new().await;
    let (worker, receiver) = mini_program(&mut env, &file).await;
    let now = Utc::now().timestamp();
    for at in [now - 20, now - 10] {
        env.sim.consent(
            APP_ID,
            "oTwice",
            ConsentKind::Popup,
            &[(REMINDER, ConsentStatus::Accept)],
            Some(at),
        );
    }
    wait_consents_stored(&env, 2).await;
    for n in 1..=3 {
        let id = format!("r-{n}");
        env.publish(&booking(&id, "booking.reminder", "oTwice")).await;
        wait_for("final", Duration::from_secs(30), || async {
            matches!(
                env.statuses().await.get(&id).map(String::as_str),
                Some("sent" | "suppressed")
            )
        })
        .await;
    }
    let statuses = env.statuses().await;
    assert_eq!(
        [&statuses["r-1"], &statuses["r-2"], &statuses["r-3"]],
        ["sent", "sent", "suppressed"]
    );
    assert_eq!(env.sim.messages().len(), 2);
    assert_eq!(env.sim.stats().errors.get(&43101), None);
    assert_eq!(
        env.sim.credits(APP_ID, "oTwice", REMINDER),
        0,
        "WeChat agrees: none left"
    );
    worker.stop().await;
    receiver.stop().await;
    // `trace` shows the consent as it stood: two accepts, both spent by the first two.
    let out = env.wxnotify_ok(&["trace", "--event-id", "r-3"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("suppressed") && text.contains("consent    up to"),
        "{text}"
    );
    assert_eq!(text.matches("    accept ").count(), 2, "{text}");
    assert_eq!(text.matches("    use ").count(), 2, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_name_too_long_for_a_template_message_arrives_shortened_and_counted() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    let store = "上海市徐汇区漕溪北路一百八十八号汽车美容养护中心旗舰总店二号"; // 30 characters
    assert_eq!(store.chars().count(), 30);
    let mut e = event("long-1", "booking.confirmed", "oLong");
    e["data"]["store"] = store.into();
    env.publish(&e).await;
    wait_for("sent", Duration::from_secs(30), || async {
        env.statuses().await.get("long-1").map(String::as_str) == Some("sent")
    })
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", worker.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = metrics
        .lines()
        .find(|l| {
            l.starts_with("wxnotify_values_shortened_total")
                && l.contains("key=\"thing2\"")
                && l.contains("TPL_BOOKING_CONFIRMED")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(counted.is_some_and(|n| n >= 1.0), "counted: {counted:?}");
    worker.stop().await;
    let m = env.sim.messages().pop().unwrap();
    let shown = &m.data["thing2"];
    assert_eq!(shown.chars().count(), 20, "{shown}");
    assert!(
        shown.ends_with('…') && store.starts_with(shown.trim_end_matches('…')),
        "{shown}"
    );
    assert!(m.cut.is_empty(), "WeChat had nothing left to cut: {:?}", m.cut);
}
