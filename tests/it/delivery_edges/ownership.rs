//! Who writes a delivery's row: a proven send wins over another's record; an outcome that proves
//! nothing is written only by the claim's owner.

use super::*;

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
