//! Shared by the test binaries (`it`, `chaos`): where the real services are, a fresh database per
//! test, the simulator's app, and a valid event of the shipped templates.
#![allow(dead_code)] // each binary uses a different part

use secrecy::SecretString;
use sqlx::PgPool;

pub const APP_ID: &str = "wx1111111111111111";
pub const APP_SECRET: &str = "sim-secret-Zq81x";

pub fn base_db_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A new, migrated database named `wxn_test_<16 hex>` (`scripts/test.sh` drops old ones).
/// Returns its URL and a pool of `pool_size` connections.
pub async fn fresh_database(id: &str, pool_size: u32) -> (String, PgPool) {
    let db_name = format!("wxn_test_{}", &id[..16]);
    let admin = PgPool::connect(&format!("{}/postgres", base_db_url()))
        .await
        .expect("connect to Postgres (run scripts/services.sh up)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let db_url = format!("{}/{db_name}", base_db_url());
    let pool = wxnotify::db::connect(&SecretString::from(db_url.clone()), pool_size)
        .await
        .expect("connect test db");
    wxnotify::db::migrate(&pool).await.expect("migrate");
    (db_url, pool)
}

/// A valid event of the shipped templates.
pub fn event(id: &str, event_type: &str, openid: &str) -> serde_json::Value {
    serde_json::json!({
        "event_id": id, "event_type": event_type, "occurred_at": "2026-11-21T09:30:00+08:00",
        "openid": openid,
        "data": {"booking_id": "B-10023", "service": "精洗套餐", "store": "徐汇店",
                 "slot_start": "2026-11-22T14:00:00+08:00", "plate": "沪A12345", "price_cents": 3980}
    })
}
