//! What a benchmark run cost, per delivery: the CPU of each group of processes (RabbitMQ,
//! Postgres, the worker, the benchmark itself with its simulator and publisher), what Postgres
//! did (statements, commits, rows, index entries, WAL) and the worker's heap allocations.
//!
//! Read a [`Cpu`] before and after the run while the worker still lives (a process that exits
//! takes its CPU time with it), and a [`PgWork`] before the run and after the worker has stopped
//! (a backend sends its counters on exit at the latest).

use std::collections::HashMap;
use std::fmt::Write as _;

use sqlx::PgPool;

/// The groups of processes, by their command name (as `benches/cpu_by_process.sh`).
const GROUPS: [&str; 5] = ["rabbitmq", "postgres", "worker", "bench", "other"];

fn group(comm: &str) -> &'static str {
    match comm {
        "beam.smp" | "erl_child_setup" | "epmd" | "inet_gethost" => "rabbitmq",
        "postgres" => "postgres",
        c if c.starts_with("wxnotify") => "worker",
        c if c.starts_with("throughput-") => "bench",
        _ => "other",
    }
}

/// CPU time (user + system, in clock ticks) used so far by every live process, per group.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cpu(HashMap<&'static str, u64>);

impl Cpu {
    pub(crate) fn read() -> Self {
        let mut used = HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // After the command: state is field 3 of stat(5), utime 14 and stime 15.
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            *used.entry(group(&stat[open + 1..close])).or_insert(0) += ticks(11) + ticks(12);
        }
        Self(used)
    }

    /// "worker 190 · postgres 80 · …" µs of CPU per delivery between `before` and `self`.
    pub(crate) fn per(&self, before: &Self, deliveries: usize) -> String {
        let us_per_tick = 1e6 / clock_ticks();
        let n = deliveries.max(1) as f64;
        let mut total = 0.0;
        let mut out = String::new();
        for g in GROUPS {
            let us = self
                .0
                .get(g)
                .unwrap_or(&0)
                .saturating_sub(*before.0.get(g).unwrap_or(&0)) as f64
                * us_per_tick
                / n;
            total += us;
            let _ = write!(out, "{g} {us:.0} · ");
        }
        format!("CPU µs per delivery: {out}all {total:.0}")
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Postgres's own counters for this database (the cluster's, for WAL: a benchmark should be the
/// only load).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PgWork {
    statements: Option<i64>,
    commits: i64,
    inserted: i64,
    updated: i64,
    hot_updated: i64,
    index_entries: i64,
    wal_bytes: i64,
}

/// Rows and index entries written to this database's tables: an index entry per insert and per
/// non-HOT update for each index of the table (a partial index counted as if it held every row:
/// an upper bound).
const TABLE_WORK: &str = "SELECT COALESCE(sum(n_tup_ins), 0)::bigint, COALESCE(sum(n_tup_upd), 0)::bigint,
        COALESCE(sum(n_tup_hot_upd), 0)::bigint,
        COALESCE(sum((n_tup_ins + n_tup_upd - n_tup_hot_upd)
                     * (SELECT count(*) FROM pg_index i WHERE i.indrelid = t.relid)), 0)::bigint
   FROM pg_stat_user_tables t";

impl PgWork {
    /// Creates `pg_stat_statements` in this database if the server loads it
    /// (`scripts/services.sh` does); statements are not counted otherwise.
    pub(crate) async fn prepare(pool: &PgPool) {
        let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(pool)
            .await;
    }

    pub(crate) async fn read(pool: &PgPool) -> Self {
        let (commits,): (i64,) =
            sqlx::query_as("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                .fetch_one(pool)
                .await
                .unwrap_or_default();
        let (inserted, updated, hot_updated, index_entries): (i64, i64, i64, i64) =
            sqlx::query_as(TABLE_WORK).fetch_one(pool).await.unwrap_or_default();
        let statements = sqlx::query_scalar(
            "SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_statements
              WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(pool)
        .await
        .ok();
        let wal_bytes = sqlx::query_scalar("SELECT wal_bytes::bigint FROM pg_stat_wal")
            .fetch_one(pool)
            .await
            .unwrap_or_default();
        Self {
            statements,
            commits,
            inserted,
            updated,
            hot_updated,
            index_entries,
            wal_bytes,
        }
    }

    pub(crate) fn per(self, before: Self, deliveries: usize) -> String {
        let n = deliveries.max(1) as f64;
        let per = |after: i64, before: i64| (after - before) as f64 / n;
        let statements = match (self.statements, before.statements) {
            (Some(a), Some(b)) => format!("{:.2} statements", per(a, b)),
            _ => "statements not counted (no pg_stat_statements)".to_string(),
        };
        format!(
            "Postgres per delivery: {statements}, {:.2} commits, {:.2} rows inserted, {:.2} updated \
             ({:.2} HOT), ≤ {:.1} index entries, {:.0} WAL bytes",
            per(self.commits, before.commits),
            per(self.inserted, before.inserted),
            per(self.updated, before.updated),
            per(self.hot_updated, before.hot_updated),
            per(self.index_entries, before.index_entries),
            per(self.wal_bytes, before.wal_bytes),
        )
    }
}

/// The worker's `wxnotify_allocations_total` (started with `WXNOTIFY_COUNT_ALLOCATIONS=1`), read
/// from its `/metrics` at `admin`.
pub(crate) async fn allocations(admin: &str) -> Option<u64> {
    super::metrics_text(admin)
        .await
        .lines()
        .find_map(|l| l.strip_prefix("wxnotify_allocations_total "))
        .and_then(|v| v.trim().parse().ok())
}
