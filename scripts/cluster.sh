#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside the single node of scripts/services.sh:
# nodes rabbit1..3@<host> on AMQP ports 5681..5683 (distribution ports 25681..25683), one cookie
# (the rabbitmq user's), no plugins. Data under /var/lib/rabbitmq/cluster/. AMQP_URL for a worker:
#   amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f
#
#   scripts/cluster.sh up             install RabbitMQ if missing, start the nodes, join them
#   scripts/cluster.sh down           stop the nodes (data kept)
#   scripts/cluster.sh status         the cluster's status, as node 1 sees it
#   scripts/cluster.sh stop-node N    stop node N's app (the cluster test's fault)
#   scripts/cluster.sh start-node N   start it again and wait until it is up
#
# `scripts/services.sh cluster …` runs this. Needs root (or sudo) on a Debian-like machine.
set -euo pipefail

. "$(dirname "$0")/lib.sh"

CLUSTER_NODES="${CLUSTER_NODES:-3}"
CLUSTER_DIR=/var/lib/rabbitmq/cluster
cluster_node() { echo "rabbit$1@$(hostname -s)"; }
cluster_ctl() { local i="$1"; shift; as_root rabbitmqctl -q -n "$(cluster_node "$i")" "$@"; }

cluster_start_node() {
  local i="$1" dir="$CLUSTER_DIR/rabbit$1"
  if cluster_ctl "$i" ping >/dev/null 2>&1; then
    cluster_ctl "$i" start_app >/dev/null 2>&1 || true
    return
  fi
  as_root mkdir -p "$dir/log"
  echo '[].' | as_root tee "$dir/enabled_plugins" >/dev/null
  as_root chown -R rabbitmq:rabbitmq "$dir"
  log "starting $(cluster_node "$i") on port $((5680 + i))"
  as_root env HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME="$(cluster_node "$i")" \
    RABBITMQ_NODE_PORT="$((5680 + i))" \
    RABBITMQ_DIST_PORT="$((25680 + i))" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq" \
    rabbitmq-server -detached
}

cluster_up() {
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  local i
  for i in $(seq 1 "$CLUSTER_NODES"); do cluster_start_node "$i"; done
  for i in $(seq 1 "$CLUSTER_NODES"); do
    wait_for 120 1 cluster_ctl "$i" ping || { log "$(cluster_node "$i") did not start; see $CLUSTER_DIR/rabbit$i/log"; exit 1; }
    cluster_ctl "$i" await_startup --timeout 120 >/dev/null
  done
  # Nodes 2..N join node 1 (once: a node that is already a member stays).
  for i in $(seq 2 "$CLUSTER_NODES"); do
    if ! cluster_ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "\"$(cluster_node "$i")\""; then
      log "$(cluster_node "$i") joins $(cluster_node 1)"
      quietly cluster_ctl "$i" stop_app
      quietly cluster_ctl "$i" reset
      quietly cluster_ctl "$i" join_cluster "$(cluster_node 1)"
      quietly cluster_ctl "$i" start_app
    fi
  done
  local urls=""
  for i in $(seq 1 "$CLUSTER_NODES"); do
    urls="${urls:+$urls,}amqp://guest:***@127.0.0.1:$((5680 + i))/%2f"
  done
  log "RabbitMQ cluster of $CLUSTER_NODES ready: AMQP_URL=$urls"
}

cluster_down() {
  local i
  for i in $(seq 1 "$CLUSTER_NODES"); do cluster_ctl "$i" shutdown >/dev/null 2>&1 || true; done
  log "RabbitMQ cluster stopped (data kept in $CLUSTER_DIR)"
}

case "${1:-up}" in
  up) cluster_up ;;
  down) cluster_down ;;
  stop-node) cluster_ctl "${2:?node number}" stop_app ;;
  start-node) cluster_ctl "${2:?node number}" start_app; cluster_ctl "$2" await_startup --timeout 120 >/dev/null ;;
  status) cluster_ctl 1 cluster_status ;;
  *) echo "usage: $0 up|down|status|stop-node N|start-node N" >&2; exit 2 ;;
esac
