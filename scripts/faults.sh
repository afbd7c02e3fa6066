#!/usr/bin/env bash
# Network faults between the workers and their services (tests/chaos/faults.rs): three worker
# processes behind a fault proxy per service; Postgres and RabbitMQ blackholed 60 s and healed,
# Postgres 200 ms slower a round trip, connections reset mid-transaction, SIGTERM during a
# blackhole. Each scenario ends with every delivery sent once and every row final.
#   scripts/faults.sh              every scenario once
#   scripts/faults.sh 3            every scenario three times in a row, stopping at a failure
#   scripts/faults.sh 1 NAME       one scenario (e.g. postgres_blackholed_then_healed)
#   scripts/faults.sh short        the short run of CI: one scenario, smaller and faster
# It loads this machine: do not run it beside other tests.
# Knobs: FAULTS_EVENTS (3000), FAULTS_SECS (60), FAULTS_PUBLISH_SECS (30), FAULTS_SLOW_EVENTS (9000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
if [ "${1:-}" = short ]; then
  export FAULTS_EVENTS=${FAULTS_EVENTS:-600} FAULTS_SECS=${FAULTS_SECS:-25} FAULTS_PUBLISH_SECS=${FAULTS_PUBLISH_SECS:-15}
  exec cargo test --locked -p wxnotify --test chaos -- --ignored --nocapture --exact faults::postgres_blackholed_then_healed
fi
runs="${1:-1}"
only="${2:-}"
for i in $(seq 1 "$runs"); do
  echo "== faults run $i of $runs"
  cargo test --locked -p wxnotify --test chaos -- --ignored --nocapture --test-threads 1 "faults::${only}"
done
