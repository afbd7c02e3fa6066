//! No `success` for what was not stored: an unreachable or slow Postgres, and the broker spill
//! that takes pushes Postgres cannot.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_success_for_what_postgres_did_not_store_and_retries_land_after() {
    const N: i64 = 20;
    let env = TestEnv::new().await;
    let upstream = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::to(upstream).await;
    let via_proxy = env.db_url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(via_proxy, env.db_url, "the test database is on 127.0.0.1:5432");
    let receiver = env.spawn_receiver(Some(&via_proxy), false).await;
    // WeChat's tries 3 s apart: room for the checks below before the last one.
    env.push_to(&receiver, true, 3000);
    for i in 0..N {
        env.insert_sent(&format!("e-{i}"), Some(8000 + i)).await;
    }
    proxy.cut();
    for i in 0..N {
        env.sim.push(wechat_sim::PushEvent {
            appid: APP_ID.into(),
            openid: "oUser".into(),
            kind: wechat_sim::PushKind::TemplateFinish {
                msgid: 8000 + i,
                status: "success".into(),
            },
        });
    }
    wait_for("every first try refused", Duration::from_secs(20), || async {
        env.sim.stats().push_tries_failed >= N as u64
    })
    .await;
    assert_eq!(
        env.sim.stats().pushes_acknowledged,
        0,
        "no success while Postgres is away"
    );
    assert_eq!(stored_receipts(&env).await, 0);
    assert!(metrics(&receiver).await.contains("result=\"db_error\""));
    wait_for("/readyz says not ready", Duration::from_secs(5), || async {
        readyz(&receiver).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;

    let _back = Proxy::at(proxy.addr, upstream).await;
    wait_for("every receipt applied by a retry", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM deliveries WHERE receipt_status = 'delivered'")
            .await
            == N
    })
    .await;
    wait_for("every push acknowledged", Duration::from_secs(10), || async {
        env.sim.stats().pushes_acknowledged == N as u64
    })
    .await;
    assert_eq!(env.sim.stats().pushes_abandoned, 0);
    wait_for("/readyz says ready again", Duration::from_secs(10), || async {
        readyz(&receiver).await == StatusCode::OK
    })
    .await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_broker_a_push_postgres_cannot_take_is_queued_answered_success_and_stored_later() {
    const N: i64 = 20;
    let env = TestEnv::new().await;
    let upstream = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::to(upstream).await;
    let via_proxy = env.db_url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let receiver = env.spawn_receiver(Some(&via_proxy), true).await;
    for i in 0..N {
        env.insert_sent(&format!("e-{i}"), Some(9000 + i)).await;
    }
    proxy.cut();
    let receiver_ref = &receiver;
    let answers = futures_util::future::join_all((0..N).map(|i| async move {
        let xml = finish(9000 + i, "success");
        let started = Instant::now();
        let answer = Push::new(&xml, Mode::Safe).send(receiver_ref).await;
        (answer, started.elapsed())
    }))
    .await;
    for (answer, took) in answers {
        assert_eq!(answer, (StatusCode::OK, "success".into()));
        assert!(took < Duration::from_secs(5), "within WeChat's 5 s: {took:?}");
    }
    assert_eq!(
        stored_receipts(&env).await,
        0,
        "not in Postgres yet: in the pushes queue"
    );
    assert!(metrics(&receiver).await.contains("result=\"queued\""));

    let _back = Proxy::at(proxy.addr, upstream).await;
    wait_for(
        "every queued receipt stored and applied",
        Duration::from_secs(30),
        || async {
            env.count("SELECT count(*) FROM deliveries WHERE receipt_status = 'delivered'")
                .await
                == N
        },
    )
    .await;
    receiver.stop().await;
    let ch = env.channel().await;
    let pushes = format!("{}.pushes", env.topology.queue);
    let _ = ch
        .queue_delete(pushes.as_str().into(), lapin::options::QueueDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_gets_503_within_4_s_and_the_retry_lands() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    env.insert_sent("e-1", Some(10_001)).await;
    // A stuck transaction holds the msgid's lock (as a worker's write of it would): the receiver waits.
    let mut blocker = env.pool.begin().await.unwrap();
    sqlx::query("SELECT lock_receipt_msgid(10001)")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let xml = finish(10_001, "failed:user block");
    let started = Instant::now();
    let (status, _) = Push::new(&xml, Mode::Safe).send(&receiver).await;
    let took = started.elapsed();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no success before it is stored"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "answered before WeChat's 5 s: {took:?}"
    );
    assert_eq!(env.receipt_of(10_001).await, None);
    blocker.rollback().await.unwrap();
    // WeChat's next try.
    assert_eq!(Push::new(&xml, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    assert_eq!(env.receipt_of(10_001).await.as_deref(), Some("user_block"));
    receiver.stop().await;
}
