#!/usr/bin/env bash
# The whole test suite on a real RabbitMQ and a real Postgres (started here if needed).
#   scripts/test.sh            fmt check, clippy, unit + integration tests (wxnotify,
#                              crates/wechat-rules, crates/wechat-sim), then one chaos run, one
#                              cluster run and the short network-fault run, each alone
# Each test makes its own database and random queue names, so tests run in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
# tests/it/tls.rs starts a TLS-only Postgres cluster and RabbitMQ node (scripts/tls-services.sh):
# stopped after the tests, and on any failure.
trap 'scripts/tls-services.sh down >/dev/null 2>&1 || true' EXIT
# Databases, queues and exchanges left by earlier runs (killed before their cleanup).
scripts/services.sh clean
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --all-targets -- --test-threads "${TEST_THREADS:-4}"
scripts/tls-services.sh down
# Last and alone: it restarts RabbitMQ and Postgres under three worker processes.
echo "== chaos test"
scripts/chaos.sh 1
# Alone too: a three-node RabbitMQ cluster loses the node leading the work queue.
echo "== cluster test"
scripts/cluster-chaos.sh 1
# Alone too: Postgres blackholed under three workers (the short run; scripts/faults.sh for all).
echo "== network faults (short)"
scripts/faults.sh short
