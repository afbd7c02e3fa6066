//! The harness cleans up after itself: a test that fails (panics) leaves no queue, exchange or
//! database behind. (What a killed test binary leaves, the next one sweeps: `tests/leftovers.sh`.)

use crate::common::base_db_url;
use crate::common::leftovers::{broker_names, database_names};
use crate::helpers::{TestEnv, WorkerOpts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_that_panics_leaves_no_queue_exchange_or_database() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A test that fails: its panic message shows in the output, and is expected.
    let failed = tokio::spawn(async move {
        let env = TestEnv::new().await;
        // Still running when the test fails: a worker, and a receiver with its spill queue.
        let _worker = env.spawn_worker(&WorkerOpts::default()).await;
        let _receiver = env.spawn_receiver(None, true).await;
        let db = env
            .db_url
            .split('?')
            .next()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let prefix = env.topology.exchange.trim_end_matches(".x").to_string();
        let before = (broker_names("queues").await, database_names(&base_db_url()).await);
        tx.send((prefix, db, before)).unwrap();
        panic!("a failing test (expected)");
    })
    .await;
    assert!(failed.expect_err("the inner test fails").is_panic());
    let (prefix, db, (queues_before, dbs_before)) = rx.await.unwrap();
    let ours = |names: &[String]| names.iter().filter(|n| n.starts_with(&prefix)).count();
    assert!(
        ours(&queues_before) >= 2,
        "the work queue and the DLQ existed: {queues_before:?}"
    );
    assert!(dbs_before.contains(&db), "{db} existed");

    for when in ["at once", "a second later"] {
        assert_eq!(
            ours(&broker_names("queues").await),
            0,
            "queues of {prefix} left ({when})"
        );
        assert_eq!(
            ours(&broker_names("exchanges").await),
            0,
            "exchanges of {prefix} left ({when})"
        );
        assert!(
            !database_names(&base_db_url()).await.contains(&db),
            "{db} left ({when})"
        );
        // The point: time for the stopped worker to declare its queues again, if it could.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
