#!/usr/bin/env bash
# Brings up (or down) the two real services wxnotify needs, without Docker:
# PostgreSQL 15 and RabbitMQ on loopback, with docs/interface.md §6's default credentials
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
#                                a three-node RabbitMQ cluster beside them (ports 5681-5683):
#                                runs scripts/cluster.sh
#   scripts/services.sh restart-rabbitmq | restart-postgres
#                                stop and start one of them (the chaos test's faults)
#
# Idempotent: running `up` twice is harmless. Needs root (or sudo) on a Debian-like machine.
set -euo pipefail

PG_VERSION="${PG_VERSION:-15}"
PG_CLUSTER="${PG_CLUSTER:-main}"
PG_PASSWORD="${PG_PASSWORD:-postgres}"
PG_DB="${PG_DB:-wxnotify}"

. "$(dirname "$0")/lib.sh"

postgres_up() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d "/etc/postgresql/$PG_VERSION/$PG_CLUSTER" ]; then
    apt_install "postgresql-$PG_VERSION" || apt_install postgresql
  fi
  if ! pg_online "$PG_VERSION" "$PG_CLUSTER"; then
    log "starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
  fi
  wait_for 60 0.5 psql_root -c 'select 1' || log "PostgreSQL $PG_VERSION/$PG_CLUSTER does not answer yet"
  # Tests create a database each; allow plenty of connections for parallel test binaries.
  psql_root -c "ALTER USER postgres PASSWORD '$PG_PASSWORD'" >/dev/null
  if [ "$(psql_root -c "select count(*) from pg_database where datname = '$PG_DB'")" = "0" ]; then
    log "creating database $PG_DB"
    psql_root -c "CREATE DATABASE \"$PG_DB\"" >/dev/null
  fi
  local max preload restart=""
  max=$(psql_root -c "show max_connections")
  if [ "$max" -lt 500 ]; then
    log "raising max_connections to 500 (tests run many pools in parallel)"
    psql_root -c "ALTER SYSTEM SET max_connections = 500" >/dev/null
    restart=yes
  fi
  # The throughput benchmark counts the statements per delivery with pg_stat_statements.
  preload=$(psql_root -c "show shared_preload_libraries")
  if [[ "$preload" != *pg_stat_statements* ]]; then
    log "loading pg_stat_statements (the benchmarks count statements)"
    psql_root -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >/dev/null
    restart=yes
  fi
  if [ -n "$restart" ]; then
    log "restarting PostgreSQL"
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
  wait_for 120 1 as_root rabbitmqctl -q ping || { log "RabbitMQ did not start; see /var/log/rabbitmq/"; exit 1; }
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
      | grep -E '^(t|bench|latency|chaos|cluster|faults)-(p[0-9]+-)?[0-9a-f]{8,10}\.' || true)
    log "deleted $n test $kind"
  done
}

case "${1:-up}" in
  clean) clean ;;
  cluster) shift; exec "$(dirname "$0")/cluster.sh" "$@" ;;
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
