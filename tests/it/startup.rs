//! A worker asked to stop while it starts stops (docs/interface.md §7): here, while another
//! process holds the migration lock, it exits 0 at once on SIGTERM instead of waiting for it.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{TestEnv, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_the_migration_lock_stops_the_worker() {
    let env = TestEnv::new().await;
    let mut holder = env.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(wxnotify::db::MIGRATION_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut child = env
        .worker_command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wxnotify worker");
    wait_for(
        "the worker waiting for the migration lock",
        Duration::from_secs(30),
        || async {
            env.count(
                "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE '%pg_try_advisory_lock%'
                AND pid <> pg_backend_pid()",
            )
            .await
                >= 1
        },
    )
    .await;
    let pid = child.id().expect("pid").to_string();
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(wxnotify::db::MIGRATION_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let status = status
        .expect("the worker did not stop within 10 s of SIGTERM")
        .expect("exit status");
    assert!(status.success(), "{status:?}");
}
