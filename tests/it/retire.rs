//! A worker that stops hands back the claims it still holds; only those whose send may have
//! started are marked in doubt (docs/interface.md §3). A subscribe message cut off before its
//! send is sent by the next worker, not dead-lettered `ambiguous` for nothing.

use std::process::Stdio;
use std::time::Duration;

use wechat_sim::SimConfig;

use crate::helpers::{TestEnv, event, wait_for};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_cut_off_before_its_send_is_not_marked_in_doubt() {
    // Tokens live 4 s and are due for refresh after 2: the delivery's token is refreshed under
    // the token row's lock, which the test holds.
    let env = TestEnv::with_sim(SimConfig {
        token_ttl: Duration::from_secs(4),
        ..SimConfig::default()
    })
    .await;
    let mut child = env
        .worker_command()
        .env("WXNOTIFY_SHUTDOWN_GRACE_SECS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wxnotify worker");
    wait_for("the worker's first token, due for refresh", T, || async {
        env.count("SELECT count(*) FROM wechat_tokens WHERE refresh_after < now()")
            .await
            == 1
    })
    .await;
    let mut tx = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM wechat_tokens FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    env.publish(&event("rt-1", "booking.reminder", "oRetire")).await;
    wait_for("claimed, waiting for the token", T, || async {
        env.statuses().await.get("rt-1").map(String::as_str) == Some("pending") && env.lock_waiters().await >= 1
    })
    .await;
    let pid = child.id().expect("pid").to_string();
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("exit status");
    assert!(status.success(), "{status:?}");
    let doubt: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT in_doubt_since FROM deliveries WHERE event_id = 'rt-1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(doubt, None, "a claim that never reached its send was marked in doubt");
    assert_eq!(env.sim.stats().send_requests, 0, "nothing was sent");
}
