#!/usr/bin/env bash
# The chaos test (tests/chaos): three worker processes, a few thousand events, two SIGKILLs, a
# RabbitMQ restart and a Postgres restart; then exactly-once, nothing lost, nothing left unacked.
#   scripts/chaos.sh          one run
#   scripts/chaos.sh 3        three runs in a row, stopping at the first failure
# It restarts this machine's RabbitMQ and Postgres: do not run it beside other tests.
# Knobs: CHAOS_EVENTS (3000), CHAOS_SEED (random, printed), CHAOS_PUBLISH_SECS (40).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
runs="${1:-1}"
for i in $(seq 1 "$runs"); do
  echo "== chaos run $i of $runs"
  cargo test --locked -p wxnotify --test chaos -- --ignored --nocapture --exact chaos
done
