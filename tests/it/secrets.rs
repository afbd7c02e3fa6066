//! The access token and the app secret never reach the worker's output, even at trace level.
//! The real binary runs as a child process; everything it prints is captured.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::helpers::{APP_SECRET, TestEnv, event, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_secret_never_appear_in_the_worker_output() {
    let env = TestEnv::new().await;
    let mut child = env
        .worker_command()
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wxnotify worker");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).await.map(|_| buf)
    });
    let err_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).await.map(|_| buf)
    });

    env.publish(&event("s-1", "booking.confirmed", "oS1")).await;
    wait_for("first message", Duration::from_secs(60), || async {
        env.sim.stats().accepted == 1
    })
    .await;
    // A rejection makes the token appear in as many code paths as possible: refresh, retry.
    env.sim.rotate(crate::helpers::APP_ID);
    env.publish(&event("s-2", "booking.confirmed", "oS2")).await;
    wait_for("second message", Duration::from_secs(60), || async {
        env.sim.stats().accepted == 2
    })
    .await;

    let pid = child.id().expect("running") as i32;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit 0 after SIGTERM, got {status:?}");
    let output = [out_task.await.unwrap().unwrap(), err_task.await.unwrap().unwrap()].concat();
    let output = String::from_utf8_lossy(&output);
    assert!(output.len() > 1000, "trace output was captured");
    let tokens = env.sim.issued_tokens();
    assert!(tokens.len() >= 2, "a token was issued and replaced");
    for t in &tokens {
        assert!(!output.contains(t.as_str()), "an access token leaked into the output");
        assert!(
            !output.contains(&t[..24]),
            "part of an access token leaked into the output"
        );
    }
    assert!(!output.contains(APP_SECRET), "the app secret leaked into the output");
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(d)::text FROM deliveries d")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let attempts: Vec<String> = sqlx::query_scalar("SELECT row_to_json(a)::text FROM delivery_attempts a")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    for t in &tokens {
        assert!(
            rows.iter().chain(&attempts).all(|r| !r.contains(t.as_str())),
            "a token reached the ledger"
        );
    }
}
