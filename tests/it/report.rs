//! `wxnotify report` reads the reporting views: counts by day, app, type and status, send latency,
//! and failed sends by errcode with the latest example.

use std::time::Duration;

use crate::helpers::{TestEnv, WorkerOpts, event, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_outcomes_and_names_failures() {
    let env = TestEnv::new().await;
    env.sim.set_unsubscribed(&["oGone"]);
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("r-1", "booking.confirmed", "oA")).await;
    env.publish(&event("r-2", "booking.confirmed", "oB")).await;
    env.publish(&event("r-3", "booking.confirmed", "oGone")).await;
    wait_for("three final deliveries", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status IN ('sent', 'dead')")
            .await
            == 3
    })
    .await;
    worker.stop().await;

    let out = env.wxnotify(&["report", "--format", "json"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = report["summary"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["event_type"], "booking.confirmed");
    assert_eq!(
        (row["deliveries"].as_i64(), row["sent"].as_i64(), row["dead"].as_i64()),
        (Some(3), Some(2), Some(1))
    );
    assert!(row["p95_send_ms"].as_f64().is_some(), "latency from the attempts");
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["errcode"], 43004);
    assert_eq!(failures[0]["dead"], 1);
    assert_eq!(failures[0]["latest_event_id"], "r-3");

    let out = env
        .wxnotify(&["report", "--since", "2020-01-01", "--format", "csv"])
        .output()
        .await
        .unwrap();
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("day,app_id,event_type,deliveries,sent,dead")
    );
    assert!(lines.next().unwrap().contains(",booking.confirmed,3,2,1,"), "{csv}");

    let out = env.wxnotify(&["report", "--since", "a while"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad --since is a usage error");
}
