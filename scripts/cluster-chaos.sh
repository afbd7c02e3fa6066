#!/usr/bin/env bash
# The cluster test (tests/chaos/cluster.rs): a three-node RabbitMQ cluster on this machine, three
# worker processes and a publisher given every node; the node leading the work queue is stopped
# mid-run and brought back. Then: each event sent once, nothing left in a queue, no worker restarted.
#   scripts/cluster-chaos.sh        one run
#   scripts/cluster-chaos.sh 3      three runs in a row, stopping at the first failure
# It starts the cluster (scripts/services.sh cluster up) and stops nodes of it: run it alone.
# Knobs: CLUSTER_EVENTS (2000), CLUSTER_PUBLISH_SECS (24).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
scripts/services.sh cluster up
runs="${1:-1}"
for i in $(seq 1 "$runs"); do
  echo "== cluster run $i of $runs"
  cargo test --locked -p wxnotify --test chaos -- --ignored --nocapture --exact \
    cluster::the_cluster_loses_the_node_leading_the_work_queue_and_every_event_is_sent_once
done
