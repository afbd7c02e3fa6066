//! Delivery receipts: before their rows, repeated, racing the worker's msgid writes, several in
//! one push, and the whole trip from the worker through the simulator's push.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_before_its_sent_row_is_kept_and_applied_when_the_msgid_is_written() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    for (msgid, status) in [(4001_i64, "success"), (4002, "failed:user block")] {
        let xml = finish(msgid, status);
        assert_eq!(Push::new(&xml, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    }
    assert_eq!(stored_receipts(&env).await, 2, "kept without a delivery");
    assert!(metrics(&receiver).await.contains("result=\"unknown_msgid\""));
    // The row is written with its msgid at once (INSERT) ...
    env.insert_sent("e-1", Some(4001)).await;
    assert_eq!(env.receipt_of(4001).await.as_deref(), Some("delivered"));
    // ... or gets it later (UPDATE), as the worker's record does.
    let id = env.insert_sent("e-2", None).await;
    assert_eq!(env.receipt_of(4002).await, None);
    sqlx::query("UPDATE deliveries SET status = 'sent', wechat_msgid = 4002 WHERE id = $1")
        .bind(id)
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(env.receipt_of(4002).await.as_deref(), Some("user_block"));
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_repeated_three_times_is_applied_once_and_an_older_one_never_wins() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    env.insert_sent("e-1", Some(5001)).await;
    let xml = wire::template_finish("oUser", unix_now() - 10, 5001, "failed:user block");
    let mut seen = Vec::new();
    for _ in 0..3 {
        assert_eq!(Push::new(&xml, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
        let row: (Option<String>, Option<chrono::DateTime<chrono::Utc>>, String) = sqlx::query_as(
            "SELECT receipt_status, receipt_at, (SELECT string_agg(status || '@' || event_at, ',') FROM delivery_receipts)
               FROM deliveries WHERE wechat_msgid = 5001",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        seen.push(row);
    }
    assert_eq!(seen[0].0.as_deref(), Some("user_block"));
    assert!(seen.iter().all(|r| *r == seen[0]), "{seen:?}");
    // An older push (earlier CreateTime) arriving late changes nothing.
    let older = wire::template_finish("oUser", unix_now() - 100, 5001, "success");
    assert_eq!(
        Push::new(&older, Mode::Compatible).send(&receiver).await.0,
        StatusCode::OK
    );
    assert_eq!(env.receipt_of(5001).await.as_deref(), Some("user_block"));

    // Followers: the latest by CreateTime wins, whatever the order of arrival.
    let t = unix_now();
    for (at, followed) in [(t - 20, false), (t - 30, true)] {
        let xml = wire::follow("oFan", at, followed);
        assert_eq!(Push::new(&xml, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    }
    let followed = || async {
        sqlx::query_scalar::<_, bool>("SELECT followed FROM followers WHERE app_id = $1 AND openid = 'oFan'")
            .bind(APP_ID)
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    assert!(
        !followed().await,
        "the older subscribe does not undo the newer unsubscribe"
    );
    let xml = wire::follow("oFan", t - 5, true);
    assert_eq!(
        Push::new(&xml, Mode::Compatible).send(&receiver).await.0,
        StatusCode::OK
    );
    assert!(followed().await);
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_racing_the_writes_of_their_msgids_each_land_on_their_row() {
    const N: i64 = 1000;
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id)
         SELECT 'race-' || i, 'booking.confirmed', $1, 'o' || i, 'TPL', now(), 'c' || i FROM generate_series(1, $2) i",
    )
    .bind(APP_ID)
    .bind(N)
    .execute(&env.pool)
    .await
    .unwrap();
    let status_of = |i: i64| ["success", "failed:user block", "failed: system failed"][(i % 3) as usize];
    let expected_of = |i: i64| ["delivered", "user_block", "system_failed"][(i % 3) as usize];
    let msgid_of = |i: i64| 7_000_000_000_000_000_000 + i;
    // The worker's side: msgids written in batches of 50, as its batched record does, each
    // transaction held open a moment after its UPDATE (a busy database): receipts for those
    // msgids arrive while the msgids are written but not yet committed.
    let pool = env.pool.clone();
    let writer = tokio::spawn(async move {
        for batch in (1..=N).collect::<Vec<_>>().chunks(50) {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(
                "UPDATE deliveries d SET status = 'sent', wechat_msgid = v.msgid, sent_at = now()
                   FROM unnest($1::text[], $2::bigint[]) AS v(event_id, msgid) WHERE d.event_id = v.event_id",
            )
            .bind(batch.iter().map(|i| format!("race-{i}")).collect::<Vec<_>>())
            .bind(batch.iter().map(|&i| msgid_of(i)).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query("SELECT pg_sleep(0.1)").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    });
    // WeChat's side: the receipts, 32 at a time.
    let pushes = futures_util::stream::iter((1..=N).map(|i| {
        let receiver = &receiver;
        async move {
            let xml = finish(msgid_of(i), status_of(i));
            Push::new(&xml, if i % 2 == 0 { Mode::Safe } else { Mode::Compatible })
                .send(receiver)
                .await
                .0
        }
    }));
    use futures_util::StreamExt;
    let answers: Vec<StatusCode> = pushes.buffer_unordered(32).collect().await;
    writer.await.unwrap();
    assert!(answers.iter().all(|s| *s == StatusCode::OK));
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT event_id, receipt_status FROM deliveries ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), N as usize);
    let wrong: Vec<_> = rows
        .iter()
        .filter(|(event_id, status)| {
            let i: i64 = event_id.trim_start_matches("race-").parse().unwrap();
            status.as_deref() != Some(expected_of(i))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} rows without their receipt, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_of_several_receipts_never_deadlocks_with_a_worker_writing_their_msgids() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    // Two msgids whose locks the receiver would take second-first (by their hash order).
    let m1: i64 = 13_001;
    let m2: i64 = sqlx::query_scalar(
        "SELECT m FROM generate_series(13002::bigint, 13100) m WHERE hashint8(m) < hashint8(13001::bigint) LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let r1 = env.insert_sent("e-1", None).await;
    let r2 = env.insert_sent("e-2", None).await;
    // A worker's batched record, mid-way: msgid 1 written (its lock held), msgid 2 next.
    let mut worker = env.pool.begin().await.unwrap();
    sqlx::query("UPDATE deliveries SET status = 'sent', wechat_msgid = $1 WHERE id = $2")
        .bind(m1)
        .bind(r1)
        .execute(&mut *worker)
        .await
        .unwrap();
    let now = unix_now();
    let xml = format!(
        "<xml><ToUserName>gh</ToUserName><FromUserName>oUser</FromUserName><CreateTime>{now}</CreateTime>\
         <MsgType>event</MsgType><Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent>\
         <List><TemplateId>T</TemplateId><MsgID>{m1}</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List>\
         <List><TemplateId>T</TemplateId><MsgID>{m2}</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List>\
         </SubscribeMsgSentEvent></xml>"
    );
    let (query, body) = Push::new(&xml, Mode::Safe).build();
    let url = receiver.url();
    let push = tokio::spawn(async move { post(&url, &query, body).await });
    wait_for(
        "the receiver waits for msgid 1's lock",
        Duration::from_secs(10),
        || async {
            env.count(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
            )
            .await
                == 1
        },
    )
    .await;
    let second = sqlx::query("UPDATE deliveries SET status = 'sent', wechat_msgid = $1 WHERE id = $2")
        .bind(m2)
        .bind(r2)
        .execute(&mut *worker)
        .await;
    assert!(second.is_ok(), "the worker's write failed: {second:?}");
    worker.commit().await.unwrap();
    assert_eq!(push.await.unwrap().0, StatusCode::OK);
    assert_eq!(env.receipt_of(m1).await.as_deref(), Some("delivered"));
    assert_eq!(env.receipt_of(m2).await.as_deref(), Some("delivered"));
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_the_worker_sends_the_simulator_pushes_and_the_row_gets_its_receipt() {
    const N: usize = 300;
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    env.push_to(&receiver, true, 1000);
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        push_user_block_rate: Some(0.2),
        push_system_failed_rate: Some(0.1),
        push_freq_limit_rate: Some(0.1),
        ..Default::default()
    });
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    // Two thirds template messages, a third subscribe messages (booking.reminder).
    for i in 0..N {
        let event_type = if i % 3 == 0 {
            "booking.reminder"
        } else {
            "booking.confirmed"
        };
        env.publish(&event(&format!("e2e-{i}"), event_type, &format!("oE2E{i}")))
            .await;
    }
    wait_for("every delivery with its receipt", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE receipt_status IS NOT NULL")
            .await
            == N as i64
    })
    .await;
    // The simulator notes a push's fate after the receiver's answer: wait for the last notes.
    wait_for("every push noted", Duration::from_secs(10), || async {
        env.sim.pushes().len() == N
    })
    .await;
    let pushed = env.sim.pushes();
    let subscribe_results = pushed
        .iter()
        .filter(|p| matches!(p.event.kind, wechat_sim::PushKind::SubscribeMsgSent { .. }))
        .count();
    assert_eq!(
        subscribe_results,
        N / 3,
        "a subscribe_msg_sent_event for each subscribe message"
    );
    for p in &pushed {
        let (msgid, status) = match &p.event.kind {
            wechat_sim::PushKind::TemplateFinish { msgid, status } => (msgid, status),
            wechat_sim::PushKind::SubscribeMsgSent { msgid, status, .. } => (msgid, status),
            other => panic!("{other:?}"),
        };
        let expected = match status.as_str() {
            "success" => "delivered",
            s if s.starts_with("failed:user") => "user_block",
            "failed:freq limit" => "freq_limit",
            _ => "system_failed",
        };
        assert!(p.acknowledged);
        assert_eq!(env.receipt_of(*msgid).await.as_deref(), Some(expected), "msgid {msgid}");
    }
    assert!(
        env.count("SELECT count(*) FROM deliveries WHERE receipt_status = 'freq_limit'")
            .await
            > 0,
        "WeChat's `failed:freq limit` kept as freq_limit"
    );
    // Follower events on request, through the simulator's control.
    env.sim.follow(APP_ID, "oE2E1", false);
    wait_for("the unfollow stored", Duration::from_secs(10), || async {
        env.count("SELECT count(*) FROM followers WHERE openid = 'oE2E1' AND NOT followed")
            .await
            == 1
    })
    .await;
    worker.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_time_in_the_future_counts_as_the_arrival_time_and_never_outranks_later_pushes() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    // 2100-01-01: a push claiming the future.
    const Y2100: i64 = 4_102_444_800;
    let before = chrono::Utc::now();
    let unsubscribe = wire::follow("oFuture", Y2100, false);
    assert_eq!(
        Push::new(&unsubscribe, Mode::Safe).send(&receiver).await.0,
        StatusCode::OK
    );
    // The genuine subscribe after it, dated a second ahead of our clock (clocks differ).
    let subscribe = wire::follow("oFuture", unix_now() + 1, true);
    assert_eq!(
        Push::new(&subscribe, Mode::Safe).send(&receiver).await.0,
        StatusCode::OK
    );
    let followed: bool = sqlx::query_scalar("SELECT followed FROM followers WHERE openid = 'oFuture'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(followed, "the later subscribe wins");
    let changed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT changed_at FROM followers WHERE openid = 'oFuture'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(
        changed_at >= before && changed_at <= chrono::Utc::now(),
        "stored as of its arrival, not its CreateTime: {changed_at}"
    );

    // Receipts are ordered the same way.
    env.insert_sent("e-1", Some(6001)).await;
    let future = wire::template_finish("oUser", Y2100, 6001, "failed:user block");
    assert_eq!(Push::new(&future, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    let later = wire::template_finish("oUser", unix_now() + 1, 6001, "success");
    assert_eq!(Push::new(&later, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    assert_eq!(env.receipt_of(6001).await.as_deref(), Some("delivered"));
    let receipt_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT receipt_at FROM deliveries WHERE wechat_msgid = 6001")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(receipt_at <= chrono::Utc::now(), "{receipt_at}");
    receiver.stop().await;
}
