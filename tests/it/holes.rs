//! The holes off the chaos test's paths (issue 8): each test here failed before the delivery core
//! was rebuilt around the judge, and passes now.

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::ExchangeDeleteOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use sqlx::Row;
use wechat_sim::{Faults, SimConfig};
use wxnotify::event::DeliveryKey;

use crate::helpers::{APP_ID, TestEnv, WorkerOpts, event, wait_for};
use crate::proxy::Proxy;

const T: Duration = Duration::from_secs(40);

async fn row(env: &TestEnv, event_id: &str) -> (String, Option<String>, bool, Option<i64>) {
    let r = sqlx::query(
        "SELECT status, dead_reason, in_doubt_since IS NOT NULL AS doubt, wechat_msgid FROM deliveries WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_one(&env.pool)
    .await
    .expect("the delivery's row");
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// The state a worker leaves when it is killed mid-send: its claim, its heartbeat stopped.
async fn killed_mid_send(env: &TestEnv, key: &DeliveryKey, event_type: &str, ago_secs: i64) {
    sqlx::query(
        "INSERT INTO workers (id, started_at, heartbeat_at) VALUES ('gone', now() - interval '1 hour', now() - interval '1 hour')
         ON CONFLICT (id) DO NOTHING",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
                                 owner, lease_until, claimed_at)
         VALUES ($1, $2, $3, $4, $5, now(), $6, 'gone', now() - interval '1 second',
                 now() - make_interval(secs => $7))",
    )
    .bind(&key.event_id)
    .bind(event_type)
    .bind(APP_ID)
    .bind(&key.openid)
    .bind(&key.template_id)
    .bind(key.client_msg_id())
    .bind(ago_secs as f64)
    .execute(&env.pool)
    .await
    .unwrap();
}

/// The dead letter says `ambiguous`, nothing was sent, and the row is `dead`/`ambiguous` and still
/// in doubt.
async fn assert_dead_ambiguous_unsent(env: &TestEnv, dead: &[crate::common::Taken], event_id: &str, why: &str) {
    assert_eq!(dead[0].1["wxnotify-reason"], "ambiguous", "{:?}", dead[0].1);
    assert_eq!(env.sim.stats().send_requests, 0, "{why}");
    let (status, reason, doubt, _) = row(env, event_id).await;
    assert_eq!(
        (status.as_str(), reason.as_deref(), doubt),
        ("dead", Some("ambiguous"), true)
    );
}

fn key(event_id: &str, template_id: &str, openid: &str) -> DeliveryKey {
    DeliveryKey {
        event_id: event_id.into(),
        template_id: template_id.into(),
        openid: openid.into(),
    }
}

/// Hole 1: NUL characters and oversized bodies are dead-lettered at intake; before, a NUL failed
/// the whole claim batch in Postgres and `with_db` retried it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_values_are_dead_lettered_and_never_stall_their_neighbours() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    for i in 0..100 {
        env.publish(&event(&format!("good-{i}"), "booking.confirmed", &format!("o{i}")))
            .await;
        if i == 50 {
            env.publish(&event("nul-openid", "booking.confirmed", "o\u{0}x")).await;
            let mut e = event("nul-data", "booking.confirmed", "oNulData");
            e["data"]["store"] = "徐汇\u{0}店".into();
            env.publish(&e).await;
            let mut big = event("too-big", "booking.confirmed", "oBig");
            big["data"]["padding"] = "x".repeat(70_000).into();
            env.publish(&big).await;
        }
    }
    let dead = env.collect_dlq(3, T).await;
    wait_for("the 100 good events sent", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 100
    })
    .await;
    worker.stop().await;
    assert_eq!(dead.len(), 3);
    for (_, h) in &dead {
        assert_eq!(h["wxnotify-reason"], "invalid_event", "{h:?}");
    }
    let errors: Vec<&str> = dead.iter().map(|(_, h)| h["wxnotify-error"].as_str()).collect();
    assert!(errors.iter().any(|e| e.contains("`openid` holds U+0000")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("`data.store` holds U+0000")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("WXNOTIFY_MAX_BODY_BYTES")),
        "{errors:?}"
    );
    assert_eq!(env.count("SELECT count(*) FROM deliveries").await, 100);
    assert_eq!(env.ready_everywhere().await, 0);
}

/// Hole 2: subscribe messages have no client_msg_id dedup at WeChat; a subscribe delivery whose
/// earlier send may have arrived is dead-lettered `ambiguous` at once, never resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_doubt_subscribe_delivery_is_dead_lettered_ambiguous_not_resent() {
    let env = TestEnv::new().await;
    // A worker was killed 30 s ago while sending the reminder: well inside the 10-minute window
    // that would make a template message's resend harmless.
    killed_mid_send(&env, &key("sub-1", "TPL_REMINDER", "oSub"), "booking.reminder", 30).await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("sub-1", "booking.reminder", "oSub")).await;
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_dead_ambiguous_unsent(&env, &dead, "sub-1", "never resent").await;
}

/// Hole 3: a replay keeps the doubt unless the operator replays reason `ambiguous` by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_another_reason_keeps_the_doubt() {
    let env = TestEnv::new().await;
    // A template delivery whose send timed out an hour ago and then ran out of retries.
    let k = key("storm-1", "TPL_BOOKING_CONFIRMED", "oStorm");
    killed_mid_send(&env, &k, "booking.confirmed", 3600).await;
    sqlx::query(
        "UPDATE deliveries SET status = 'dead', dead_reason = 'retries_exhausted', owner = NULL,
                in_doubt_since = now() - interval '1 hour' WHERE event_id = 'storm-1'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let body = event("storm-1", "booking.confirmed", "oStorm").to_string();
    env.publish_dead_letter(
        body.as_bytes(),
        &[
            ("wxnotify-reason", "retries_exhausted"),
            ("wxnotify-event-id", "storm-1"),
        ],
    )
    .await;

    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    let done = env.replay_by_reason("retries_exhausted").await;
    assert_eq!(done.replayed.len(), 1);
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_dead_ambiguous_unsent(&env, &dead, "storm-1", "not resent behind the user's back").await;
}

/// Hole 4: a copy that says it is a replay, with no row in `dlq_replays`, reopens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_replay_header_reopens_nothing() {
    let sim = SimConfig {
        unsubscribed: ["oLeft".to_string()].into(),
        ..Default::default()
    };
    let env = TestEnv::with_sim(sim).await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("left-1", "booking.confirmed", "oLeft")).await;
    env.collect_dlq(1, T).await;
    assert_eq!(row(&env, "left-1").await.0, "dead");
    assert_eq!(env.sim.stats().send_requests, 1);

    // The user follows again; someone republishes the event with a made-up replay header.
    env.sim.set_unsubscribed(&[]);
    let mut h = FieldTable::default();
    h.insert(
        "wxnotify-replay".into(),
        AMQPValue::LongString(LongString::from(b"made-up".to_vec())),
    );
    let body = event("left-1", "booking.confirmed", "oLeft").to_string();
    let props = BasicProperties::default().with_delivery_mode(2).with_headers(h);
    env.publish_to_queue(&env.topology.queue, body.as_bytes(), props).await;
    wait_for("the copy consumed", T, || async { env.ready_everywhere().await == 0 }).await;
    worker.stop().await;
    assert_eq!(env.sim.stats().send_requests, 1, "an ordinary duplicate: not sent");
    assert_eq!(row(&env, "left-1").await.0, "dead");
}

/// Hole 5: a msgid recorded by a slow worker wins over a state another worker wrote meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proven_sent_wins_over_a_record_written_by_another() {
    let env = TestEnv::with_faults(Faults {
        latency_ms: 3000,
        ..Default::default()
    })
    .await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("slow-1", "booking.confirmed", "oSlow")).await;
    wait_for("the send under way", T, || async { env.sim.stats().send_requests == 1 }).await;
    // Meanwhile another worker decided the delivery was ambiguous and dead-lettered it.
    sqlx::query(
        "UPDATE deliveries SET status = 'dead', dead_reason = 'ambiguous', owner = 'other', lease_until = NULL
          WHERE event_id = 'slow-1'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    wait_for("WeChat's msgid recorded", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE wechat_msgid IS NOT NULL")
            .await
            == 1
    })
    .await;
    worker.stop().await;
    let (status, reason, _, msgid) = row(&env, "slow-1").await;
    assert_eq!((status.as_str(), reason), ("sent", None));
    assert_eq!(msgid, Some(env.sim.messages()[0].msgid));
}

/// Hole 5, the other half: an outcome that proves nothing is written only by the claim's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_failure_does_not_overwrite_the_owner_who_took_over() {
    let env = TestEnv::with_faults(Faults {
        latency_ms: 3000,
        busy_rate: 1.0,
        ..Default::default()
    })
    .await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("late-1", "booking.confirmed", "oLate")).await;
    wait_for("the send under way", T, || async { env.sim.stats().send_requests == 1 }).await;
    // A live worker took the claim over (this one looked dead to it).
    sqlx::query("INSERT INTO workers (id) VALUES ('taker')")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE deliveries SET owner = 'taker', lease_until = now() + interval '1 hour' WHERE event_id = 'late-1'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    wait_for("the slow attempt recorded", T, || async {
        env.count("SELECT count(*) FROM delivery_attempts").await == 1
    })
    .await;
    worker.stop().await;
    let owner: Option<String> = sqlx::query_scalar("SELECT owner FROM deliveries WHERE event_id = 'late-1'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some("taker"), "the owner's claim stands");
    assert_eq!(row(&env, "late-1").await.0, "pending");
}

/// Hole 7: SIGTERM is honoured when every permit is busy waiting for an unreachable Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_heard_while_every_delivery_waits_for_postgres() {
    let env = TestEnv::with_faults(Faults {
        latency_ms: 1000,
        ..Default::default()
    })
    .await;
    let proxy = Proxy::to("127.0.0.1:5432".parse().unwrap()).await;
    let through_proxy = env.db_url.replacen("127.0.0.1:5432", &proxy.addr.to_string(), 1);
    assert_ne!(through_proxy, env.db_url, "the test database is on 127.0.0.1:5432");
    let opts = WorkerOpts {
        concurrency: 2,
        shutdown_grace_secs: 2.0,
        database_url: Some(through_proxy),
        ..Default::default()
    };
    let worker = env.spawn_worker(&opts).await;
    for i in 0..6 {
        env.publish(&event(&format!("cut-{i}"), "booking.confirmed", &format!("oCut{i}")))
            .await;
    }
    wait_for("two sends under way", T, || async {
        env.sim.stats().send_requests >= 2
    })
    .await;
    proxy.cut();
    // Both sends were decided when they were counted; the simulator answers half its latency
    // (500 ms) after deciding. Nothing marks an answer's arrival at the worker (its records fail
    // on the cut database without a trace the test can see), so this waits out that fixed half
    // and a margin: then both answers are back and their records wait.
    tokio::time::sleep(Duration::from_millis(500 + 250)).await;
    let started = Instant::now();
    worker.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped in {:?}",
        started.elapsed()
    );
}

/// Hole 8: a publish that fails (its channel closed) rebuilds the session instead of leaving a
/// dead publisher behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dead_letter_publish_rebuilds_the_session() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("before", "booking.confirmed", "oBefore")).await;
    wait_for("the worker delivers", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 1
    })
    .await;
    // The dead-letter exchange vanishes: the next dead-letter publish closes the channel.
    let ch = env.channel().await;
    ch.exchange_delete(env.topology.dlx.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    env.publish_raw("booking.confirmed", b"not json").await;
    // The rebuilt session declares the topology again: the dead letter lands, later events flow.
    let dead = env.collect_dlq(1, T).await;
    assert_eq!(dead[0].1["wxnotify-reason"], "invalid_event");
    env.publish(&event("after", "booking.confirmed", "oAfter")).await;
    wait_for("the worker delivers again", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 2
    })
    .await;
    worker.stop().await;
}

/// Hole 9 (with 2): when the dead-letter publish fails after an unknown outcome, the released
/// claim stays in doubt, so the redelivered copy is not resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_claim_keeps_its_doubt() {
    let env = TestEnv::with_faults(Faults {
        latency_ms: 1500,
        ..Default::default()
    })
    .await;
    let opts = WorkerOpts {
        http_timeout_secs: 1.0,
        ..Default::default()
    };
    let worker = env.spawn_worker(&opts).await;
    let ch = env.channel().await;
    ch.exchange_delete(env.topology.dlx.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    // WeChat takes the reminder at 750 ms; the worker gives up at 1 s: outcome unknown.
    env.publish(&event("rem-1", "booking.reminder", "oRem")).await;
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_eq!(dead[0].1["wxnotify-reason"], "ambiguous");
    assert_eq!(
        env.sim.stats().accepted,
        1,
        "the reminder reached WeChat once, never twice"
    );
    let (status, reason, doubt, _) = row(&env, "rem-1").await;
    assert_eq!(
        (status.as_str(), reason.as_deref(), doubt),
        ("dead", Some("ambiguous"), true)
    );
}

/// Hole 12: a retry copy that no longer renders after a template change ends `dead` with its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_copy_that_no_longer_renders_ends_dead_with_its_row() {
    let env = TestEnv::with_faults(Faults {
        busy_rate: 1.0,
        ..Default::default()
    })
    .await;
    let mut e = event("tpl-1", "booking.confirmed", "oTpl");
    e["data"]["service"] = "精洗套餐加打蜡服务".into(); // 9 characters: a thing, not a phrase
    let slow_retry = WorkerOpts {
        retry_base_secs: 3.0,
        ..Default::default()
    };
    let worker = env.spawn_worker(&slow_retry).await;
    env.publish(&e).await;
    wait_for("a failed attempt", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'retrying'")
            .await
            == 1
    })
    .await;
    worker.stop().await;

    // The operator changes the template: thing1 becomes phrase1 (at most 5 characters).
    let changed = std::env::temp_dir().join(format!("wxn-templates-{}.toml", uuid::Uuid::new_v4()));
    let original = std::fs::read_to_string(&env.templates).unwrap();
    let (head, tail) = original
        .split_once("\"TPL_BOOKING_CONFIRMED\"")
        .expect("the confirmed template");
    let tail = tail.replacen("thing1 = \"{{ data.service }}\"", "phrase1 = \"{{ data.service }}\"", 1);
    let text = format!("{head}\"TPL_BOOKING_CONFIRMED\"{tail}");
    std::fs::write(&changed, text).unwrap();
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        busy_rate: Some(0.0),
        ..Default::default()
    });
    let worker = env
        .spawn_worker(&WorkerOpts {
            templates: Some(changed.clone()),
            ..Default::default()
        })
        .await;
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    let _ = std::fs::remove_file(changed);
    assert_eq!(dead[0].1["wxnotify-reason"], "render_failed", "{:?}", dead[0].1);
    let (status, reason, _, _) = row(&env, "tpl-1").await;
    assert_eq!((status.as_str(), reason.as_deref()), ("dead", Some("render_failed")));
}

/// Hole 12: a message that keeps coming back is dead-lettered `delivery_limit` by the worker,
/// with its row, one delivery before the broker would do it without telling the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_at_the_delivery_limit_ends_dead_with_its_row() {
    let env = TestEnv::new().await;
    env.publish(&event("crash-1", "booking.confirmed", "oCrash")).await;
    // Workers that crashed on it: taken and handed back 19 times (the limit is 20).
    assert_eq!(env.hand_back(19).await, 19);
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id, status)
         VALUES ('crash-1', 'booking.confirmed', $1, 'oCrash', 'TPL_BOOKING_CONFIRMED', now(), 'x', 'retrying')",
    )
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .unwrap();
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_eq!(dead[0].1["wxnotify-reason"], "delivery_limit");
    let (status, reason, _, _) = row(&env, "crash-1").await;
    assert_eq!((status.as_str(), reason.as_deref()), ("dead", Some("delivery_limit")));
    assert_eq!(env.sim.stats().send_requests, 0);
}

/// Hole 6: the 10-minute window is checked again right before the send, after the token wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_is_checked_again_after_a_long_token_wait() {
    // Tokens live 12 s and are replaced 5 s before they expire: after 7 s a send must fetch one.
    let sim = SimConfig {
        token_ttl: Duration::from_secs(12),
        ..Default::default()
    };
    let env = TestEnv::with_sim(sim).await;
    let opts = WorkerOpts {
        token_margin_secs: 5,
        ..Default::default()
    };
    let worker = env.spawn_worker(&opts).await;
    wait_for("the worker's token due for replacement", T, || async {
        env.count("SELECT count(*) FROM wechat_tokens WHERE refresh_after < now()")
            .await
            == 1
    })
    .await;
    // A delivery in doubt for 568 s: inside the 570 s window when claimed...
    killed_mid_send(
        &env,
        &key("win-1", "TPL_BOOKING_CONFIRMED", "oWin"),
        "booking.confirmed",
        568,
    )
    .await;
    // ...but the token refresh waits 3 s for another process holding the token row.
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM wechat_tokens FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    env.publish(&event("win-1", "booking.confirmed", "oWin")).await;
    wait_for("the worker's token refresh waits for the held row", T, || async {
        env.lock_waiters().await >= 1
    })
    .await;
    // The test's point: time passes while the refresh waits (the other process's refresh takes
    // 3 s), carrying the doubt past the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    holder.commit().await.unwrap();
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_eq!(dead[0].1["wxnotify-reason"], "ambiguous", "{:?}", dead[0].1);
    assert_eq!(env.sim.stats().send_requests, 0, "not sent past the window");
}

/// Hole 3, found in review: a replay of `ambiguous` clears only a doubt older than the replay. When
/// the replayed subscribe send itself times out, a redelivered copy of the replay (its ack lost)
/// must not clear that new doubt and send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_replay_copy_does_not_clear_the_doubt_of_its_own_send() {
    let env = TestEnv::with_faults(Faults {
        latency_ms: 1500,
        ..Default::default()
    })
    .await;
    // A reminder dead-lettered `ambiguous` an hour ago.
    let k = key("amb-sub-1", "TPL_REMINDER", "oAmbSub");
    killed_mid_send(&env, &k, "booking.reminder", 3600).await;
    sqlx::query(
        "UPDATE deliveries SET status = 'dead', dead_reason = 'ambiguous', owner = NULL,
                in_doubt_since = now() - interval '1 hour' WHERE event_id = 'amb-sub-1'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let body = event("amb-sub-1", "booking.reminder", "oAmbSub").to_string();
    env.publish_dead_letter(
        body.as_bytes(),
        &[("wxnotify-reason", "ambiguous"), ("wxnotify-event-id", "amb-sub-1")],
    )
    .await;

    // The operator replays it by name; WeChat takes it at 750 ms, the worker gives up at 1 s.
    let worker = env
        .spawn_worker(&WorkerOpts {
            http_timeout_secs: 1.0,
            ..Default::default()
        })
        .await;
    let done = env.replay_by_reason("ambiguous").await;
    assert_eq!(done.replayed.len(), 1);
    let dead = env.collect_dlq(1, T).await;
    assert_eq!(dead[0].1["wxnotify-reason"], "ambiguous");
    assert_eq!(env.sim.stats().accepted, 1);

    // The replay's copy comes back (its ack was lost): same body, same replay header.
    let mut h = FieldTable::default();
    h.insert(
        "wxnotify-replay".into(),
        AMQPValue::LongString(LongString::from(done.replay_id.as_bytes().to_vec())),
    );
    let props = BasicProperties::default().with_delivery_mode(2).with_headers(h);
    env.publish_to_queue(&env.topology.queue, body.as_bytes(), props).await;
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_eq!(dead[0].1["wxnotify-reason"], "ambiguous");
    assert_eq!(
        env.sim.stats().accepted,
        1,
        "the reminder reached WeChat once, never twice"
    );
}
