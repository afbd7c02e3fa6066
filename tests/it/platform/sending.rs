//! Bookings sent from each merchant's own account; a revoked merchant's bookings wait in the DLQ
//! (`unauthorized`) until it authorizes again and they are replayed; without a verify ticket
//! deliveries wait (no attempt used) until WeChat, asked for one, pushes it.

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookings_go_from_each_merchants_account_and_a_revoked_merchants_wait_in_the_dlq() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    let (m1, m2) = ("wxMERCHANT0000031", "wxMERCHANT0000032");
    onboard(&env, &t, &[m1, m2]).await;
    let file = platforms_file(&env);
    let admin = free_addr();
    let mut worker = spawn_worker(&env, &file, admin);
    let booking = |id: &str, app: &str| booking(id, "booking.confirmed", app);
    // m2's booking goes first: the worker now holds m2's token.
    env.publish(&booking("m-2-first", m2)).await;
    crate::helpers::wait_for("m2's first booking sent", Duration::from_secs(60), || async {
        env.sim.messages().len() == 1
    })
    .await;
    // m2 withdraws its authorization: WeChat stops taking its tokens and pushes `unauthorized`,
    // which the receiver stores. The worker hears of it and forgets the token it held.
    env.sim.revoke_merchant(PLATFORM, m2).unwrap();
    sqlx::query("UPDATE authorizers SET state = 'revoked', revoked_at = now() WHERE authorizer_appid = $1")
        .bind(m2)
        .execute(&env.pool)
        .await
        .unwrap();
    wait_metric(admin, "wxnotify_platform_state_changes_heard_total 1").await;
    env.publish(&booking("m-1", m1)).await;
    for i in 0..10 {
        env.publish(&booking(&format!("m-2-{i}"), m2)).await;
    }
    env.publish(&booking("m-3", "wxNOBODY00000000")).await;
    crate::helpers::wait_for("the thirteen final", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status IN ('sent', 'dead')")
            .await
            == 13
    })
    .await;
    let fates: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT event_id, status, dead_reason FROM deliveries ORDER BY event_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for (event, status, reason) in &fates {
        let expected = match event.as_str() {
            "m-1" | "m-2-first" => ("sent", None),
            "m-3" => ("dead", Some("invalid_event")),
            _ => ("dead", Some("unauthorized")),
        };
        assert_eq!((status.as_str(), reason.as_deref()), expected, "{event}");
    }
    let sent = env.sim.messages();
    assert_eq!(sent.len(), 2, "nothing sent for the revoked merchant");
    assert_eq!(sent[1].appid, m1, "sent from the merchant's own account");
    let tried: Vec<String> = sqlx::query_scalar(
        "SELECT d.event_id || ': ' || COALESCE(a.errcode::text, '') || ' ' || COALESCE(a.errmsg, '')
           FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE a.errcode <> 0",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        tried.is_empty(),
        "no send tried with the revoked merchant's token: {tried:?}"
    );
    // m2 authorizes again; its bookings are replayed from the DLQ and go from its account, once.
    reauthorize(&env, &t, m2).await;
    let report = env.replay_by_reason("unauthorized").await;
    assert_eq!(report.replayed.len(), 10, "{report:?}");
    crate::helpers::wait_for("m-2's ten sent", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE event_id LIKE 'm-2-%' AND status = 'sent'")
            .await
            == 11
    })
    .await;
    let sent = env.sim.messages();
    assert_eq!(sent.len(), 12, "each replayed booking sent once");
    assert_eq!(sent.iter().filter(|m| m.appid == m2).count(), 11);
    // The platform's merchants by state, sampled by the worker.
    wait_merchants_sampled(admin, 2).await;
    let _ = worker.start_kill();
    let _ = worker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ticket_deliveries_wait_until_one_arrives_and_nothing_is_dead_lettered() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    let m = "wxMERCHANT0000035";
    onboard(&env, &t, &[m]).await;
    // Ticket pushes stopped 13 h ago, and every token the platform holds has expired.
    sqlx::query("UPDATE platform_tickets SET pushed_at = now() - interval '13 hours'")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE platform_tokens SET expires_at = now()")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE authorizers SET access_expires_at = now()")
        .execute(&env.pool)
        .await
        .unwrap();
    let file = platforms_file(&env);
    let admin = free_addr();
    let mut worker = spawn_worker(&env, &file, admin);
    for i in 0..5 {
        env.publish(&booking(&format!("nt-{i}"), "booking.confirmed", m)).await;
    }
    crate::helpers::wait_for("WeChat asked for a ticket", Duration::from_secs(60), || async {
        env.sim
            .platform_stats()
            .start_push_ticket_calls
            .get(PLATFORM)
            .copied()
            .unwrap_or(0)
            > 0
    })
    .await;
    crate::helpers::wait_for("the five claimed and waiting", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'retrying'")
            .await
            == 5
    })
    .await;
    let out = env
        .wxnotify(&["status"])
        .env("WXNOTIFY_TEMPLATES", &file.0)
        .env("WXN_TEST_COMPONENT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("WAITING FOR A TICKET"));
    assert!(env.sim.messages().is_empty(), "nothing sent without a token");
    // WeChat pushes a ticket; the receiver stores it.
    let ticket = env.sim.push_ticket(PLATFORM).unwrap();
    sqlx::query("UPDATE platform_tickets SET ticket = $1, pushed_at = now()")
        .bind(ticket)
        .execute(&env.pool)
        .await
        .unwrap();
    crate::helpers::wait_for("the five sent", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 5
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM deliveries WHERE status = 'dead'").await,
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM deliveries WHERE attempts > 1").await,
        0,
        "the wait used no attempt"
    );
    assert_eq!(env.sim.messages().len(), 5);
    let asked = env.sim.platform_stats().start_push_ticket_calls[PLATFORM];
    assert_eq!(asked, 1, "asked once for the fleet, not once per delivery");
    let _ = worker.start_kill();
    let _ = worker.wait().await;
}

/// Waits until the worker on `admin` exposes `line` in its metrics.
async fn wait_metric(admin: std::net::SocketAddr, line: &str) {
    let metrics = format!("http://{admin}/metrics");
    crate::helpers::wait_for(line, Duration::from_secs(30), || async {
        match reqwest::get(&metrics).await {
            Ok(r) => r.text().await.unwrap_or_default().contains(line),
            Err(_) => false,
        }
    })
    .await;
}
