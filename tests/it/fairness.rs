//! Fairness between apps (docs/interface.md §11): one app's backlog never holds up another's
//! message. Each test queues a backlog for the default app, then sends a few events for a second
//! app and checks *when* they went: while the backlog was still far from drained, not after it.
//! (How fast, in milliseconds, is the fairness benchmark's business: `cargo bench --bench fairness`.)

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
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
    let mut worker = spawn_worker(
        env,
        &file,
        &[&[("WXNOTIFY_CONCURRENCY", "8"), ("WXNOTIFY_PREFETCH", "64")], settings].concat(),
    );
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
    for app in [APP_ID, B] {
        if ready_in(env, &env.topology.lane(app)).await > 0 {
            return false;
        }
    }
    true
}

/// WeChat answering each send after 20 ms.
async fn answering_in_20_ms() -> TestEnv {
    TestEnv::with_sim(SimConfig {
        faults: Faults {
            latency_ms: 20,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_apps_events_do_not_wait_behind_a_campaign() {
    let env = answering_in_20_ms().await;
    // 8 sends at a time, 20 ms each: the backlog takes seconds; B's events must not.
    b_behind_a_backlog(&env, 1500, 1000, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_waiting_for_its_rate_leaves_the_permits_to_the_others() {
    let env = TestEnv::new().await;
    // 20 sends a second per app: A's backlog of 200 takes 10 s; its waiters hold no permit.
    b_behind_a_backlog(&env, 200, 100, &[("WXNOTIFY_RATE_LIMIT", "20")]).await;
}

/// A worker of several apps with these settings (defaults otherwise), its output discarded.
fn spawn_worker(env: &TestEnv, file: &AppsFile, settings: &[(&str, &str)]) -> tokio::process::Child {
    env.worker_command()
        .env("WXNOTIFY_TEMPLATES", &file.0)
        .envs(apps_env())
        .envs(settings.iter().copied())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start wxnotify worker")
}

/// A parked batch of these events, built as docs/interface.md §11 says a worker parks them.
fn batch_of(events: &[serde_json::Value]) -> (Vec<u8>, BasicProperties) {
    let mut body = Vec::new();
    for e in events {
        let props = BasicProperties::default().with_delivery_mode(2);
        for part in [serde_json::to_vec(&props).unwrap(), e.to_string().into_bytes()] {
            body.extend_from_slice(&(part.len() as u32).to_be_bytes());
            body.extend_from_slice(&part);
        }
    }
    (body, batch_props(events.len() as u32))
}

fn batch_props(members: u32) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("wxnotify-batch".into(), AMQPValue::LongUInt(members));
    BasicProperties::default().with_delivery_mode(2).with_headers(headers)
}

/// A worker that died holding a parked batch: the broker hands the batch out again, and the next
/// worker splits it into single messages; each event still goes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_handed_out_again_is_split_and_each_event_goes_once() {
    let env = TestEnv::new().await;
    let file = AppsFile(apps_file(&std::env::temp_dir()));
    let lane = env.topology.lane(B);
    // A first worker declares the lanes; it is gone before the batch arrives.
    let mut first = spawn_worker(&env, &file, &[]);
    env.publish(&for_app("b-first", B)).await;
    wait_for("the first worker's send", T, || async { accepted(&env, B) == 1 }).await;
    first.start_kill().expect("kill");
    let _ = first.wait().await;
    let events: Vec<serde_json::Value> = (0..10).map(|i| for_app(&format!("b-{i}"), B)).collect();
    let (body, props) = batch_of(&events);
    env.publish_to_queue(&lane, &body, props).await;
    // Taken and handed back, as by a worker that died: the broker marks it redelivered.
    let ch = env.channel().await;
    let taken = ch
        .basic_get(lane.as_str().into(), BasicGetOptions::default())
        .await
        .expect("basic_get")
        .expect("the batch is in the lane");
    taken
        .delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("nack");
    let mut worker = spawn_worker(&env, &file, &[]);
    wait_for("the batch's ten sends", T, || async { accepted(&env, B) == 11 }).await;
    wait_for("the lanes empty", T, || lanes_empty(&env)).await;
    worker.start_kill().expect("kill");
    let _ = worker.wait().await;
    assert_eq!(env.sim.stats().accepted, 11, "each event sent once");
}

/// A lane message that says it is a batch but cannot be read is dead-lettered; the lane goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_be_read_is_dead_lettered_and_the_lane_goes_on() {
    let env = TestEnv::new().await;
    let file = AppsFile(apps_file(&std::env::temp_dir()));
    let mut worker = spawn_worker(&env, &file, &[]);
    env.publish(&for_app("b-first", B)).await;
    wait_for("the first send", T, || async { accepted(&env, B) == 1 }).await;
    let (good, _) = batch_of(&[for_app("b-cut", B), for_app("b-cut-2", B)]);
    env.publish_to_queue(&env.topology.lane(B), &good[..good.len() - 3], batch_props(2))
        .await;
    let (body, props) = batch_of(&[for_app("b-after", B), for_app("b-after-2", B)]);
    env.publish_to_queue(&env.topology.lane(B), &body, props).await;
    wait_for("the readable batch's sends", T, || async { accepted(&env, B) == 3 }).await;
    let dead = env.collect_dlq(1, T).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, good[..good.len() - 3], "the batch as it was");
    worker.start_kill().expect("kill");
    let _ = worker.wait().await;
    assert_eq!(env.sim.stats().accepted, 3, "nothing of the unreadable batch was sent");
}

/// Ready messages in `queue` now.
async fn ready_in(env: &TestEnv, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let ch = env.channel().await;
    ch.queue_declare(queue.into(), passive, Default::default())
        .await
        .expect("the queue exists")
        .message_count()
}

/// A worker killed while it holds parked batches (and sends from them): the batches come back,
/// are split, and every event reaches WeChat once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_holding_parked_batches_loses_and_duplicates_nothing() {
    let env = answering_in_20_ms().await;
    let file = AppsFile(apps_file(&std::env::temp_dir()));
    let backlog = 1500;
    for i in 0..backlog {
        env.publish(&for_app(&format!("a-{i}"), APP_ID)).await;
    }
    let settings = [("WXNOTIFY_CONCURRENCY", "8"), ("WXNOTIFY_PREFETCH", "256")];
    let mut first = spawn_worker(&env, &file, &settings);
    wait_for("A's backlog parked and being sent", T, || async {
        accepted(&env, APP_ID) >= 200 && ready_in(&env, &env.topology.queue).await == 0
    })
    .await;
    // Batches, not single messages: fewer lane messages than half the messages still to send
    // (how full each batch is depends on how fast the broker hands the work queue over).
    let lane = env.topology.lane(APP_ID);
    let (in_lane, left) = (ready_in(&env, &lane).await as usize, backlog - accepted(&env, APP_ID));
    eprintln!("fairness: {in_lane} lane messages for {left} events when the worker was killed");
    assert!(
        2 * in_lane <= left,
        "the lane holds {in_lane} messages for {left} events: batches would be fewer"
    );
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;
    let mut second = spawn_worker(&env, &file, &settings);
    wait_for("the whole backlog", T * 3, || async {
        accepted(&env, APP_ID) == backlog
    })
    .await;
    wait_for("the lanes empty", T, || lanes_empty(&env)).await;
    second.start_kill().expect("kill");
    let _ = second.wait().await;
    assert_eq!(env.sim.stats().accepted as usize, backlog, "each event at WeChat once");
    assert!(env.drain_dlq().await.is_empty(), "nothing dead-lettered");
}

/// A batch in the dead-letter queue (unreadable once, or past the lane's delivery limit) is
/// replayed like any dead letter: into the work queue, where the worker unpacks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_replayed_from_the_dead_letter_queue_sends_each_member() {
    let env = TestEnv::new().await;
    let file = AppsFile(apps_file(&std::env::temp_dir()));
    let events: Vec<serde_json::Value> = (0..3).map(|i| for_app(&format!("b-dlq-{i}"), B)).collect();
    let (body, props) = batch_of(&events);
    env.publish_to_queue(&env.topology.dlq, &body, props).await;
    let out = env.wxnotify(&["dlq", "replay", "--all"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut worker = spawn_worker(&env, &file, &[]);
    wait_for("the three members sent", T, || async { accepted(&env, B) == 3 }).await;
    wait_for("the three recorded sent", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 3
    })
    .await;
    worker.start_kill().expect("kill");
    let _ = worker.wait().await;
    // (Not "nothing ready": killed between the record and the ack, the batch goes back, and the
    // next worker would ack its members as already sent.)
    assert!(env.drain_dlq().await.is_empty(), "nothing dead-lettered again");
}
