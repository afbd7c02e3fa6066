//! The Postgres pool and the migrations (embedded from `migrations/` at compile time).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::redact::redact_url;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool over `url`; TLS as its `sslmode` says (sqlx's default, `prefer`, encrypts when the
/// server offers it without checking the certificate, as libpq does).
pub async fn connect(url: &SecretString, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    crate::tls::install_crypto_provider();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1.min(max_connections))
        .acquire_timeout(Duration::from_secs(10))
        // No ping before every statement: it costs a round trip each (200 ms more per statement
        // at 100 ms each way, and CPU on both sides at any distance). A connection that died
        // fails its statement instead, sqlx drops it, and every caller retries.
        .test_before_acquire(false)
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

/// The advisory lock (one-key space) that lets one process at a time apply migrations: "wxmigrat".
pub const MIGRATION_LOCK: i64 = 0x7778_6d69_6772_6174;

/// Applies the pending migrations, one process at a time.
///
/// Not with sqlx's own lock: a process waiting in `pg_advisory_lock` holds a snapshot, and a
/// `CREATE INDEX CONCURRENTLY` run by the holder waits for every older snapshot to go: each
/// waits for the other, and Postgres aborts one (leaving an invalid index when it is the build).
/// So the lock is only ever tried, every 200 ms, on a connection that holds nothing in between,
/// and the migrations then run on that connection with sqlx's locking off.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrate_unless(pool, &CancellationToken::new()).await.map(drop)
}

/// [`migrate`], unless `stop` fires while another process holds the migration lock: then nothing
/// was applied and the answer is `false` (a process asked to stop at start-up stops).
pub(crate) async fn migrate_unless(
    pool: &PgPool,
    stop: &CancellationToken,
) -> Result<bool, sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?;
    let mut first = true;
    while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .fetch_one(&mut *conn)
        .await?
    {
        if std::mem::take(&mut first) {
            tracing::info!("another process is applying migrations; waiting for it");
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let mut migrator = sqlx::migrate::Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    migrator.set_locking(false);
    // `run_direct`: `run(&mut *conn)` makes a future that is not `Send` for every lifetime
    // (sqlx says so of `run_direct`), which a spawned worker needs.
    let applied = migrator.run_direct(None, &mut *conn, false).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // The lock is the session's: a connection that cannot say so is not handed back.
        conn.detach();
    }
    applied?;
    unlocked?;
    Ok(true)
}

/// Why the database's schema does not fit this binary.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database schema is behind this wxnotify ({missing} of {known} migrations not applied, the first {first}): run `wxnotify migrate`"
    )]
    Behind { missing: usize, known: usize, first: i64 },
    #[error(
        "migration {0} did not finish (a failed `wxnotify migrate`): see docs/operations.md, Upgrading, then run `wxnotify migrate`"
    )]
    Dirty(i64),
    #[error("reading the applied migrations: {0}")]
    Database(#[from] sqlx::Error),
}

/// Checks, without changing anything, that every migration this binary knows is applied (a newer
/// schema, from a newer binary, is fine). The commands that only read or tidy the ledger use it
/// instead of migrating: an operator's `status` must not take locks on the live tables.
pub async fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<(i64, bool)> = if exists {
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await?
    } else {
        vec![]
    };
    if let Some((v, _)) = applied.iter().find(|(_, ok)| !ok) {
        return Err(SchemaError::Dirty(*v));
    }
    let missing: Vec<i64> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .filter(|v| !applied.iter().any(|(a, _)| a == v))
        .collect();
    match missing.first() {
        None => Ok(()),
        Some(&first) => Err(SchemaError::Behind {
            missing: missing.len(),
            known: MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).count(),
            first,
        }),
    }
}

/// `pool.begin()`, boxed: sqlx's future for it is ~14 KB (release build), and an `async fn` that
/// awaits it inline carries those bytes in its own future, and in every future awaiting that one,
/// up to each delivery in flight (its task, and every move of it). Boxed, they are allocated only
/// while a transaction is being begun.
pub(crate) async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    Box::pin(pool.begin()).await
}

/// How long a process waits for a row lock another holds across a call to WeChat (a token's
/// refresh) before giving up (a database error).
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(15);
/// How long such a lock's holder may stay silent (waiting for WeChat) before Postgres ends its
/// session, and with it the lock.
pub(crate) const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);
/// The longest statement under such a lock (the lock wait included).
pub(crate) const STATEMENT: Duration = Duration::from_secs(20);

/// A transaction meant to hold a row lock across a call to WeChat, bounded (`SET LOCAL`): a
/// holder that hangs or is frozen loses it after [`IDLE_IN_TRANSACTION`], a waiter gives up after
/// [`LOCK_WAIT`] (longer), no statement runs longer than [`STATEMENT`].
pub(crate) async fn begin_bounded(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut tx = begin(pool).await?;
    // set_config(..., true) is SET LOCAL: it ends with the transaction, not the pooled session.
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true),
                set_config('idle_in_transaction_session_timeout', $3, true)",
    )
    .bind(ms(LOCK_WAIT))
    .bind(ms(STATEMENT))
    .bind(ms(IDLE_IN_TRANSACTION))
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// How long one database call may take before the worker gives up on it: a database that stopped
/// answering (a half-open connection, a partition) is noticed by this, not by TCP's timeouts
/// (minutes). Generous: a batched statement under load takes milliseconds.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// `call`, or an error if it takes longer than [`CALL_TIMEOUT`]. The call's future is dropped
/// then, and with it its connection (sqlx closes a connection whose call did not finish).
pub(crate) async fn bounded<T, E>(call: impl Future<Output = Result<T, E>>) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(E::from(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from Postgres within {} s", CALL_TIMEOUT.as_secs()),
        )))),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery's future holds the largest of the futures it awaits, for every message in
    /// flight and in every copy tokio makes of it. sqlx's `Pool::begin` future is ~14 KB; the
    /// transactions on the delivery path (the token row, waiting deliveries) must not inline it.
    #[tokio::test]
    async fn transactions_on_the_delivery_path_keep_their_futures_small() {
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let store = crate::token::TokenStore::new(pool.clone());
        let tokens = crate::token::TokenProvider::new(
            pool.clone(),
            crate::wechat::WechatClient::new("http://127.0.0.1:1", std::time::Duration::from_secs(1)).unwrap(),
            crate::token::TokenSettings {
                api: crate::wechat::TokenApi::Stable,
                margin: std::time::Duration::from_secs(60),
                credentials_pause: std::time::Duration::from_secs(60),
            },
            &[],
        );
        // Every delivery awaits `get`; only a missing or stale token takes the slow path.
        let get = std::mem::size_of_val(&tokens.get("app"));
        assert!(get < 512, "TokenProvider::get future: {get} bytes");
        let pool_for_holds = pool.clone();
        let ledger = crate::ledger::Ledger::new(pool, "w".into());
        let lock = std::mem::size_of_val(&store.lock("app"));
        let holds = crate::schedule::Holds::new(pool_for_holds);
        let hold = std::mem::size_of_val(&holds.hold(std::sync::Arc::new(crate::schedule::HoldRequest {
            waiting: vec![],
            cancellations: vec![],
        })));
        let due = std::mem::size_of_val(&ledger.take_due(1));
        assert!(lock < 2048, "TokenStore::lock future: {lock} bytes");
        assert!(hold < 2048, "Holds::hold future: {hold} bytes");
        assert!(due < 2048, "Ledger::take_due future: {due} bytes");
    }
}
