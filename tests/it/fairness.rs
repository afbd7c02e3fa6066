//! Fairness between apps (docs/interface.md §11): one app's backlog never holds up another's
//! message. Each test queues a backlog for the default app, then sends a few events for a second
//! app and checks *when* they went: while the backlog was still far from drained, not after it.
//! (How fast, in milliseconds, is the fairness benchmark's business: `cargo bench --bench fairness`.)

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use wechat_sim::{Faults, SimConfig};

use crate::common::{APP_ID, OTHER_APPS, apps_env, apps_file};
use crate::helpers::{TestEnv, event, wait_for};

const T: Duration = Duration::from_secs(90);
const B: &str = OTHER_APPS[0].0;

/// The templates file of several apps, removed when dropped (a failing test too).
struct AppsFile(PathBuf);

impl Drop for AppsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn for_app(id: &str, app: &str) -> serde_json::Value {
    let mut e = event(id, "booking.confirmed", &format!("o-{id}"));
    e["app_id"] = app.into();
    e
}

/// Sends WeChat accepted for `app` so far.
fn accepted(env: &TestEnv, app: &str) -> usize {
    env.sim.messages().iter().filter(|m| m.appid == app).count()
}

/// Queues `backlog` events of the default app, starts a worker of 8 permits (and these
/// settings), waits for its first sends, then publishes 5 events of app B and waits for them.
/// Checks that fewer than `most` of the backlog had been sent when B's last one was, then that
/// everything went once and the lanes are empty.
async fn b_behind_a_backlog(env: &TestEnv, backlog: usize, most: usize, settings: &[(&str, &str)]) {
    let file = AppsFile(apps_file(&std::env::temp_dir()));
    for i in 0..backlog {
        env.publish(&for_app(&format!("a-{i}"), APP_ID)).await;
    }
    let mut worker = env
        .worker_command()
        .env("WXNOTIFY_TEMPLATES", &file.0)
        .envs(apps_env())
        .env("WXNOTIFY_CONCURRENCY", "8")
        .env("WXNOTIFY_PREFETCH", "64")
        .envs(settings.iter().copied())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start wxnotify worker");
    wait_for("A's first sends", T, || async { accepted(env, APP_ID) >= 20 }).await;
    for i in 0..5 {
        env.publish(&for_app(&format!("b-{i}"), B)).await;
    }
    wait_for("B's five sends", T, || async { accepted(env, B) == 5 }).await;
    let a_sent = accepted(env, APP_ID);
    eprintln!("fairness: B's 5 events were sent when {a_sent} of A's {backlog} were ({settings:?})");
    assert!(
        a_sent < most,
        "B waited for A: {a_sent} of A's {backlog} were sent before B's last"
    );
    wait_for("the whole backlog", T * 3, || async {
        accepted(env, APP_ID) == backlog
    })
    .await;
    // Every message acked: the lanes hold nothing (acks follow the sends by a moment).
    wait_for("the lanes empty", T, || lanes_empty(env)).await;
    worker.start_kill().expect("kill");
    let _ = worker.wait().await;
    assert_eq!(env.sim.stats().accepted as usize, backlog + 5, "each event sent once");
}

async fn lanes_empty(env: &TestEnv) -> bool {
    let ch = env.channel().await;
    for app in [APP_ID, B] {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let lane = env.topology.lane(app);
        let q = ch
            .queue_declare(lane.as_str().into(), passive, Default::default())
            .await
            .expect("the lane exists");
        if q.message_count() > 0 {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_apps_events_do_not_wait_behind_a_campaign() {
    let env = TestEnv::with_sim(SimConfig {
        faults: Faults {
            latency_ms: 20,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    // 8 sends at a time, 20 ms each: the backlog takes seconds; B's events must not.
    b_behind_a_backlog(&env, 1500, 1000, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_waiting_for_its_rate_leaves_the_permits_to_the_others() {
    let env = TestEnv::new().await;
    // 20 sends a second per app: A's backlog of 200 takes 10 s; its waiters hold no permit.
    b_behind_a_backlog(&env, 200, 100, &[("WXNOTIFY_RATE_LIMIT", "20")]).await;
}
