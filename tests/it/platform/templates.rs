//! Library templates on merchants' accounts: `api_add_template` once per (merchant, template)
//! across three workers and fifty concurrent first deliveries, each sent with the merchant's own
//! id; a full account's refusal (45026) dead-letters that merchant's deliveries with the errcode,
//! asked of WeChat once, and shown by `platform list`; a template the merchant deleted (40037) is
//! added again once.

use std::time::Duration;

use super::*;

const LIBRARY: &str = "OPENTM411111111";

/// A library template for event type `booking.library` (the fixtures have none).
const LIBRARY_TEMPLATE: &str = r#"
[[templates]]
event_type = "booking.library"
library_id = "OPENTM411111111"
keywords = ["服务项目", "门店"]
[templates.data]
thing1 = "{{ data.service }}"
thing2 = "{{ data.store }}"
"#;

fn library_booking(id: &str, merchant: &str) -> serde_json::Value {
    booking(id, "booking.library", merchant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_template_is_added_once_per_merchant_across_the_fleet() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    let (m1, m2, full) = ("wxMERCHANT0000051", "wxMERCHANT0000052", "wxMERCHANT0000053");
    onboard(&env, &t, &[m1, m2, full]).await;
    for _ in 0..wechat_sim::MAX_TEMPLATES {
        env.sim.add_merchant_template(PLATFORM, full, "OPENTM_OTHER").unwrap();
    }
    // Fifty first deliveries waiting before the workers start, so that they meet at once.
    for i in 0..25 {
        env.publish(&library_booking(&format!("lib-a-{i}"), m1)).await;
        env.publish(&library_booking(&format!("lib-b-{i}"), m2)).await;
    }
    for i in 0..3 {
        env.publish(&library_booking(&format!("lib-full-{i}"), full)).await;
    }
    let file = platforms_file_with(&env, LIBRARY_TEMPLATE);
    let mut workers: Vec<_> = (0..3)
        .map(|_| {
            let admin = free_addr();
            spawn_worker(&env, &file, admin)
        })
        .collect();
    crate::helpers::wait_for("the 53 deliveries final", Duration::from_secs(90), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status IN ('sent', 'dead')")
            .await
            == 53
    })
    .await;
    let calls = env.sim.platform_stats().add_template_calls;
    println!("api_add_template calls: {calls:?}");
    for m in [m1, m2, full] {
        assert_eq!(calls[m][LIBRARY], 1, "{m}: one api_add_template for the fleet");
    }
    let sent = env.sim.messages();
    assert_eq!(sent.len(), 50);
    for msg in &sent {
        assert!(
            msg.template_id.starts_with(&format!("{}_{LIBRARY}_", msg.appid)),
            "sent with the merchant's own id: {msg:?}"
        );
    }
    let dead: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT dead_reason, last_errcode FROM deliveries WHERE status = 'dead' ORDER BY event_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(dead, vec![("permanent_error".to_string(), Some(45026)); 3]);
    let out = env.wxnotify_ok(&["platform", "list", "--format", "json"]).await;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = |m: &str| rows.iter().find(|r| r["authorizer_appid"] == m).unwrap().clone();
    assert_eq!(row(m1)["templates"], 1);
    let errors = row(full)["template_errors"].as_str().unwrap_or_default().to_string();
    assert!(errors.contains(LIBRARY) && errors.contains("45026"), "{errors}");
    // m1 deletes the template in its console: WeChat answers 40037; the fleet adds it again,
    // once, and the bookings go with the new id.
    let old_id = sent.iter().find(|m| m.appid == m1).unwrap().template_id.clone();
    assert!(env.sim.delete_merchant_template(PLATFORM, m1, &old_id));
    for i in 0..6 {
        env.publish(&library_booking(&format!("lib-again-{i}"), m1)).await;
    }
    crate::helpers::wait_for("the six sent", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE event_id LIKE 'lib-again-%' AND status = 'sent'")
            .await
            == 6
    })
    .await;
    let calls = env.sim.platform_stats().add_template_calls;
    assert_eq!(calls[m1][LIBRARY], 2, "added again once for the fleet: {calls:?}");
    let again: Vec<_> = env.sim.messages().into_iter().skip(50).collect();
    assert_eq!(again.len(), 6);
    assert!(
        again.iter().all(|m| m.template_id != old_id && m.appid == m1),
        "{again:?}"
    );
    for w in &mut workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
}
