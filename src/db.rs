//! The Postgres pool and the migrations (embedded from `migrations/` at compile time).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::config::redact_url;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool over `url`; TLS as its `sslmode` says (sqlx's default, `prefer`, encrypts when the
/// server offers it without checking the certificate, as libpq does).
pub async fn connect(url: &SecretString, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    crate::tls::install_crypto_provider();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1.min(max_connections))
        .acquire_timeout(Duration::from_secs(10))
        .connect(url.expose_secret())
        .await
}

/// Connects, waiting for a database that is not up yet (compose, restarts; `/readyz` says not
/// ready meanwhile) with backoff up to 10 s. `Ok(None)`: `shutdown` fired while waiting. `Err`: a
/// TLS failure (a certificate the CA did not sign, a server without TLS when the URL requires
/// it), which waiting does not mend.
pub async fn connect_patiently(
    url: &SecretString,
    max_connections: u32,
    shutdown: &CancellationToken,
) -> Result<Option<PgPool>, sqlx::Error> {
    let mut delay = Duration::from_millis(200);
    loop {
        match connect(url, max_connections).await {
            Ok(p) => return Ok(Some(p)),
            Err(e) if crate::tls::is_database_tls_failure(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, database = %redact_url(url), "database unreachable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Postgres refused a value of the statement (SQLSTATE class 22, "data exception": a NUL in a
/// text, a string too long, a number out of range). Retrying the same values fails the same way;
/// other values in the same statement may be fine.
pub(crate) fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("22")),
        _ => false,
    }
}
