//! TLS to both services: `sslmode`/`sslrootcert` in `DATABASE_URL`, `amqps://` URLs with a
//! `cacertfile`. Against a Postgres cluster and a RabbitMQ node that take TLS only, with a CA and
//! certificates `scripts/tls-services.sh up` generates (started by the first test that needs them;
//! the shared services are not touched).

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use wechat_sim::SimConfig;
use wxnotify::app::Application;

use crate::helpers::{Services, TestEnv, WorkerOpts, event, wait_for};

/// What `scripts/tls-services.sh up` printed.
struct TlsServices {
    /// The CA that signed both servers' certificate.
    ca: String,
    /// A CA that signed nothing the servers show.
    wrong_ca: String,
    /// `postgres://postgres:postgres@localhost:5433`
    db_base: String,
    /// `amqps://guest:guest@localhost:5671/%2f`
    amqps_url: String,
}

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tls-services.sh").to_string()
}

/// Starts the TLS-only services once per test process (the first time takes a few seconds more:
/// certificates, a new cluster).
async fn tls_services() -> &'static TlsServices {
    static SERVICES: OnceLock<TlsServices> = OnceLock::new();
    tokio::task::spawn_blocking(|| {
        SERVICES.get_or_init(|| {
            let out = std::process::Command::new(script())
                .arg("up")
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/tls-services.sh up");
            assert!(out.status.success(), "scripts/tls-services.sh up failed");
            let stdout = String::from_utf8(out.stdout).expect("utf-8");
            let value = |name: &str| {
                stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}=")))
                    .unwrap_or_else(|| panic!("no {name}= in {stdout:?}"))
                    .to_string()
            };
            TlsServices {
                ca: value("CA_FILE"),
                wrong_ca: value("WRONG_CA_FILE"),
                db_base: value("DATABASE_BASE_URL"),
                amqps_url: value("AMQPS_URL"),
            }
        })
    })
    .await
    .expect("tls services")
}

impl TlsServices {
    /// Both services verified against `ca` (Postgres: `verify-full`, the host name checked too).
    fn verified_by(&self, ca: &str) -> Services {
        Services {
            db_base: self.db_base.clone(),
            db_params: format!("?sslmode=verify-full&sslrootcert={ca}"),
            amqp_url: format!("{}?cacertfile={ca}", self.amqps_url),
        }
    }
}

/// `true` when the pool's session is encrypted, as Postgres itself sees it.
async fn session_is_encrypted(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_ssl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_delivers_over_verified_tls_to_both_services() {
    let tls = tls_services().await;
    let env = TestEnv::on(tls.verified_by(&tls.ca), SimConfig::default()).await;
    let worker = tokio::time::timeout(Duration::from_secs(60), env.spawn_worker(&WorkerOpts::default()))
        .await
        .expect("the worker builds within 60 s");

    env.publish(&event("tls-1", "booking.confirmed", "oTls1")).await;
    wait_for("the event sent and recorded", Duration::from_secs(60), || async {
        env.statuses().await.get("tls-1").map(String::as_str) == Some("sent")
    })
    .await;
    assert_eq!(env.sim.stats().accepted, 1);

    // Postgres: this session is encrypted, and so is every session on the test's database (the
    // worker's pool among them): the cluster takes nothing else, and says so.
    assert!(session_is_encrypted(&env.pool).await);
    let (sessions, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = current_database()",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(sessions >= 2, "the test's and the worker's sessions: {sessions}");
    assert_eq!(plain, 0, "an unencrypted session on the TLS cluster");

    // RabbitMQ: the broker lists the worker's connection as TLS.
    let out = tokio::process::Command::new(script())
        .arg("connections")
        .output()
        .await
        .expect("list the TLS node's connections");
    let listing = String::from_utf8_lossy(&out.stdout);
    let worker_line = listing
        .lines()
        .find(|l| l.contains("wxnotify-worker "))
        .unwrap_or_else(|| panic!("no worker connection in {listing:?}"));
    assert!(worker_line.starts_with("true\t"), "not TLS: {worker_line:?}");

    worker.stop().await;

    // A cluster's list of nodes: each URL has its own cacertfile (nothing listens on port 1, so
    // whichever node is tried first, the connection ends on the TLS node).
    let ca = &tls.ca;
    let nodes = format!("amqps://guest:guest@localhost:1/%2f?cacertfile={ca},{}", env.amqp_url);
    let conn = wxnotify::queue::connect(&SecretString::from(nodes), "wxnotify-tls-test")
        .await
        .expect("the TLS node of the list connects");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_given_ca_did_not_sign_is_refused_naming_the_service() {
    let tls = tls_services().await;
    let env = TestEnv::on(tls.verified_by(&tls.ca), SimConfig::default()).await;
    let wrong = tls.verified_by(&tls.wrong_ca);
    let shutdown = tokio_util::sync::CancellationToken::new();

    // Postgres: the start-up fails at once instead of waiting for a database that "is not up".
    let opts = WorkerOpts {
        database_url: Some(env.db_url.replace(&tls.ca, &tls.wrong_ca)),
        ..Default::default()
    };
    let settings = env.worker_args(&opts).into_settings().expect("valid settings");
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(30), Application::build(settings, false, &shutdown))
        .await
        .expect("gives up within 30 s")
        .err()
        .expect("the database's certificate is refused")
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(err.contains("DATABASE_URL"), "names the setting: {err}");
    assert!(err.contains("certificate"), "says why: {err}");
    assert!(!err.contains(":postgres@"), "the password leaked: {err}");

    // RabbitMQ: the worker's first session fails, and the worker stops instead of reconnecting.
    let mut args = env.worker_args(&WorkerOpts::default());
    args.amqp.amqp_url = wrong.amqp_url.clone();
    let app = Application::build(args.into_settings().expect("valid settings"), false, &shutdown)
        .await
        .expect("the database is fine")
        .expect("not shut down");
    let err = tokio::time::timeout(Duration::from_secs(30), app.run(shutdown.clone()))
        .await
        .expect("stops within 30 s")
        .expect_err("the broker's certificate is refused")
        .to_string();
    assert!(err.contains("AMQP_URL"), "names the setting: {err}");
    assert!(err.contains("certificate"), "says why: {err}");
    assert!(!err.contains(":guest@"), "the password leaked: {err}");

    // The binary exits non-zero saying the same, the password masked.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        env.wxnotify(&["worker", "--no-migrate"])
            .env("AMQP_URL", &wrong.amqp_url)
            .output(),
    )
    .await
    .expect("exits within 60 s")
    .expect("run wxnotify worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit 1 (runtime): {stderr}");
    assert!(
        stderr.contains("AMQP_URL") && stderr.contains("certificate"),
        "{stderr}"
    );
    assert!(!stderr.contains(":guest@"), "the password leaked: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_given_ca_require_encrypts_and_verification_uses_the_system_roots() {
    let tls = tls_services().await;
    let connect = |params: &str| {
        let url = SecretString::from(format!("{}/postgres{params}", tls.db_base));
        async move { wxnotify::db::connect(&url, 1).await }
    };

    // `require`: encrypted, the certificate not checked (libpq's meaning).
    let pool = connect("?sslmode=require").await.expect("sslmode=require connects");
    assert!(session_is_encrypted(&pool).await);
    pool.close().await;

    // `verify-ca`: the chain checked against the given CA, not the host name.
    let pool = connect(&format!("?sslmode=verify-ca&sslrootcert={}", tls.ca))
        .await
        .expect("sslmode=verify-ca connects");
    assert!(session_is_encrypted(&pool).await);
    pool.close().await;

    // No CA given: the system's roots, which do not hold the test's CA.
    let err = connect("?sslmode=verify-full").await.expect_err("refused").to_string();
    assert!(err.contains("certificate"), "{err}");
    let err = wxnotify::queue::connect(&SecretString::from(tls.amqps_url.clone()), "wxnotify-tls-test")
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_that_does_not_exist_is_a_configuration_error() {
    let env = TestEnv::new().await;
    let cases = [
        (
            "DATABASE_URL",
            format!("{}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem", env.db_url),
        ),
        (
            "AMQP_URL",
            "amqps://guest:guest@localhost:5671/%2f?cacertfile=/nonexistent/ca.pem".to_string(),
        ),
        // A CA for a connection that is not TLS is a mistake, not a wish.
        (
            "AMQP_URL",
            "amqp://guest:guest@localhost:5672/%2f?cacertfile=/nonexistent/ca.pem".to_string(),
        ),
    ];
    for (setting, url) in cases {
        let out = env
            .wxnotify(&["worker", "--print-config"])
            .env(setting, &url)
            .output()
            .await
            .expect("run wxnotify worker --print-config");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{setting}={url}: {stderr}");
        assert!(
            stderr.starts_with(&format!("configuration error: {setting}:")),
            "names {setting}: {stderr}"
        );
        if url.starts_with("amqps") || url.starts_with("postgres") {
            assert!(stderr.contains("/nonexistent/ca.pem"), "names the file: {stderr}");
        }
        assert!(
            !stderr.contains(":guest@") && !stderr.contains(":postgres@"),
            "{stderr}"
        );
    }
}
