#!/usr/bin/env bash
# Brings up (or down) the two real services wxnotify needs, without Docker:
# PostgreSQL 15 and RabbitMQ on loopback, with CONTRACT §6's default credentials
# (postgres/postgres, database `wxnotify`; guest/guest on vhost `/`). `up` also installs Debian's
# `prometheus` package (the binaries only: tests/it/prometheus.rs runs its own Prometheus and
# promtool against dashboards/); no Prometheus daemon is left running.
#
#   scripts/services.sh up       install what is missing, start both, wait until they answer
#   scripts/services.sh down     stop both
#   scripts/services.sh status   say what runs
#   scripts/services.sh clean    drop what killed tests and benchmarks left (test databases,
#                                test queues and exchanges); run it before a benchmark
#   scripts/services.sh cluster up|down|status|stop-node N|start-node N
#                                a three-node RabbitMQ cluster beside them (ports 5681-5683)
#   scripts/services.sh restart-rabbitmq | restart-postgres
#                                stop and start one of them (the chaos test's faults)
#
# Idempotent: running `up` twice is harmless. Needs root (or sudo) on a Debian-like machine.
set -euo pipefail

PG_VERSION="${PG_VERSION:-15}"
PG_CLUSTER="${PG_CLUSTER:-main}"
PG_PASSWORD="${PG_PASSWORD:-postgres}"
PG_DB="${PG_DB:-wxnotify}"

log() { printf '[services] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# psql as the postgres superuser, over the local socket.
psql_root() { su postgres -c "psql -v ON_ERROR_STOP=1 -qAt $(printf '%q ' "$@")"; }

apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
}
# Installs packages (apt-get install arguments); `apt-get update` first only when the package
# lists are missing or the install fails on them (stale lists), and then once per run.
apt_install() {
  log "installing $*"
  # policy-rc.d on containers may forbid starting services from the package: we start them ourselves.
  if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then apt_update; fi
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; then
    [ "$apt_updated" -eq 0 ] || return 1
    apt_update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

postgres_up() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d "/etc/postgresql/$PG_VERSION/$PG_CLUSTER" ]; then
    apt_install "postgresql-$PG_VERSION" || apt_install postgresql
  fi
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2" "$4}' | grep -q "^$PG_VERSION $PG_CLUSTER online"; then
    log "starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
  fi
  for _ in $(seq 1 60); do
    if as_root -u postgres psql -qAtc 'select 1' >/dev/null 2>&1 || su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1; then
      break
    fi
    sleep 0.5
  done
  # Tests create a database each; allow plenty of connections for parallel test binaries.
  psql_root -c "ALTER USER postgres PASSWORD '$PG_PASSWORD'" >/dev/null
  if [ "$(psql_root -c "select count(*) from pg_database where datname = '$PG_DB'")" = "0" ]; then
    log "creating database $PG_DB"
    psql_root -c "CREATE DATABASE \"$PG_DB\"" >/dev/null
  fi
  local max
  max=$(psql_root -c "show max_connections")
  if [ "$max" -lt 500 ]; then
    log "raising max_connections to 500 (tests run many pools in parallel); restarting PostgreSQL"
    psql_root -c "ALTER SYSTEM SET max_connections = 500" >/dev/null
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart
  fi
  PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -U postgres -d "$PG_DB" -qAtc 'select 1' >/dev/null
  log "PostgreSQL ready at postgres://postgres:***@127.0.0.1:5432/$PG_DB"
}

rabbitmq_up() {
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    apt_install rabbitmq-server
  fi
  # Quorum queues with at-least-once dead-lettering (wxnotify's retry queues) try again to route
  # a dead letter they could not route after this timeout. Right after a restart the exchanges may
  # not be recovered yet; the default (3 min) would hold those retries that long. Only written when
  # the machine has no advanced.config of its own; takes effect at the broker's next start.
  if [ ! -e /etc/rabbitmq/advanced.config ] && [ -d /etc/rabbitmq ]; then
    log "writing /etc/rabbitmq/advanced.config (dead-letter worker retry: 10 s)"
    printf '%s\n' "%% Written by wxnotify's scripts/services.sh: see its README, \"What happens when\"." \
      "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 10000}]}]." \
      | as_root tee /etc/rabbitmq/advanced.config >/dev/null
  fi
  if ! as_root rabbitmqctl -q status >/dev/null 2>&1; then
    log "starting RabbitMQ"
    # The Debian package's service may be masked by policy-rc.d; run the server detached ourselves.
    as_root env HOME=/var/lib/rabbitmq rabbitmq-server -detached
  fi
  # `await_startup` needs the node registered with epmd first; poll `ping` until it is.
  local ok=0
  for _ in $(seq 1 120); do
    if as_root rabbitmqctl -q ping >/dev/null 2>&1; then ok=1; break; fi
    sleep 1
  done
  [ "$ok" -eq 1 ] || { log "RabbitMQ did not start; see /var/log/rabbitmq/"; exit 1; }
  as_root rabbitmqctl -q await_startup --timeout 120 >/dev/null
  # The management UI shows the dead-letter headers to people; plugin files ship with the package.
  as_root rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1 || log "management plugin not enabled (optional)"
  log "RabbitMQ ready at amqp://guest:***@127.0.0.1:5672/%2f (management on http://127.0.0.1:15672)"
}

postgres_down() { as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop 2>/dev/null || true; }
rabbitmq_down() { as_root rabbitmqctl -q shutdown 2>/dev/null || true; }

# Debian's `prometheus` package, for its `prometheus` and `promtool` binaries: the test runs its
# own Prometheus on a free port. The package's service must not run (it would hold :9090 and
# scrape nothing of ours): a policy-rc.d keeps its postinst from starting it, and where systemd
# runs, the unit is disabled and stopped. Without the recommended node exporter (another daemon).
prometheus_up() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    return
  fi
  local policy=/usr/sbin/policy-rc.d ours=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Written by wxnotify scripts/services.sh while installing prometheus.\nexit 101\n' \
      | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    ours=1
  fi
  local rc=0
  apt_install --no-install-recommends prometheus || rc=$?
  [ "$ours" -eq 0 ] || as_root rm -f "$policy"
  [ "$rc" -eq 0 ] || { log "installing prometheus failed"; exit "$rc"; }
  if [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/prometheus ]; then
    as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  log "prometheus $(prometheus --version 2>&1 | awk 'NR==1 {print $3}') installed (not started): prometheus, promtool"
}

# A three-node RabbitMQ cluster on this machine, beside the single node above: nodes
# rabbit1..3@<host> on AMQP ports 5681..5683 (distribution ports 25681..25683), one cookie (the
# rabbitmq user's), no plugins. Data under /var/lib/rabbitmq/cluster/. AMQP_URL for a worker:
#   amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f
CLUSTER_NODES="${CLUSTER_NODES:-3}"
CLUSTER_DIR=/var/lib/rabbitmq/cluster
# Runs a command, showing its output only when it fails.
quietly() { local out; out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }; }
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
  local i ok
  for i in $(seq 1 "$CLUSTER_NODES"); do cluster_start_node "$i"; done
  for i in $(seq 1 "$CLUSTER_NODES"); do
    ok=0
    for _ in $(seq 1 120); do
      if cluster_ctl "$i" ping >/dev/null 2>&1; then ok=1; break; fi
      sleep 1
    done
    [ "$ok" -eq 1 ] || { log "$(cluster_node "$i") did not start; see $CLUSTER_DIR/rabbit$i/log"; exit 1; }
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

# What tests and benchmarks leave behind when they are killed before their cleanup: databases
# `wxn_test_*`, and queues and exchanges named `t-`, `bench-`, `latency-`, `chaos-` or `cluster-`
# with their hex id (tests: `t-p<pid>-<hex>`, also swept by the next test binary once <pid> is
# gone). Every quorum queue is a Raft group the broker keeps ticking: a hundred left over made
# every figure of the benchmarks worse (BENCHMARKS.md). Nothing else is touched.
clean() {
  local db n=0 kind name
  while read -r db; do
    [ -n "$db" ] || continue
    psql_root -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 && n=$((n + 1))
  done < <(psql_root -c "select datname from pg_database where datname like 'wxn_test_%'" 2>/dev/null)
  log "dropped $n test databases"
  for kind in queues exchanges; do
    n=0
    while read -r name; do
      [ -n "$name" ] || continue
      curl -fsS -u guest:guest -X DELETE "http://127.0.0.1:15672/api/$kind/%2f/$name" >/dev/null 2>&1 && n=$((n + 1))
    done < <(curl -fsS -u guest:guest "http://127.0.0.1:15672/api/$kind/%2f?columns=name" 2>/dev/null \
      | grep -o '"name":"[^"]*"' | cut -d'"' -f4 \
      | grep -E '^(t|bench|latency|chaos|cluster)-(p[0-9]+-)?[0-9a-f]{8,10}\.' || true)
    log "deleted $n test $kind"
  done
}

case "${1:-up}" in
  clean) clean ;;
  cluster)
    case "${2:-up}" in
      up) cluster_up ;;
      down) cluster_down ;;
      stop-node) cluster_ctl "${3:?node number}" stop_app ;;
      start-node) cluster_ctl "${3:?node number}" start_app; cluster_ctl "$3" await_startup --timeout 120 >/dev/null ;;
      status) cluster_ctl 1 cluster_status ;;
      *) echo "usage: $0 cluster up|down|status|stop-node N|start-node N" >&2; exit 2 ;;
    esac
    ;;
  up) postgres_up; rabbitmq_up; prometheus_up ;;
  restart-rabbitmq) rabbitmq_down; rabbitmq_up ;;
  restart-postgres)
    log "restarting PostgreSQL $PG_VERSION/$PG_CLUSTER"
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart
    postgres_up
    ;;
  down) rabbitmq_down; postgres_down ;;
  status)
    pg_lsclusters 2>/dev/null || echo "postgres: not installed"
    as_root rabbitmqctl -q status >/dev/null 2>&1 && echo "rabbitmq: running" || echo "rabbitmq: not running"
    command -v promtool >/dev/null 2>&1 && echo "prometheus: installed (not a service)" || echo "prometheus: not installed"
    ;;
  *) echo "usage: $0 up|down|status|clean|restart-rabbitmq|restart-postgres|cluster up|down|status" >&2; exit 2 ;;
esac
