//! Bookings sent from each merchant's own account; a revoked merchant's bookings wait in the DLQ
//! (`unauthorized`) until it authorizes again and they are replayed.

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookings_go_from_each_merchants_account_and_a_revoked_merchants_wait_in_the_dlq() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    let (m1, m2) = ("wxMERCHANT0000031", "wxMERCHANT0000032");
    onboard(&env, &t, &[m1, m2]).await;
    let file = platforms_file(&env);
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut worker = spawn_worker(&env, &file, admin);
    // m2 withdrew its authorization (the receiver stored `unauthorized`).
    env.sim.revoke_merchant(PLATFORM, m2).unwrap();
    sqlx::query("UPDATE authorizers SET state = 'revoked', revoked_at = now() WHERE authorizer_appid = $1")
        .bind(m2)
        .execute(&env.pool)
        .await
        .unwrap();
    let booking = |id: &str, app: &str| {
        let mut e = crate::common::event(id, "booking.confirmed", &format!("o-{id}"));
        e["app_id"] = app.into();
        e
    };
    env.publish(&booking("m-1", m1)).await;
    env.publish(&booking("m-2", m2)).await;
    env.publish(&booking("m-3", "wxNOBODY00000000")).await;
    crate::helpers::wait_for("the three final", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status IN ('sent', 'dead')")
            .await
            == 3
    })
    .await;
    let reasons: std::collections::HashMap<String, (String, Option<String>)> =
        sqlx::query_as::<_, (String, String, Option<String>)>("SELECT event_id, status, dead_reason FROM deliveries")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(e, s, r)| (e, (s, r)))
            .collect();
    assert_eq!(reasons["m-1"], ("sent".into(), None));
    assert_eq!(reasons["m-2"], ("dead".into(), Some("unauthorized".into())));
    assert_eq!(reasons["m-3"], ("dead".into(), Some("invalid_event".into())));
    let sent = env.sim.messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].appid, m1, "sent from the merchant's own account");
    // m2 authorizes again; its booking is replayed from the DLQ and goes from its account.
    reauthorize(&env, &t, m2).await;
    let report = env.replay_by_reason("unauthorized").await;
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    crate::helpers::wait_for("m-2 sent", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE event_id = 'm-2' AND status = 'sent'")
            .await
            == 1
    })
    .await;
    assert_eq!(env.sim.messages().last().unwrap().appid, m2);
    // The platform's merchants by state, sampled by the worker.
    wait_merchants_sampled(admin, 2).await;
    let _ = worker.start_kill();
    let _ = worker.wait().await;
}
