//! dashboards/ against a real Prometheus (Debian's `prometheus` package, which
//! scripts/services.sh installs): `promtool check rules` and `check config` accept the alert rules
//! and the compose stack's configuration; a Prometheus loads the rules and scrapes a worker and a
//! receiver through a short run; then every panel of the Grafana dashboard returns data, every
//! rule evaluates without error, and the dead-letter and token-quota alerts go off when their
//! conditions hold while the others stay quiet.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{AES_KEY, APP_ID, CALLBACK_TOKEN, TestEnv, event, wait_for};

/// A loopback address nobody listens on (yet).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

const DASHBOARDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");

/// Runs `tool args`; fails the test, saying how to install it, when it cannot run.
fn run_tool(tool: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{tool}` ({e}): run scripts/services.sh up, it installs Debian's prometheus package")
        })
}

/// A Prometheus child process on a free port; its configuration, data and log in a directory of
/// its own, removed with it.
struct Prometheus {
    child: tokio::process::Child,
    base: String,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts one that evaluates `rules` and scrapes each (job, address)'s `/metrics`, every
    /// second; returns once it answers ready.
    async fn start(rules: &Path, targets: &[(&str, SocketAddr)]) -> Self {
        let dir = std::env::temp_dir().join(format!("wxn-prometheus-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\nscrape_configs:\n",
            rules.display()
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `prometheus` ({e}): run scripts/services.sh up, it installs Debian's prometheus package"
                )
            });
        let mut prometheus = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = prometheus.http.get(format!("{}/-/ready", prometheus.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            let exited = prometheus.child.try_wait().unwrap();
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(prometheus.dir.join("prometheus.log")).unwrap_or_default();
                panic!("Prometheus not ready (exit: {exited:?}); its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/<path>`'s `data`, or Prometheus's error.
    async fn api(&self, path: &str, query: Option<&str>) -> Result<Value, String> {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/{path}", self.base)).unwrap();
        if let Some(q) = query {
            url.query_pairs_mut().append_pair("query", q);
        }
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"].clone())
    }

    /// The samples an instant query returns now.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", Some(expr)).await?;
        if data["resultType"] != "vector" {
            return Err(format!("a {} where a vector was expected", data["resultType"]));
        }
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `expr` returns something.
    async fn wait_until(&self, what: &str, expr: &str) {
        wait_for(what, Duration::from_secs(60), || async {
            self.query(expr).await.is_ok_and(|r| !r.is_empty())
        })
        .await;
    }

    /// Names of the alerts pending or firing now.
    async fn active_alerts(&self) -> BTreeSet<String> {
        let data = self.api("alerts", None).await.expect("alerts");
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
            .collect()
    }

    async fn stop(mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every panel's queries as (panel title, PromQL), with Grafana's variables replaced as
/// Grafana would: the interval ones by 1m, the template ones by their "All" value.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] != "datasource")
        .map(|v| {
            let all = v["allValue"].as_str().unwrap_or(".*");
            (v["name"].as_str().unwrap().to_string(), all.to_string())
        })
        .collect();
    for builtin in ["__rate_interval", "__interval", "__range"] {
        vars.push((builtin.into(), "1m".into()));
    }
    // Longest first: `$app` must not eat the start of `$application`.
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        // A collapsed row holds its panels.
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap().to_string();
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: the datasource variable"
        );
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let mut expr = t["expr"].as_str().unwrap().to_string();
            for (name, value) in &vars {
                expr = expr
                    .replace(&format!("${{{name}}}"), value)
                    .replace(&format!("${name}"), value);
            }
            assert!(!expr.contains('$'), "{title}: a variable left in {expr}");
            out.push((title.clone(), expr));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_hold_on_a_real_prometheus() {
    let rules = Path::new(DASHBOARDS).join("alerts.yml");
    let rule_names = promtool_accepts_the_rules_and_the_config(&rules);

    let env = TestEnv::new().await;
    let binaries = Binaries::start(&env).await;
    env.push_to_addr(binaries.receiver_addr, true, 0);
    let prometheus = Prometheus::start(
        &rules,
        &[
            ("wxnotify", binaries.worker_admin),
            ("wxnotify-receiver", binaries.receiver_admin),
        ],
    )
    .await;
    // Scraped a few times before anything happens: the rates and the DLQ's delta start at zero.
    prometheus
        .wait_until(
            "both targets up and scraped 3 times",
            "count(count_over_time(up[1m]) >= 3 and up == 1) == 2",
        )
        .await;

    sends_a_dead_letter_and_a_token_quota_near_its_end(&env, &prometheus).await;
    only_the_dead_letter_and_token_quota_alerts_go_off(&prometheus).await;
    let mut failures = every_rule_evaluates(&prometheus, &rule_names).await;
    let sends = every_panel_returns_data(&prometheus, &mut failures).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    the_sends_panel_shows_every_result(&sends);

    prometheus.stop().await;
    binaries.stop().await;
}

/// `promtool check rules` accepts the alert rules and `check config` the compose stack's
/// configuration; returns the rules' names.
fn promtool_accepts_the_rules_and_the_config(rules: &Path) -> BTreeSet<String> {
    let check = run_tool("promtool", &["check", "rules", rules.to_str().unwrap()]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "promtool check rules:\n{said}");
    let rule_names: BTreeSet<String> = std::fs::read_to_string(rules)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect();
    assert!(said.contains(&format!("{} rules found", rule_names.len())), "{said}");
    // The compose stack's configuration, which loads the same rules.
    let config = Path::new(DASHBOARDS).join("prometheus.yml");
    let check = run_tool("promtool", &["check", "config", config.to_str().unwrap()]);
    assert!(check.status.success(), "promtool check config: {check:?}");
    rule_names
}

/// The real binaries, each its own process and so its own registry: an in-process worker
/// would share this test process's registry with every test running beside it (CI saw a
/// neighbour's gauges set off other alerts).
struct Binaries {
    worker: tokio::process::Child,
    receiver: tokio::process::Child,
    worker_admin: SocketAddr,
    receiver_addr: SocketAddr,
    receiver_admin: SocketAddr,
}

impl Binaries {
    /// A `wxnotify worker` and a `wxnotify receiver`; returns once both admin servers answer ready.
    async fn start(env: &TestEnv) -> Self {
        let (worker_admin, receiver_addr, receiver_admin) = (free_addr(), free_addr(), free_addr());
        let worker = env
            .worker_command()
            .env("WXNOTIFY_ADMIN_ADDR", worker_admin.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start wxnotify worker");
        let receiver = env
            .wxnotify(&["receiver"])
            .env("WECHAT_CALLBACK_TOKEN", CALLBACK_TOKEN)
            .env("WECHAT_ENCODING_AES_KEY", AES_KEY)
            .env("WXNOTIFY_RECEIVER_ADDR", receiver_addr.to_string())
            .env("WXNOTIFY_ADMIN_ADDR", receiver_admin.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start wxnotify receiver");
        for admin in [worker_admin, receiver_admin] {
            wait_for(&format!("{admin} ready"), Duration::from_secs(60), || async move {
                matches!(reqwest::get(format!("http://{admin}/readyz")).await, Ok(r) if r.status().is_success())
            })
            .await;
        }
        Self {
            worker,
            receiver,
            worker_admin,
            receiver_addr,
            receiver_admin,
        }
    }

    async fn stop(mut self) {
        for child in [&mut self.worker, &mut self.receiver] {
            child.start_kill().expect("stop");
            let _ = child.wait().await;
        }
    }
}

/// Three events sent (and their receipts pushed), one dead letter, 1,700 token calls today; waits
/// until Prometheus has scraped all of it.
async fn sends_a_dead_letter_and_a_token_quota_near_its_end(env: &TestEnv, prometheus: &Prometheus) {
    // The empty DLQ is on record first: the "growing" rule compares with it (CI once published
    // the dead letter before the worker's first sample, so the DLQ was never seen empty).
    prometheus
        .wait_until(
            "the empty DLQ scraped",
            r#"max(wxnotify_queue_messages{queue="dlq"}) == 0"#,
        )
        .await;
    for i in 0..3 {
        env.publish(&event(&format!("prom-{i}"), "booking.confirmed", &format!("oProm{i}")))
            .await;
    }
    env.publish_raw("booking.confirmed", b"{not json").await;
    wait_for("three sent", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 3
    })
    .await;
    wait_for("their receipts pushed", Duration::from_secs(30), || async {
        env.sim.stats().pushes_acknowledged >= 3
    })
    .await;
    // 1,700 token calls today: over 80% of WeChat's 2,000.
    let updated = sqlx::query("UPDATE wechat_token_fetches SET calls = 1700 WHERE app_id = $1")
        .bind(APP_ID)
        .execute(&env.pool)
        .await
        .unwrap();
    assert!(updated.rows_affected() >= 1, "the token fetch was counted");
    for (what, expr) in [
        (
            "the sends",
            r#"sum(wxnotify_sends_total{job="wxnotify", result="ok"}) >= 3"#,
        ),
        (
            "the pushes",
            r#"sum(wxnotify_pushes_total{job="wxnotify-receiver"}) >= 3"#,
        ),
        ("the dead letter", r#"max(wxnotify_queue_messages{queue="dlq"}) >= 1"#),
        ("the token calls", "max(wxnotify_token_calls_today) >= 1700"),
    ] {
        prometheus.wait_until(&format!("{what} scraped"), expr).await;
    }
}

/// The dead-letter and token-quota alerts go off (pending: their `for` is minutes); the
/// others, whose conditions do not hold, stay quiet.
async fn only_the_dead_letter_and_token_quota_alerts_go_off(prometheus: &Prometheus) {
    let expected: BTreeSet<String> = ["WxnotifyDeadLetterQueueGrowing", "WxnotifyTokenQuotaHigh"]
        .map(String::from)
        .into();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let active = prometheus.active_alerts().await;
        if active == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 60 s for exactly {expected:?} pending; active: {active:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prometheus loaded every rule of the file and evaluates each without error; returns the
/// failures.
async fn every_rule_evaluates(prometheus: &Prometheus, rule_names: &BTreeSet<String>) -> Vec<String> {
    let groups = prometheus.api("rules", None).await.expect("rules");
    let loaded: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let loaded_names: BTreeSet<String> = loaded.iter().map(|r| r["name"].as_str().unwrap().into()).collect();
    assert_eq!(&loaded_names, rule_names);
    let mut failures = Vec::new();
    for rule in &loaded {
        let (name, expr) = (&rule["name"], rule["query"].as_str().unwrap());
        if rule["health"] != "ok" {
            failures.push(format!("rule {name}: health {}: {}", rule["health"], rule["lastError"]));
        }
        if let Err(e) = prometheus.query(expr).await {
            failures.push(format!("rule {name}: {expr}: {e}"));
        }
    }
    failures
}

/// Every panel's every query returns data (adds to `failures` otherwise); returns what the sends
/// panel's query returned.
async fn every_panel_returns_data(prometheus: &Prometheus, failures: &mut Vec<String>) -> Vec<Value> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(DASHBOARDS).join("wxnotify.json")).unwrap())
            .expect("the dashboard is JSON");
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 20, "{queries:?}");
    let mut sends = Vec::new();
    for (title, expr) in &queries {
        match prometheus.query(expr).await {
            Err(e) => failures.push(format!("panel {title:?}: {expr}: {e}")),
            Ok(r) if r.is_empty() => failures.push(format!("panel {title:?}: {expr}: returns nothing")),
            Ok(r) if expr.contains("wxnotify_sends_total") => sends = r,
            Ok(_) => {}
        }
    }
    sends
}

/// The sends panel shows the sends, and the results none had, at zero.
fn the_sends_panel_shows_every_result(sends: &[Value]) {
    let by_result: Vec<(String, f64)> = sends
        .iter()
        .map(|s| {
            let value = s["value"][1].as_str().unwrap().parse().unwrap();
            (s["metric"]["result"].as_str().unwrap().to_string(), value)
        })
        .collect();
    assert_eq!(by_result.len(), 3, "{by_result:?}");
    assert!(by_result.iter().any(|(r, v)| r == "ok" && *v > 0.0), "{by_result:?}");
}
