//! Reminders that wait for their time (docs/interface.md §8), with the shipped templates.toml: a
//! `booking.confirmed` makes the confirmation (at once) and `TPL_BOOKING_REMINDER` (an hour before
//! `slot_start`, never after it, cancelled by `booking.cancelled` / `booking.rescheduled` with the
//! same `booking_id`). The simulator records when each message arrived.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeDelta, Timelike, Utc};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use wechat_sim::Accepted;
use wxnotify::queue::headers;

use crate::helpers::{TestEnv, WorkerOpts, wait_for};

const T: Duration = Duration::from_secs(60);
const REMINDER: &str = "TPL_BOOKING_REMINDER";

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates.toml")
}

fn opts() -> WorkerOpts {
    WorkerOpts {
        templates: Some(shipped()),
        ..WorkerOpts::default()
    }
}

fn beijing(t: DateTime<Utc>) -> String {
    t.with_timezone(&FixedOffset::east_opt(8 * 3600).unwrap()).to_rfc3339()
}

/// A booking event whose reminder falls due `remind_in` from now (its slot an hour later).
fn booking(
    event_id: &str,
    event_type: &str,
    booking_id: &str,
    openid: &str,
    remind_in: TimeDelta,
    occurred: DateTime<Utc>,
) -> serde_json::Value {
    let slot = Utc::now() + remind_in + TimeDelta::minutes(60);
    serde_json::json!({
        "event_id": event_id, "event_type": event_type, "occurred_at": beijing(occurred),
        "openid": openid,
        "data": {"booking_id": booking_id, "service": "精洗套餐", "store": "徐汇店",
                 "slot_start": beijing(slot), "plate": "沪A12345", "price_cents": 3980}
    })
}

fn reminders(env: &TestEnv) -> Vec<Accepted> {
    env.sim
        .messages()
        .into_iter()
        .filter(|m| m.template_id == REMINDER)
        .collect()
}

async fn row(env: &TestEnv, event_id: &str, template_id: &str) -> Option<(String, Option<DateTime<Utc>>)> {
    sqlx::query_as("SELECT status, due_at FROM deliveries WHERE event_id = $1 AND template_id = $2")
        .bind(event_id)
        .bind(template_id)
        .fetch_optional(&env.pool)
        .await
        .expect("query")
}

async fn wait_status(env: &TestEnv, event_id: &str, template_id: &str, status: &str) {
    wait_for(&format!("{event_id}/{template_id} {status}"), T, || async {
        row(env, event_id, template_id).await.is_some_and(|(s, _)| s == status)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_arrives_within_a_second_after_its_due_time_once() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(&opts()).await;
    env.publish(&booking(
        "r-1",
        "booking.confirmed",
        "B-1",
        "oR1",
        TimeDelta::seconds(3),
        Utc::now(),
    ))
    .await;
    wait_status(&env, "r-1", "TPL_BOOKING_CONFIRMED", "sent").await;
    let (status, due) = row(&env, "r-1", REMINDER).await.expect("reminder row");
    assert_eq!(status, "scheduled", "the confirmation went at once, the reminder waits");
    let due = due.expect("due_at");
    assert!(reminders(&env).is_empty());
    wait_status(&env, "r-1", REMINDER, "sent").await;
    let sent = reminders(&env);
    assert_eq!(sent.len(), 1, "one reminder");
    let at = DateTime::from_timestamp_millis(sent[0].accepted_at_ms).unwrap();
    let late = at - due;
    assert!(late >= TimeDelta::zero(), "sent {late} before its due time");
    assert!(late <= TimeDelta::seconds(1), "sent {late} after its due time");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_booking_never_gets_its_reminder_whichever_event_comes_first() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(&opts()).await;
    let t0 = Utc::now();
    // Cancelled after it was scheduled.
    env.publish(&booking(
        "c-1",
        "booking.confirmed",
        "B-1",
        "oC1",
        TimeDelta::seconds(3),
        t0,
    ))
    .await;
    wait_status(&env, "c-1", REMINDER, "scheduled").await;
    env.publish(&booking(
        "c-1x",
        "booking.cancelled",
        "B-1",
        "oC1",
        TimeDelta::seconds(3),
        t0 + TimeDelta::seconds(1),
    ))
    .await;
    wait_status(&env, "c-1", REMINDER, "cancelled").await;
    // The cancellation arrives before the booking it cancels.
    env.publish(&booking(
        "c-2x",
        "booking.cancelled",
        "B-2",
        "oC2",
        TimeDelta::seconds(3),
        t0 + TimeDelta::seconds(1),
    ))
    .await;
    wait_status(&env, "c-2x", "TPL_BOOKING_CANCELLED", "sent").await;
    env.publish(&booking(
        "c-2",
        "booking.confirmed",
        "B-2",
        "oC2",
        TimeDelta::seconds(3),
        t0,
    ))
    .await;
    wait_status(&env, "c-2", REMINDER, "cancelled").await;
    // A booking made after a cancellation of the same key is not cancelled by it.
    env.publish(&booking(
        "c-3",
        "booking.confirmed",
        "B-2",
        "oC3",
        TimeDelta::seconds(4),
        t0 + TimeDelta::seconds(2),
    ))
    .await;
    // It falls due after the others would have: once it is sent, theirs had their chance.
    wait_status(&env, "c-3", REMINDER, "sent").await;
    let sent: Vec<String> = reminders(&env).into_iter().map(|m| m.touser).collect();
    assert_eq!(sent, ["oC3"], "only the booking nobody cancelled got a reminder");
    for id in ["c-1", "c-2"] {
        assert_eq!(row(&env, id, REMINDER).await.unwrap().0, "cancelled");
        assert_eq!(row(&env, id, "TPL_BOOKING_CONFIRMED").await.unwrap().0, "sent");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_booking_gets_the_new_reminder_on_time_and_never_the_old_one() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(&opts()).await;
    let t0 = Utc::now();
    env.publish(&booking(
        "m-1",
        "booking.confirmed",
        "B-7",
        "oM",
        TimeDelta::seconds(3),
        t0,
    ))
    .await;
    wait_status(&env, "m-1", REMINDER, "scheduled").await;
    env.publish(&booking(
        "m-2",
        "booking.rescheduled",
        "B-7",
        "oM",
        TimeDelta::seconds(4),
        t0 + TimeDelta::seconds(1),
    ))
    .await;
    wait_status(&env, "m-1", REMINDER, "cancelled").await;
    wait_status(&env, "m-2", "TPL_BOOKING_RESCHEDULED", "sent").await;
    wait_status(&env, "m-2", REMINDER, "sent").await;
    let (_, due) = row(&env, "m-2", REMINDER).await.unwrap();
    let sent = reminders(&env);
    assert_eq!(sent.len(), 1, "the new reminder only: {sent:?}");
    let at = DateTime::from_timestamp_millis(sent[0].accepted_at_ms).unwrap();
    let late = at - due.unwrap();
    assert!(
        late >= TimeDelta::zero() && late <= TimeDelta::seconds(1),
        "sent {late} after due"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_a_delivery_until_the_window_ends_and_not_after_expires_it() {
    let mut env = TestEnv::new().await;
    // A window around now, Beijing time, ending at least an hour from now.
    let bj = FixedOffset::east_opt(8 * 3600).unwrap();
    let now = Utc::now().with_timezone(&bj);
    let start = (now - TimeDelta::minutes(5)).format("%H:%M");
    let end_at = now + TimeDelta::minutes(90);
    let end = end_at.format("%H:%M");
    let text = std::fs::read_to_string(shipped()).unwrap().replace(
        "# quiet_hours = \"22:00-08:00\"",
        &format!("quiet_hours = \"{start}-{end}\""),
    ) + &format!(
        "\n[[templates]]\nevent_type = \"booking.completed\"\ntemplate_id = \"TPL_SURVEY\"\nquiet_hours = \"{start}-{end}\"\n[templates.data]\nthing1 = \"{{{{ data.service }}}}\"\n"
    );
    let path = std::env::temp_dir().join(format!("wxnotify-quiet-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    env.templates = path.clone();
    let worker = env
        .spawn_worker(&WorkerOpts {
            templates: Some(path.clone()),
            ..WorkerOpts::default()
        })
        .await;
    // Due in 3 s, inside the window: held until the window ends (seconds cut), which is after
    // its slot (not_after): it can never go out in time, so it expires at once.
    env.publish(&booking(
        "q-1",
        "booking.confirmed",
        "B-1",
        "oQ",
        TimeDelta::seconds(3),
        Utc::now(),
    ))
    .await;
    wait_status(&env, "q-1", REMINDER, "expired").await;
    // No send_at: due now, inside the window: scheduled for its end.
    env.publish(&booking(
        "q-2",
        "booking.completed",
        "B-2",
        "oQ2",
        TimeDelta::seconds(0),
        Utc::now(),
    ))
    .await;
    wait_status(&env, "q-2", "TPL_SURVEY", "scheduled").await;
    let (_, due) = row(&env, "q-2", "TPL_SURVEY").await.unwrap();
    let window_end = end_at
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(due, Some(window_end));
    // The confirmation (no quiet hours on it) went.
    wait_status(&env, "q-1", "TPL_BOOKING_CONFIRMED", "sent").await;
    // A slot already started: its reminder is past not_after.
    env.publish(&booking(
        "q-3",
        "booking.confirmed",
        "B-3",
        "oQ3",
        TimeDelta::minutes(-90),
        Utc::now(),
    ))
    .await;
    wait_status(&env, "q-3", REMINDER, "expired").await;
    assert!(reminders(&env).is_empty());
    assert!(env.sim.messages().iter().all(|m| m.template_id != "TPL_SURVEY"));
    worker.stop().await;
    let _ = std::fs::remove_file(path);
}

/// Schedules `n` reminders falling due together in `in_secs`.
async fn schedule_many(env: &TestEnv, prefix: &str, n: usize, in_secs: i64) {
    for i in 0..n {
        let e = booking(
            &format!("{prefix}-{i}"),
            "booking.confirmed",
            &format!("B-{prefix}-{i}"),
            &format!("o{prefix}{i}"),
            TimeDelta::seconds(in_secs),
            Utc::now(),
        );
        env.publish(&e).await;
    }
    // Each confirmation is `scheduled` (due now) for a moment too, until the due loop releases
    // it: wait for that as well, so that a caller stopping the worker next finds only the
    // reminders waiting (a CI run once found 53 rows `scheduled` for 50 reminders).
    wait_for("all reminders scheduled, every confirmation released", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'scheduled' AND template_id = 'TPL_BOOKING_REMINDER'")
            .await
            == n as i64
            && env
                .count("SELECT count(*) FROM deliveries WHERE status = 'scheduled' AND template_id <> 'TPL_BOOKING_REMINDER'")
                .await
                == 0
    })
    .await;
}

/// Every reminder reached WeChat exactly once.
fn once_each(env: &TestEnv, n: usize) {
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for m in reminders(env) {
        *per_user.entry(m.touser).or_default() += 1;
    }
    assert_eq!(per_user.len(), n, "every reminder arrived");
    assert!(
        per_user.values().all(|c| *c == 1),
        "a reminder arrived twice: {per_user:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_racing_for_the_same_due_rows_send_each_once() {
    let env = TestEnv::new().await;
    let n = 300;
    let first = env.spawn_worker(&opts()).await;
    schedule_many(&env, "race", n, 4).await;
    let second = env.spawn_worker(&opts()).await;
    let third = env.spawn_worker(&opts()).await;
    wait_for("every reminder sent", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE template_id = 'TPL_BOOKING_REMINDER' AND status = 'sent'")
            .await
            == n as i64
    })
    .await;
    once_each(&env, n);
    for w in [first, second, third] {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_dies_before_its_commit_is_released_again_and_sent_once() {
    let env = TestEnv::new().await;
    let n = 50;
    let worker = env.spawn_worker(&opts()).await;
    schedule_many(&env, "crash", n, 3600).await;
    worker.stop().await;
    sqlx::query("UPDATE deliveries SET due_at = now() WHERE status = 'scheduled'")
        .execute(&env.pool)
        .await
        .unwrap();
    // A releaser takes the due rows, publishes them, and dies before it commits.
    let mut tx = env.pool.begin().await.unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT template_id, payload FROM deliveries WHERE status = 'scheduled' AND template_id = 'TPL_BOOKING_REMINDER' FOR UPDATE")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(rows.len(), n);
    for (template_id, payload) in &rows {
        let mut h = FieldTable::default();
        headers::set_text(&mut h, headers::TEMPLATE, template_id);
        let props = BasicProperties::default().with_delivery_mode(2).with_headers(h);
        env.publish_to_queue(&env.topology.queue, payload.as_bytes(), props)
            .await;
    }
    // Its rows stay locked while it hangs: a worker skips them (SKIP LOCKED); then it dies
    // (its connection, and the locks with it, go).
    let worker = env.spawn_worker(&opts()).await;
    wait_for("the worker registered", T, || async {
        env.count("SELECT count(*) FROM workers").await == 1
    })
    .await;
    drop(tx);
    wait_for("every reminder recorded sent", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE template_id = 'TPL_BOOKING_REMINDER' AND status = 'sent'")
            .await
            == n as i64
    })
    .await;
    // The rows were released again (two copies of each in all) and every copy settled.
    wait_for("every copy settled", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'scheduled'")
            .await
            == 0
            && env.ready_everywhere().await == 0
    })
    .await;
    once_each(&env, n);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_releasing_due_rows_leaves_each_to_the_others_once() {
    let mut env = TestEnv::new().await;
    env.templates = shipped();
    let n = 400;
    let survivor = env.spawn_worker(&opts()).await;
    schedule_many(&env, "kill", n, 3600).await;
    let mut doomed = env
        .worker_command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wxnotify worker");
    // Both workers are up (the process registered); the rows fall due at once.
    wait_for("the second worker registered", T, || async {
        env.count("SELECT count(*) FROM workers").await >= 2
    })
    .await;
    sqlx::query("UPDATE deliveries SET due_at = now() WHERE status = 'scheduled'")
        .execute(&env.pool)
        .await
        .unwrap();
    wait_for("releasing has begun", T, || async { !reminders(&env).is_empty() }).await;
    doomed.start_kill().expect("SIGKILL");
    doomed.wait().await.expect("reaped");
    wait_for("every reminder sent", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE template_id = 'TPL_BOOKING_REMINDER' AND status = 'sent'")
            .await
            == n as i64
    })
    .await;
    once_each(&env, n);
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_list_and_cancel_by_hand() {
    let mut env = TestEnv::new().await;
    env.templates = shipped();
    let worker = env.spawn_worker(&opts()).await;
    for (i, booking_id) in ["B-1", "B-1", "B-2"].iter().enumerate() {
        let remind_in = TimeDelta::minutes(30 + 10 * i as i64);
        env.publish(&booking(
            &format!("h-{i}"),
            "booking.confirmed",
            booking_id,
            &format!("oH{i}"),
            remind_in,
            Utc::now(),
        ))
        .await;
    }
    // Waits on the reminders themselves and on the confirmations being sent: a confirmation is
    // `scheduled` (due now) for a moment before it is released, and a count of all `scheduled`
    // rows once saw h-1's confirmation in place of h-0's reminder, still behind its lock (CI).
    wait_for("three reminders scheduled, three confirmations sent", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'scheduled' AND template_id = 'TPL_BOOKING_REMINDER'")
            .await
            == 3
            && env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 3
    })
    .await;
    let out = env
        .wxnotify(&["scheduled", "list", "--format", "json", "--due-before", "35m"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["h-0"], "only what falls due in the next 35 minutes");

    let out = env
        .wxnotify(&["scheduled", "cancel", "--cancel-key", "B-1"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "cancelled 2 waiting deliveries"
    );
    let out = env
        .wxnotify(&["scheduled", "cancel", "--event-id", "h-2"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "cancelled 1 waiting delivery"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM deliveries WHERE status = 'cancelled'")
            .await,
        3
    );
    // The confirmations were sent already: nothing to cancel there.
    assert_eq!(
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await,
        3
    );
    // Neither a key nor an event: a usage error, exit 2.
    let out = env.wxnotify(&["scheduled", "cancel"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    worker.stop().await;
}

/// Statements of this database so far whose text contains `needle` (pg_stat_statements, loaded
/// by `scripts/services.sh`).
async fn statements_like(env: &TestEnv, needle: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query LIKE $1",
    )
    .bind(format!("%{needle}%"))
    .fetch_one(&env.pool)
    .await
    .expect("pg_stat_statements (scripts/services.sh loads it)")
}

/// 200 bookings, each confirmed and cancelled, both events queued before the worker starts (half
/// of them cancellation first): the events in flight hold their reminders and cancellations in
/// shared transactions, and every reminder still ends cancelled, whatever shared its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookings_confirmed_and_cancelled_together_share_hold_transactions_and_no_reminder_goes() {
    let env = TestEnv::new().await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&env.pool)
        .await
        .expect("pg_stat_statements is loaded (scripts/services.sh)");
    let (t0, n) = (Utc::now(), 200);
    for i in 0..n {
        let (id, b, who) = (format!("h-{i}"), format!("B-{i}"), format!("oH{i}"));
        let confirmed = booking(&id, "booking.confirmed", &b, &who, TimeDelta::seconds(3), t0);
        let cancelled = booking(
            &format!("{id}x"),
            "booking.cancelled",
            &b,
            &who,
            TimeDelta::seconds(3),
            t0 + TimeDelta::seconds(1),
        );
        let pair = if i % 2 == 0 {
            [confirmed, cancelled]
        } else {
            [cancelled, confirmed]
        };
        for e in &pair {
            env.publish(e).await;
        }
    }
    let worker = env.spawn_worker(&opts()).await;
    let settled = "SELECT count(*) FROM deliveries
                    WHERE (template_id = 'TPL_BOOKING_REMINDER' AND status = 'cancelled')
                       OR (template_id <> 'TPL_BOOKING_REMINDER' AND status = 'sent')";
    wait_for("every reminder cancelled, every other message sent", T, || async {
        env.count(settled).await == 3 * n
    })
    .await;
    assert!(reminders(&env).is_empty(), "no reminder went");
    let holds = statements_like(&env, "pg_advisory_xact_lock").await;
    assert!(holds > 0, "the holds lock their keys");
    assert!(
        holds < 100,
        "{} events held in {holds} transactions: not batched",
        2 * n
    );
    worker.stop().await;
}
