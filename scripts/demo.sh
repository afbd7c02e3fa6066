#!/usr/bin/env bash
# The demo, end to end on this machine (no Docker needed):
# services up → migrations → WeChat simulator → worker → sample events → what was delivered.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
cargo build --release --locked --workspace --bins   # wxnotify and wechat-sim (crates/wechat-sim)

export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/wxnotify}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export WECHAT_APP_ID="${WECHAT_APP_ID:-wx1111111111111111}"
export WECHAT_APP_SECRET="${WECHAT_APP_SECRET:-sim-secret}"
export WECHAT_SIM_ADDR="${WECHAT_SIM_ADDR:-127.0.0.1:8089}"
export WECHAT_API_BASE="http://$WECHAT_SIM_ADDR"
export WXNOTIFY_TEMPLATES="${WXNOTIFY_TEMPLATES:-templates.toml}"
export WXNOTIFY_QUEUE="${WXNOTIFY_QUEUE:-wxnotify.demo}"
export WXNOTIFY_ADMIN_ADDR="${WXNOTIFY_ADMIN_ADDR:-127.0.0.1:9464}"
bin=target/release
logs=$(mktemp -d)

cleanup() {
  [ -n "${worker_pid:-}" ] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null || true
  [ -n "${sim_pid:-}" ] && kill -TERM "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null || true
}
trap cleanup EXIT

$bin/wxnotify migrate
# A clean slate: earlier demo runs' deliveries, dead letters, and tokens of a simulator now gone.
PGPASSWORD=postgres psql -q "$DATABASE_URL" -c "TRUNCATE deliveries, delivery_attempts, wechat_tokens, dlq_replays CASCADE" >/dev/null
rabbitmqctl -q purge_queue "$WXNOTIFY_QUEUE.dlq" >/dev/null 2>&1 || true
$bin/wechat-sim --unsubscribed oUpF8uMuAJO_M2pxb1Q9zNjWe004 >"$logs/sim.log" 2>&1 &
sim_pid=$!
$bin/wxnotify worker --no-migrate >"$logs/worker.log" 2>&1 &
worker_pid=$!

wait_http() { for _ in $(seq 1 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
sleep 0.3
kill -0 "$sim_pid" 2>/dev/null || { cat "$logs/sim.log" >&2; echo "wechat-sim did not start (is $WECHAT_SIM_ADDR taken?)" >&2; exit 1; }
wait_http "$WECHAT_API_BASE/sim/healthz"
wait_http "http://$WXNOTIFY_ADMIN_ADDR/readyz" || { cat "$logs/worker.log" >&2; exit 1; }

echo "== publishing examples/events.jsonl (10 events, 1 duplicate, 1 without a template; openid ...004 does not follow the account)"
$bin/wxnotify publish examples/events.jsonl

for _ in $(seq 1 100); do
  n=$(PGPASSWORD=postgres psql -qAt "$DATABASE_URL" -c "select count(*) from deliveries where status in ('sent','dead')")
  [ "$n" -ge 10 ] && break
  sleep 0.2
done

echo
echo "== deliveries (Postgres ledger)"
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, event_type, status, attempts, last_errcode, wechat_msgid from deliveries order by event_id"
echo "== messages the WeChat simulator accepted"
curl -fsS "$WECHAT_API_BASE/sim/messages" | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    print("  %s  %-9s %-22s -> %s  %s" % (m["msgid"], m["api"], m["template_id"], m["touser"], json.dumps(m["data"], ensure_ascii=False)))'
echo "== dead letters (wxnotify dlq list)"
$bin/wxnotify dlq list
echo
echo "== ...004 follows the account again: wxnotify dlq replay --errcode 43004"
curl -fsS -X POST -H 'content-type: application/json' -d '{"unsubscribed": []}' "$WECHAT_API_BASE/sim/users" >/dev/null
$bin/wxnotify dlq replay --errcode 43004
for _ in $(seq 1 100); do
  n=$(PGPASSWORD=postgres psql -qAt "$DATABASE_URL" -c "select count(*) from deliveries where status = 'sent'")
  [ "$n" -ge 10 ] && break
  sleep 0.2
done
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, status, attempts, wechat_msgid from deliveries where openid like '%004'"
echo "== dead letters now"
$bin/wxnotify dlq list
echo "== wxnotify report (views delivery_daily_summary, delivery_failures)"
$bin/wxnotify report
echo "== simulator stats"
curl -fsS "$WECHAT_API_BASE/sim/stats"; echo
echo "(worker log: $logs/worker.log)"
