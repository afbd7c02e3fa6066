//! The moving parts the chaos test pushes around: worker *processes* (the real `wxnotify` binary,
//! killed with SIGKILL and restarted), the real RabbitMQ and Postgres (restarted through
//! `scripts/services.sh`), and the broker's own count of what its queues hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::common::wait_for;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One running worker process.
struct Running {
    child: Child,
    admin: String,
    /// The last counters scraped from its `/metrics` (lost with it when it is killed after that).
    last: BTreeMap<String, f64>,
}

/// N worker slots; each slot runs one process at a time.
pub(crate) struct Fleet {
    env: Vec<(String, String)>,
    logs: PathBuf,
    slots: Vec<Option<Running>>,
    started: usize,
    /// Counters of processes that are gone, summed.
    gone: BTreeMap<String, f64>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Fleet {
    pub(crate) fn new(size: usize, env: Vec<(String, String)>, logs: &Path) -> Self {
        std::fs::create_dir_all(logs).expect("log dir");
        Self {
            env,
            logs: logs.to_path_buf(),
            slots: (0..size).map(|_| None).collect(),
            started: 0,
            gone: BTreeMap::new(),
        }
    }

    pub(crate) fn processes_started(&self) -> usize {
        self.started
    }

    /// Starts a worker in `slot` and waits until its `/readyz` says broker and database are up.
    pub(crate) async fn start(&mut self, slot: usize) {
        assert!(self.slots[slot].is_none(), "slot {slot} is running");
        self.started += 1;
        let admin = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(self.logs.join(format!("worker-{slot}-{}.log", self.started))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_wxnotify"))
            .arg("worker")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("WXNOTIFY_ADMIN_ADDR", &admin)
            .current_dir(ROOT)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the wxnotify binary");
        let url = format!("http://{admin}/readyz");
        wait_for(&format!("worker {slot} ready"), Duration::from_secs(60), || {
            let url = url.clone();
            async move { matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success()) }
        })
        .await;
        self.slots[slot] = Some(Running {
            child,
            admin,
            last: BTreeMap::new(),
        });
    }

    /// SIGKILL: no drain, no goodbye; its claims stay until its heartbeat goes stale.
    pub(crate) async fn kill(&mut self, slot: usize) {
        let mut r = self.slots[slot].take().expect("slot running");
        r.child.start_kill().expect("SIGKILL");
        r.child.wait().await.expect("reap");
        add_into(&mut self.gone, &r.last);
    }

    /// Scrapes every live worker's counters (kept until the next scrape or its death).
    pub(crate) async fn scrape(&mut self) {
        for r in self.slots.iter_mut().flatten() {
            if let Ok(resp) = reqwest::get(format!("http://{}/metrics", r.admin)).await
                && let Ok(text) = resp.text().await
            {
                r.last = parse_counters(&text);
            }
        }
    }

    /// Sum over every process so far of the counters whose name (with labels) starts with `prefix`.
    pub(crate) fn counter(&self, prefix: &str) -> u64 {
        let mut all = self.gone.clone();
        for r in self.slots.iter().flatten() {
            add_into(&mut all, &r.last);
        }
        let total: f64 = all.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum();
        // Counters are whole numbers (and an empty float sum is -0.0).
        total.max(0.0).round() as u64
    }

    /// How many live workers' `/readyz` say broker and database are up.
    pub(crate) async fn ready(&self) -> usize {
        let mut n = 0;
        for r in self.slots.iter().flatten() {
            let url = format!("http://{}/readyz", r.admin);
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("client");
            if matches!(client.get(&url).send().await, Ok(resp) if resp.status().is_success()) {
                n += 1;
            }
        }
        n
    }

    /// SIGTERM to one worker; its exit status (it must drain and exit 0), within 60 s.
    pub(crate) async fn terminate(&mut self, slot: usize) -> Option<ExitStatus> {
        self.scrape().await;
        let r = self.slots[slot].take().expect("slot running");
        if let Some(pid) = r.child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        let mut child = r.child;
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        add_into(&mut self.gone, &r.last);
        status
    }

    /// SIGTERM to all; returns each exit status (they must drain and exit 0).
    pub(crate) async fn terminate_all(&mut self) -> Vec<(usize, Option<ExitStatus>)> {
        let mut out = Vec::new();
        for slot in 0..self.slots.len() {
            if self.slots[slot].is_some() {
                out.push((slot, self.terminate(slot).await));
            }
        }
        out
    }
}

fn add_into(into: &mut BTreeMap<String, f64>, from: &BTreeMap<String, f64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// `name{labels} value` lines of the Prometheus text format, for `*_total` counters.
fn parse_counters(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name.contains("_total")).then(|| Some((name.to_string(), value.parse().ok()?)))?
        })
        .collect()
}

/// Declares the run's topology (exchange, work queue, DLX/DLQ) through `url`.
pub(crate) async fn declare(url: &str, topology: &wxnotify::queue::Topology) {
    let conn = wxnotify::queue::connect(&secrecy::SecretString::from(url.to_string()), "wxnotify-chaos-setup")
        .await
        .expect("RabbitMQ (scripts/services.sh up, or cluster up)");
    let ch = conn.create_channel().await.expect("channel");
    topology.declare_core(&ch, 20).await.expect("topology");
    let _ = conn.close(200, "set up".into()).await;
}

/// Where a run's worker logs go: `target/chaos/<run>/`.
pub(crate) fn logs_of(run: &str) -> PathBuf {
    Path::new(ROOT).join("target/chaos").join(run)
}

/// Runs `scripts/services.sh <what>` (restart-rabbitmq, restart-postgres, cluster stop-node 2…);
/// panics if it fails.
pub(crate) async fn services(what: &str) {
    let status = Command::new("bash")
        .arg(Path::new(ROOT).join("scripts/services.sh"))
        .args(what.split_whitespace())
        .status()
        .await
        .expect("run scripts/services.sh");
    assert!(status.success(), "scripts/services.sh {what} failed: {status}");
}

/// What the broker holds per queue whose name starts with `prefix`: (messages, unacknowledged).
pub(crate) async fn queue_depths(prefix: &str) -> BTreeMap<String, (u64, u64)> {
    queue_depths_at(None, prefix).await
}

/// [`queue_depths`] as node `node` (`rabbit2@host`) sees them, or the default node's.
pub(crate) async fn queue_depths_at(node: Option<&str>, prefix: &str) -> BTreeMap<String, (u64, u64)> {
    let node_args = node.map(|n| ["-n", n]);
    let out = Command::new("rabbitmqctl")
        .args(node_args.iter().flatten())
        .args([
            "-q",
            "list_queues",
            "name",
            "messages",
            "messages_unacknowledged",
            "--formatter",
            "json",
        ])
        .output()
        .await
        .expect("run rabbitmqctl");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.into_iter()
        .filter_map(|r| {
            let name = r["name"].as_str()?.to_string();
            name.starts_with(prefix).then(|| {
                let n = |k: &str| r[k].as_u64().unwrap_or(0);
                (name, (n("messages"), n("messages_unacknowledged")))
            })
        })
        .collect()
}
