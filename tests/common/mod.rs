//! Shared by the test binaries (`it`, `chaos`): where the real services are, a fresh database per
//! test, the simulator's app, and a valid event of the shipped templates.
#![allow(dead_code)] // each binary uses a different part

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use secrecy::SecretString;
use sqlx::PgPool;
use wxnotify::queue::{Topology, headers};

pub(crate) mod fault_proxy;
pub(crate) mod leftovers;

pub(crate) const APP_ID: &str = "wx1111111111111111";
pub(crate) const APP_SECRET: &str = "sim-secret-Zq81x";
/// Apps besides the default one, for tests and benchmarks of several apps: (app id, secret).
/// The simulators of tests know them; [`apps_file`] configures them.
pub(crate) const OTHER_APPS: [(&str, &str); 2] = [
    ("wx2222222222222222", "sim-secret-Bb72q"),
    ("wx3333333333333333", "sim-secret-Cc93r"),
];

/// The fixtures' templates with [`OTHER_APPS`] as `[[apps]]` (their secrets in
/// `WXNOTIFY_TEST_APP2_SECRET` and `..._APP3_...`, see [`apps_env`]), written under `dir`.
pub(crate) fn apps_file(dir: &std::path::Path) -> std::path::PathBuf {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/templates.toml");
    apps_file_with(fixtures, dir, [None, None])
}

/// The templates of `base` with [`OTHER_APPS`] as `[[apps]]`, each with its `rate_limit` if
/// `limits` gives one, written under `dir`.
pub(crate) fn apps_file_with(base: &str, dir: &std::path::Path, limits: [Option<f64>; 2]) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(base).expect("templates file");
    for (i, (app, _)) in OTHER_APPS.iter().enumerate() {
        text.push_str(&format!(
            "\n[[apps]]\napp_id = \"{app}\"\nsecret_env = \"WXNOTIFY_TEST_APP{}_SECRET\"\n",
            i + 2
        ));
        if let Some(limit) = limits[i] {
            text.push_str(&format!("rate_limit = {limit}\n"));
        }
    }
    let path = dir.join(format!("apps-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).expect("write the apps file");
    path
}

/// The environment [`apps_file`] names.
pub(crate) fn apps_env() -> Vec<(String, String)> {
    OTHER_APPS
        .iter()
        .enumerate()
        .map(|(i, (_, secret))| (format!("WXNOTIFY_TEST_APP{}_SECRET", i + 2), secret.to_string()))
        .collect()
}

/// Every test app, (app id, secret): the default one and [`OTHER_APPS`].
pub(crate) fn all_apps() -> impl Iterator<Item = (&'static str, &'static str)> {
    std::iter::once((APP_ID, APP_SECRET)).chain(OTHER_APPS)
}

/// Every app a test simulator knows: [`all_apps`].
pub(crate) fn sim_apps() -> std::collections::HashMap<String, String> {
    all_apps().map(|(a, s)| (a.to_string(), s.to_string())).collect()
}

pub(crate) fn base_db_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432".into())
}

pub(crate) fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A new, migrated database named `wxn_test_p<pid>_<16 hex>` ([`leftovers::database_name`]: the
/// caller drops it, or the first test binary after this process is gone does).
/// Returns its URL and a pool of `pool_size` connections.
/// `TEST_DATABASE_PARAMS` ends every URL (e.g. `?sslmode=disable` to measure without TLS).
pub(crate) async fn fresh_database(id: &str, pool_size: u32) -> (String, PgPool) {
    let params = std::env::var("TEST_DATABASE_PARAMS").unwrap_or_default();
    fresh_database_at(&base_db_url(), &params, id, pool_size).await
}

/// [`fresh_database`] on the server at `base` (`postgres://user:password@host:port`), every URL
/// ending in `params` (a query such as `?sslmode=verify-full&sslrootcert=…`, or empty).
pub(crate) async fn fresh_database_at(base: &str, params: &str, id: &str, pool_size: u32) -> (String, PgPool) {
    let db_name = leftovers::database_name(id);
    admin_execute(base, params, format!("CREATE DATABASE {db_name}")).await;
    let db_url = format!("{base}/{db_name}{params}");
    let pool = wxnotify::db::connect(&SecretString::from(db_url.clone()), pool_size)
        .await
        .expect("connect test db");
    wxnotify::db::migrate(&pool).await.expect("migrate");
    (db_url, pool)
}

/// Runs `sql` (`CREATE DATABASE`, `DROP DATABASE`) on the `postgres` database of the server at
/// `base`, over a connection of its own; URL as in [`fresh_database_at`].
pub(crate) async fn admin_execute(base: &str, params: &str, sql: String) {
    let admin = PgPool::connect(&format!("{base}/postgres{params}"))
        .await
        .expect("connect to Postgres (run scripts/services.sh up)");
    sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    admin.close().await;
}

/// A valid event of the shipped templates.
pub(crate) fn event(id: &str, event_type: &str, openid: &str) -> serde_json::Value {
    serde_json::json!({
        "event_id": id, "event_type": event_type, "occurred_at": "2026-11-21T09:30:00+08:00",
        "openid": openid,
        "data": {"booking_id": "B-10023", "service": "精洗套餐", "store": "徐汇店",
                 "slot_start": "2026-11-22T14:00:00+08:00", "plate": "沪A12345", "price_cents": 3980}
    })
}

/// Waits until `check` returns true, polling; panics with `what` after `timeout`.
pub(crate) async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message taken from a queue: its body and its `wxnotify-*` headers.
pub(crate) type Taken = (Vec<u8>, HashMap<String, String>);

/// Takes (and acks) every message `queue` holds now.
pub(crate) async fn take_all(ch: &Channel, queue: &str) -> Vec<Taken> {
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic_get")
    {
        let mut h = HashMap::new();
        for name in [
            headers::REASON,
            headers::ERRCODE,
            headers::ERROR,
            headers::ATTEMPTS,
            headers::EVENT_ID,
        ] {
            if let Some(v) = headers::text(&msg.delivery.properties, name) {
                h.insert(name.to_string(), v);
            }
        }
        msg.delivery.acker.ack(BasicAckOptions::default()).await.expect("ack");
        out.push((msg.delivery.data.clone(), h));
    }
    out
}

/// What the `wxnotify` binary needs to run against a test's database, queues and simulator.
pub(crate) fn worker_env(
    db_url: &str,
    topology: &Topology,
    sim_base: &str,
    templates: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db_url.to_string()),
        ("AMQP_URL", amqp_url()),
        ("WXNOTIFY_EXCHANGE", topology.exchange.clone()),
        ("WXNOTIFY_QUEUE", topology.queue.clone()),
        ("WECHAT_API_BASE", sim_base.to_string()),
        ("WECHAT_APP_ID", APP_ID.to_string()),
        ("WECHAT_APP_SECRET", APP_SECRET.to_string()),
        ("WXNOTIFY_TEMPLATES", templates.to_string()),
    ]
}
