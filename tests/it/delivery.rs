//! The walking skeleton's promises: events become exactly the rendered messages; duplicates, bad
//! input and WeChat's refusals end where docs/interface.md §1–3 say.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{TestEnv, WorkerOpts, event, wait_for};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_two_types_sent_once_with_big_msgids() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("e-1", "booking.confirmed", "oA")).await;
    env.publish(&event("e-2", "booking.reminder", "oB")).await;
    wait_for("two sent deliveries", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 2
    })
    .await;

    let mut msgs = env.sim.messages();
    msgs.sort_by(|a, b| a.touser.cmp(&b.touser));
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].api, "template");
    assert_eq!(msgs[0].template_id, "TPL_BOOKING_CONFIRMED");
    assert_eq!(msgs[0].data["amount5"], "39.80元");
    assert_eq!(msgs[0].data["time3"], "2026年11月22日 14:00");
    assert_eq!(
        msgs[0].url.as_deref(),
        Some("https://wash.example.com/bookings/B-10023")
    );
    assert!(msgs[0].client_msg_id.as_deref().is_some_and(|c| c.starts_with("wxn-")));
    assert_eq!(msgs[1].api, "subscribe");
    assert_eq!(msgs[1].page.as_deref(), Some("pages/booking/detail?id=B-10023"));

    // The ledger holds WeChat's msgids exactly, above 2^53.
    let stored: Vec<i64> = sqlx::query_scalar("SELECT wechat_msgid FROM deliveries ORDER BY openid")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![msgs[0].msgid, msgs[1].msgid]);
    assert!(stored.iter().all(|m| *m > (1i64 << 53)));
    assert_eq!(
        env.count("SELECT count(*) FROM delivery_attempts WHERE errcode = 0")
            .await,
        2
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_publish_sends_one_message() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    let e = event("dup-1", "booking.confirmed", "oDup");
    for _ in 0..5 {
        env.publish(&e).await;
    }
    // A marker published after the copies: once it is sent, every copy has been consumed or is
    // waiting on the one being sent.
    env.publish(&event("marker", "booking.created", "oMarker")).await;
    wait_for("marker and duplicate sent", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 2
    })
    .await;
    // Copies that met the first one in flight wait in the hold tier and come back: wait until no
    // copy is left anywhere but in the worker's hands, then let the worker drain them.
    wait_for("no copy left in the broker", T, || async {
        env.ready_everywhere().await == 0
    })
    .await;
    worker.stop().await;
    let to_dup: Vec<_> = env.sim.messages().into_iter().filter(|m| m.touser == "oDup").collect();
    assert_eq!(to_dup.len(), 1, "exactly one WeChat message for five publishes");
    assert_eq!(
        env.sim.stats().deduplicated,
        0,
        "the ledger, not WeChat's dedup, stopped the copies"
    );
    assert_eq!(env.count("SELECT count(*) FROM deliveries").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_malformed_kind_is_dead_lettered_once_and_the_worker_goes_on() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    let mut missing = event("m-missing", "booking.confirmed", "o1");
    missing.as_object_mut().unwrap().remove("openid");
    // Too long for a subscribe message's `thing` (a template message's would be shortened).
    let mut long = event("m-long", "booking.reminder", "o2");
    long["data"]["service"] = json!("这是一个远远超过二十个字符限制的非常非常长的服务名称");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", b"{this is not json".to_vec(), "invalid_event"),
        ("not utf-8", vec![0xff, 0xfe, 0x7b], "invalid_event"),
        ("missing field", missing.to_string().into_bytes(), "invalid_event"),
        (
            "unknown type",
            event("m-type", "booking.teleported", "o3").to_string().into_bytes(),
            "no_template",
        ),
        ("value too long", long.to_string().into_bytes(), "render_failed"),
    ];
    for (_, body, _) in &cases {
        env.publish_raw("booking.confirmed", body).await;
    }
    env.publish(&event("after-bad", "booking.confirmed", "oGood")).await;
    wait_for("the good event after the bad ones is sent", T, || async {
        env.sim.stats().accepted == 1
    })
    .await;
    let mut dead = env.collect_dlq(cases.len(), T).await;
    worker.stop().await;
    dead.extend(env.drain_dlq().await);
    assert_eq!(dead.len(), cases.len(), "each bad message dead-lettered once");
    for (name, body, reason) in &cases {
        let (_, h) = dead
            .iter()
            .find(|(b, _)| b == body)
            .unwrap_or_else(|| panic!("{name}: not in the DLQ with its body intact"));
        assert_eq!(h["wxnotify-reason"], *reason, "{name}");
        assert!(!h["wxnotify-error"].is_empty(), "{name}: has a readable error");
        assert!(h.contains_key("wxnotify-attempts"), "{name}");
    }
    let (_, long_h) = dead.iter().find(|(b, _)| *b == long.to_string().into_bytes()).unwrap();
    assert!(
        long_h["wxnotify-error"].contains("thing1"),
        "names the key: {}",
        long_h["wxnotify-error"]
    );
    assert_eq!(long_h["wxnotify-event-id"], "m-long");
    assert_eq!(env.statuses().await.get("m-long").map(String::as_str), Some("dead"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribed_user_is_dead_with_errcode_43004() {
    let env = TestEnv::new().await;
    env.sim.set_unsubscribed(&["oGone"]);
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("u-1", "booking.confirmed", "oGone")).await;
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    let (_, h) = &dead[0];
    assert_eq!(h["wxnotify-reason"], "permanent_error");
    assert_eq!(h["wxnotify-errcode"], "43004");
    assert_eq!(h["wxnotify-event-id"], "u-1");
    let row: (String, Option<i64>, i32) =
        sqlx::query_as("SELECT status, last_errcode, attempts FROM deliveries WHERE event_id = 'u-1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(row, ("dead".to_string(), Some(43004), 1));
    assert!(env.sim.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_behind_the_workers_back_is_refreshed_and_the_message_delivered_once() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("r-1", "booking.confirmed", "oR1")).await;
    wait_for("first sent", T, || async { env.sim.stats().accepted == 1 }).await;
    env.sim.rotate(crate::helpers::APP_ID);
    env.publish(&event("r-2", "booking.confirmed", "oR2")).await;
    wait_for("second sent after a refresh", T, || async {
        env.sim.stats().accepted == 2
    })
    .await;
    worker.stop().await;
    let stats = env.sim.stats();
    assert_eq!(stats.errors.get(&40001), Some(&1), "one rejection");
    assert_eq!(stats.forced_refreshes, 1, "one forced refresh of the stable token");
    assert_eq!(env.sim.messages().iter().filter(|m| m.touser == "oR2").count(), 1);
    let attempts: Vec<(Option<i64>,)> = sqlx::query_as(
        "SELECT a.errcode FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.event_id = 'r-2' ORDER BY a.attempt",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(attempts, vec![(Some(40001),), (Some(0),)]);
}
