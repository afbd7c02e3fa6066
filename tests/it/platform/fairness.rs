//! One merchant's backlog never holds up another merchant's customer (docs/interface.md §11):
//! merchant A's 3,000 bookings are queued, merchant B's one booking comes after them; B's is sent
//! while most of A's still wait, parked in the merchant lanes.

use super::*;

const BACKLOG: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchants_booking_does_not_wait_behind_another_merchants_backlog() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    let a = "wxMERCHANT0000071";
    // B parks in another merchant lane than A.
    let b = (72..200)
        .map(|i| format!("wxMERCHANT{i:07}"))
        .find(|m| env.topology.merchant_lane_of(m) != env.topology.merchant_lane_of(a))
        .unwrap();
    onboard(&env, &t, &[a, &b]).await;
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        latency_ms: Some(100),
        ..Default::default()
    });
    let booking = |id: String, merchant: &str| booking(&id, "booking.confirmed", merchant);
    for i in 0..BACKLOG {
        env.publish(&booking(format!("a-{i}"), a)).await;
    }
    env.publish(&booking("b-0".into(), &b)).await;
    let file = platforms_file(&env);
    let admin = free_addr();
    // 20 sends at a time, each 100 ms: A's backlog takes about 15 s.
    let mut worker = env
        .worker_command()
        .env("WXNOTIFY_TEMPLATES", &file.0)
        .env("WXN_TEST_COMPONENT_SECRET", SECRET)
        .env("WXNOTIFY_ADMIN_ADDR", admin.to_string())
        .env("WXNOTIFY_CONCURRENCY", "20")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::helpers::wait_for("B's booking sent", Duration::from_secs(90), || async {
        env.sim.messages().iter().any(|m| m.appid == b)
    })
    .await;
    let a_sent = env.sim.messages().iter().filter(|m| m.appid == a).count();
    println!("B's booking sent after {a_sent} of A's {BACKLOG}");
    assert!(a_sent < BACKLOG / 3, "B waited for {a_sent} of A's");
    let _ = worker.start_kill();
    let _ = worker.wait().await;
}
