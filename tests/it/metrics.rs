//! The worker's `/metrics`: every series docs/operations.md lists, with its help, before anything happened.

use std::time::Duration;

use crate::helpers::{TestEnv, wait_for};

/// Every `wxnotify_` series docs/operations.md lists is exposed by a fresh worker, before anything happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_worker_exposes_every_series_with_its_help() {
    let env = TestEnv::new().await;
    let mut child = env
        .wxnotify(&["worker"])
        .env("WXNOTIFY_ADMIN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The admin address is logged at start-up.
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("addr=").nth(1) {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("no admin address logged")
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = format!("http://{addr}/metrics");
    let scrape = || async { reqwest::get(&url).await.unwrap().text().await.unwrap() };
    wait_for("sampled gauges", Duration::from_secs(30), || async {
        scrape().await.contains("wxnotify_live_workers 1")
    })
    .await;
    let text = scrape().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    // The worker's metrics table: rows starting with a `wxnotify_` series.
    let listed: std::collections::BTreeSet<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `wxnotify_"))
        .flat_map(|l| l.split('|').nth(1).unwrap().split('`'))
        .filter(|w| w.starts_with("wxnotify_"))
        .map(|w| w.split('{').next().unwrap())
        .collect();
    assert!(listed.len() >= 20, "docs/operations.md lists the metrics: {listed:?}");
    for name in &listed {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        assert!(
            text.lines().any(|l| l.starts_with(name) && !l.starts_with('#')),
            "{name} has no series"
        );
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
