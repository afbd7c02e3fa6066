//! A fleet serving many merchants: 200 merchants, 3 worker processes, 5,000 bookings, a merchant's
//! access tokens revoked behind the fleet's back every 300 ms (WeChat also rotating the refresh
//! token on every refresh), and one worker SIGKILLed halfway. Every booking is sent exactly once
//! from its merchant's account; the fleet's `api_authorizer_token` calls stay within rotations +
//! merchants + kills; and every merchant's stored refresh token is the one WeChat holds valid.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

const MERCHANTS: usize = 200;
const BOOKINGS: usize = 5_000;

fn merchant(i: usize) -> String {
    format!("wxFLEET{i:011}")
}

/// Revokes one merchant's access tokens every 300 ms until `stop`.
fn rotate_until(env: &TestEnv, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let sim = env.sim.clone();
    tokio::spawn(async move {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            sim.rotate_merchants(Some(PLATFORM), Some(&merchant(i * 37 % MERCHANTS)));
            i += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_merchants_three_workers_a_kill_every_booking_once_from_its_account() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    let names: Vec<String> = (0..MERCHANTS).map(merchant).collect();
    onboard(&env, &t, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        rotate_refresh_on_refresh: Some(true),
        ..Default::default()
    });
    let file = platforms_file(&env);
    let mut workers: Vec<_> = (0..3).map(|_| spawn_worker(&env, &file, free_addr())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let rotations = rotate_until(&env, stop.clone());
    let mut owner = HashMap::new();
    for i in 0..BOOKINGS {
        let id = format!("fleet-{i}");
        let m = merchant(i % MERCHANTS);
        let mut e = crate::common::event(&id, "booking.confirmed", &format!("o-{i}"));
        e["app_id"] = m.as_str().into();
        env.publish(&e).await;
        owner.insert(id, m);
    }
    crate::helpers::wait_for("a third sent", Duration::from_secs(120), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await >= (BOOKINGS / 3) as i64
    })
    .await;
    let _ = workers[0].start_kill();
    let _ = workers[0].wait().await;
    crate::helpers::wait_for("all sent", Duration::from_secs(240), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == BOOKINGS as i64
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    rotations.await.unwrap();
    check_each_sent_once(&env, &owner);
    let stats = env.sim.platform_stats();
    let rotated = stats.merchant_rotations.get(PLATFORM).copied().unwrap_or(0);
    let calls = stats.authorizer_token_calls;
    println!(
        "{BOOKINGS} bookings, {MERCHANTS} merchants, 3 workers, 1 killed: api_authorizer_token calls {calls}, \
         rotations {rotated}, bound {} (rotations + merchants + kills); 61023 answers {}",
        rotated + MERCHANTS as u64 + 1,
        stats.refresh_token_invalid
    );
    assert!(calls <= rotated + MERCHANTS as u64 + 1, "{stats:?}");
    // Tighter: onboarding gave every merchant a fresh token, so only a rotation (or the kill)
    // calls for a refresh, once for the fleet.
    assert!(calls <= rotated + 1, "a rotation refreshed more than once: {stats:?}");
    for m in &names {
        assert_eq!(
            stored_refresh_token(&env, m).await,
            env.sim.refresh_token_of(PLATFORM, m),
            "{m}: the stored refresh token is the one WeChat holds valid"
        );
    }
    assert_eq!(
        env.count("SELECT count(*) FROM deliveries WHERE status = 'dead'").await,
        0
    );
    for w in &mut workers[1..] {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
}

/// Every booking at WeChat exactly once, from its merchant's account.
fn check_each_sent_once(env: &TestEnv, owner: &HashMap<String, String>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in env.sim.messages() {
        let event = m.touser.strip_prefix("o-").map(|i| format!("fleet-{i}")).unwrap();
        assert_eq!(&m.appid, &owner[&event], "{event} sent from another account");
        *seen.entry(event).or_default() += 1;
    }
    assert_eq!(seen.len(), owner.len(), "every booking sent");
    assert!(seen.values().all(|&n| n == 1), "a booking sent twice");
}
