//! `wxnotify publish` from a file, run as a script would: every event confirmed, no progress bar
//! off a terminal, and a summary line with the time and rate.

use crate::helpers::{TestEnv, event, plain_stderr, summary_line};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_off_a_terminal_draws_no_bar_and_ends_with_a_timed_summary() {
    let env = TestEnv::new().await;
    let lines: Vec<String> = (0..50)
        .map(|i| event(&format!("pub-{i}"), "booking.confirmed", "oPub").to_string())
        .collect();
    let path = std::env::temp_dir().join(format!("wxnotify-publish-{}.jsonl", uuid::Uuid::new_v4()));
    std::fs::write(&path, lines.join("\n")).unwrap();

    let out = env.wxnotify_ok(&["publish", &path.to_string_lossy()]).await;
    let _ = std::fs::remove_file(&path);
    plain_stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let start = format!(
        "published 50 event(s) to exchange {} (confirmed by the broker) in ",
        env.topology.exchange
    );
    let (line, secs) = summary_line(&stdout, &start);
    assert!((0.0..30.0).contains(&secs), "{line}");
    let rate = line
        .strip_suffix("/s)")
        .and_then(|l| l.rsplit_once('(')?.1.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no rate (`(4350/s)`) at the end of {line:?}"));
    assert!(rate > 0, "{line}");
    assert_eq!(env.ready_everywhere().await, 50);
}
