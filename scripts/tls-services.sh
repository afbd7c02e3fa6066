#!/usr/bin/env bash
# A second PostgreSQL 15 cluster and a second RabbitMQ node that accept TLS only, with a CA and a
# server certificate (localhost, 127.0.0.1, ::1) generated here: what tests/it/tls.rs runs
# against. The shared services of scripts/services.sh (cluster 15/main on 5432, node rabbit@host
# on 5672) are neither touched nor restarted.
#
#   scripts/tls-services.sh up [DIR]     generate what is missing, start both, wait until they answer
#   scripts/tls-services.sh down [DIR]   stop both (the certificates stay in DIR)
#   scripts/tls-services.sh status [DIR] say what runs
#   scripts/tls-services.sh connections [DIR]
#                                        the TLS node's AMQP connections, one a line: ssl (true or
#                                        false), TLS version, client properties (with the name)
#
# DIR defaults to /tmp/wxnotify-tls. `up` prints, on stdout and nothing else, `NAME=value` lines:
#   TLS_DIR          DIR
#   CA_FILE          DIR/ca.pem, the CA that signed both servers' certificate
#   WRONG_CA_FILE    DIR/wrong-ca.pem, another CA, which signed nothing the servers show
#   PG_PORT          5433 (TLS_PG_PORT): cluster 15/tls, user postgres, password postgres;
#                    pg_hba.conf has `hostssl` lines only, so a session without TLS is refused
#   AMQPS_PORT       5671 (TLS_AMQPS_PORT): node rabbit-tls@<short host name> (TLS_RABBIT_NODE),
#                    user guest/guest from loopback; no plain listener, no management plugin,
#                    Erlang distribution on 25674 (TLS_RABBIT_DIST_PORT)
#   DATABASE_BASE_URL  postgres://postgres:postgres@localhost:5433 (add /<db>?sslmode=…)
#   AMQPS_URL          amqps://guest:guest@localhost:5671/%2f (add ?cacertfile=…)
# Idempotent: `up` twice is harmless; missing or expiring certificates are made anew and the
# servers restarted on them. Needs root (or sudo), Debian's postgresql-15, rabbitmq-server, openssl.
set -euo pipefail

cmd="${1:-up}"
DIR="${2:-/tmp/wxnotify-tls}"
PG_VERSION=15
PG_CLUSTER=tls
PG_PORT="${TLS_PG_PORT:-5433}"
AMQPS_PORT="${TLS_AMQPS_PORT:-5671}"
DIST_PORT="${TLS_RABBIT_DIST_PORT:-25674}"
NODE="${TLS_RABBIT_NODE:-rabbit-tls@$(hostname -s)}"

. "$(dirname "$0")/lib.sh"

need() {
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || { log "$c is missing: run scripts/services.sh up (it installs PostgreSQL and RabbitMQ)"; exit 1; }
  done
}

# Everything the RabbitMQ node reads or writes is under DIR/rabbit; this environment is the node's
# whole configuration (no /etc/rabbitmq file applies to it).
rabbit_env=(
  RABBITMQ_NODENAME="$NODE"
  RABBITMQ_DIST_PORT="$DIST_PORT"
  RABBITMQ_CONFIG_FILE="$DIR/rabbit/rabbitmq.conf"
  RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/rabbit/advanced.config"
  RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/rabbit/enabled_plugins"
  RABBITMQ_MNESIA_BASE="$DIR/rabbit/mnesia"
  RABBITMQ_LOG_BASE="$DIR/rabbit/log"
  RABBITMQ_PID_FILE="$DIR/rabbit/rabbit.pid"
)
ctl() { as_root rabbitmqctl -n "$NODE" "$@"; }

# A CA (key and self-signed certificate) named $1, in DIR/$1.pem and DIR/$1.key.
make_ca() {
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$DIR/$1.key" -out "$DIR/$1.pem" -days 3650 -subj "/CN=wxnotify test $1" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# Returns 0 when certificates were (re)made: the servers must then load them anew.
certificates() {
  as_root mkdir -p "$DIR"
  as_root chmod 755 "$DIR"
  if [ -s "$DIR/ca.pem" ] && [ -s "$DIR/server.pem" ] && [ -s "$DIR/wrong-ca.pem" ] \
    && openssl x509 -checkend 86400 -noout -in "$DIR/server.pem" >/dev/null 2>&1 \
    && openssl verify -CAfile "$DIR/ca.pem" "$DIR/server.pem" >/dev/null 2>&1; then
    return 1
  fi
  log "generating a CA and a server certificate for localhost in $DIR"
  make_ca ca
  make_ca wrong-ca
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$DIR/server.key" -out "$DIR/server.csr" -subj "/CN=localhost" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" >"$DIR/server.ext"
  openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial \
    -out "$DIR/server.pem" -days 825 -extfile "$DIR/server.ext" 2>/dev/null
  rm -f "$DIR/server.csr" "$DIR/server.ext" "$DIR/ca.srl"
  chmod 644 "$DIR/ca.pem" "$DIR/wrong-ca.pem" "$DIR/server.pem"
  chmod 600 "$DIR/ca.key" "$DIR/wrong-ca.key" "$DIR/server.key"
  return 0
}

# Each server gets its own copy of the key, owned by the user it runs as (both refuse keys others
# can read).
server_keys() {
  as_root install -d -o postgres -g postgres -m 700 "$DIR/pg"
  as_root install -o postgres -g postgres -m 600 "$DIR/server.key" "$DIR/pg/server.key"
  as_root install -d -o rabbitmq -g rabbitmq -m 755 "$DIR/rabbit"
  as_root install -o rabbitmq -g rabbitmq -m 600 "$DIR/server.key" "$DIR/rabbit/server.key"
}

postgres_up() {
  local renewed="$1"
  if [ ! -d "/etc/postgresql/$PG_VERSION/$PG_CLUSTER" ]; then
    log "creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER on port $PG_PORT"
    # manual: not started at boot by the postgresql service, only by this script.
    as_root pg_createcluster "$PG_VERSION" "$PG_CLUSTER" --port "$PG_PORT" --start-conf manual \
      -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  fi
  local conf="/etc/postgresql/$PG_VERSION/$PG_CLUSTER"
  # Included after postgresql.conf (Debian's include_dir 'conf.d'): these settings win.
  printf '%s\n' "# Written by wxnotify's scripts/tls-services.sh." \
    "port = $PG_PORT" \
    "listen_addresses = 'localhost'" \
    "ssl = on" \
    "ssl_cert_file = '$DIR/server.pem'" \
    "ssl_key_file = '$DIR/pg/server.key'" \
    "shared_buffers = 32MB" \
    | as_root tee "$conf/conf.d/wxnotify-tls.conf" >/dev/null
  # TLS or nothing over TCP: `hostssl` lines only (a plain `host` line would let sslmode=disable in).
  printf '%s\n' "# Written by wxnotify's scripts/tls-services.sh: TCP sessions must use TLS." \
    "local   all all                peer" \
    "hostssl all all 127.0.0.1/32   scram-sha-256" \
    "hostssl all all ::1/128        scram-sha-256" \
    | as_root tee "$conf/pg_hba.conf" >/dev/null
  as_root chown postgres:postgres "$conf/conf.d/wxnotify-tls.conf" "$conf/pg_hba.conf"
  if ! pg_online "$PG_VERSION" "$PG_CLUSTER"; then
    log "starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
  elif [ "$renewed" -eq 1 ]; then
    # The certificate files are read again on reload.
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" reload
  fi
  wait_for 60 0.5 psql_root -p "$PG_PORT" -c 'select 1' \
    || { log "PostgreSQL $PG_VERSION/$PG_CLUSTER did not start; see /var/log/postgresql/"; exit 1; }
  psql_root -p "$PG_PORT" -c "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
  log "PostgreSQL $PG_VERSION/$PG_CLUSTER ready at postgres://postgres:***@localhost:$PG_PORT (TLS only)"
}

rabbitmq_up() {
  local renewed="$1"
  as_root install -d -o rabbitmq -g rabbitmq -m 755 "$DIR/rabbit/mnesia" "$DIR/rabbit/log"
  printf '%s\n' "# Written by wxnotify's scripts/tls-services.sh: TLS on loopback only." \
    "listeners.tcp = none" \
    "listeners.ssl.default = 127.0.0.1:$AMQPS_PORT" \
    "ssl_options.cacertfile = $DIR/ca.pem" \
    "ssl_options.certfile = $DIR/server.pem" \
    "ssl_options.keyfile = $DIR/rabbit/server.key" \
    "ssl_options.verify = verify_none" \
    "ssl_options.fail_if_no_peer_cert = false" \
    "loopback_users.guest = true" \
    | as_root tee "$DIR/rabbit/rabbitmq.conf" >/dev/null
  echo "[]." | as_root tee "$DIR/rabbit/advanced.config" >/dev/null
  echo "[]." | as_root tee "$DIR/rabbit/enabled_plugins" >/dev/null
  as_root chown rabbitmq:rabbitmq "$DIR/rabbit/rabbitmq.conf" "$DIR/rabbit/advanced.config" "$DIR/rabbit/enabled_plugins"
  if ctl -q ping >/dev/null 2>&1 && [ "$renewed" -eq 1 ]; then
    log "restarting RabbitMQ node $NODE on the new certificates"
    ctl -q shutdown >/dev/null 2>&1 || true
  fi
  if ! ctl -q ping >/dev/null 2>&1; then
    log "starting RabbitMQ node $NODE (TLS on $AMQPS_PORT)"
    # Like scripts/services.sh: the package's wrapper runs the server as the rabbitmq user.
    as_root env "${rabbit_env[@]}" HOME=/var/lib/rabbitmq rabbitmq-server -detached
  fi
  wait_for 120 1 ctl -q ping || { log "RabbitMQ node $NODE did not start; see $DIR/rabbit/log/"; exit 1; }
  ctl -q await_startup --timeout 120 >/dev/null
  log "RabbitMQ node $NODE ready at amqps://guest:***@localhost:$AMQPS_PORT/%2f (TLS only)"
}

rabbitmq_down() {
  if ctl -q ping >/dev/null 2>&1; then
    log "stopping RabbitMQ node $NODE"
    ctl -q shutdown >/dev/null 2>&1 || true
  fi
}

postgres_down() {
  if pg_online "$PG_VERSION" "$PG_CLUSTER"; then
    log "stopping PostgreSQL $PG_VERSION/$PG_CLUSTER"
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop
  fi
}

case "$cmd" in
  up)
    need openssl pg_createcluster pg_ctlcluster rabbitmq-server rabbitmqctl
    renewed=0
    if certificates; then renewed=1; fi
    server_keys
    postgres_up "$renewed"
    rabbitmq_up "$renewed"
    printf '%s\n' "TLS_DIR=$DIR" "CA_FILE=$DIR/ca.pem" "WRONG_CA_FILE=$DIR/wrong-ca.pem" \
      "PG_PORT=$PG_PORT" "AMQPS_PORT=$AMQPS_PORT" \
      "DATABASE_BASE_URL=postgres://postgres:postgres@localhost:$PG_PORT" \
      "AMQPS_URL=amqps://guest:guest@localhost:$AMQPS_PORT/%2f"
    ;;
  down) rabbitmq_down; postgres_down ;;
  status)
    pg_online "$PG_VERSION" "$PG_CLUSTER" && echo "postgres $PG_VERSION/$PG_CLUSTER: running on $PG_PORT" || echo "postgres $PG_VERSION/$PG_CLUSTER: not running"
    ctl -q ping >/dev/null 2>&1 && echo "rabbitmq $NODE: running on $AMQPS_PORT" || echo "rabbitmq $NODE: not running"
    ;;
  connections) ctl -s list_connections ssl ssl_protocol client_properties ;;
  *) echo "usage: $0 up|down|status|connections [DIR]" >&2; exit 2 ;;
esac
