#!/usr/bin/env bash
# The demo, end to end on this machine (no Docker needed):
# services up → migrations → WeChat simulator → worker → sample events → what was delivered; then
# reminders, receipts, consent, and a third-party platform's merchants.
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
# The account's server configuration (§9): the receiver checks pushes with these, the simulator signs
# and encrypts (safe mode) with them.
export WECHAT_CALLBACK_TOKEN="${WECHAT_CALLBACK_TOKEN:-demoCallbackToken}"
export WECHAT_ENCODING_AES_KEY="${WECHAT_ENCODING_AES_KEY:-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG}"
export WXNOTIFY_RECEIVER_ADDR="${WXNOTIFY_RECEIVER_ADDR:-127.0.0.1:8080}"
# A third-party platform (docs/interface.md §10): its AppSecret, message-check token and
# EncodingAESKey, in the variables its [[platforms]] entry names; the simulator is given the same.
component=wx3333333333333333
export PLATFORM_SECRET="${PLATFORM_SECRET:-sim-component-secret}"
export PLATFORM_TOKEN="${PLATFORM_TOKEN:-demoPlatformToken}"
export PLATFORM_AES_KEY="${PLATFORM_AES_KEY:-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG}"
bin=target/release
logs=$(mktemp -d)
# The mini program's subscribe message (TPL_REMINDER) goes only with the user's consent
# (docs/interface.md §12): the demo runs the shipped templates with `consent = "tracked"` on it.
sed 's/^template_id = "TPL_REMINDER"$/&\nconsent = "tracked"/' "$WXNOTIFY_TEMPLATES" >"$logs/templates.toml"
grep -q '^consent = "tracked"$' "$logs/templates.toml" || { echo "no TPL_REMINDER template in $WXNOTIFY_TEMPLATES" >&2; exit 1; }
# The platform, and a library template for its merchants' bookings (`booking.paid`): each
# merchant's account gets its own template id from WeChat (api_add_template).
cat >>"$logs/templates.toml" <<EOF

[[templates]]
event_type = "booking.paid"
library_id = "OPENTM400231951"
keywords = ["服务项目", "门店", "预约时间", "支付金额"]
url = "https://wash.example.com/bookings/{{ data.booking_id }}"
[templates.data]
thing1 = "{{ data.service }}"
thing2 = "{{ data.store }}"
time3 = "{{ data.slot_start | datetime('%Y年%m月%d日 %H:%M') }}"
amount4 = "{{ data.price_cents | yuan }}"

[[platforms]]
component_appid = "$component"
secret_env = "PLATFORM_SECRET"
callback_token_env = "PLATFORM_TOKEN"
aes_key_env = "PLATFORM_AES_KEY"
EOF
export WXNOTIFY_TEMPLATES="$logs/templates.toml"

cleanup() {
  [ -n "${worker_pid:-}" ] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null || true
  [ -n "${receiver_pid:-}" ] && kill -TERM "$receiver_pid" 2>/dev/null && wait "$receiver_pid" 2>/dev/null || true
  [ -n "${sim_pid:-}" ] && kill -TERM "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null || true
}
trap cleanup EXIT

$bin/wxnotify migrate
# A clean slate: earlier demo runs' deliveries, dead letters, and tokens of a simulator now gone.
PGPASSWORD=postgres psql -q "$DATABASE_URL" -c "TRUNCATE deliveries, delivery_attempts, wechat_tokens, dlq_replays, delivery_cancellations, delivery_receipts, followers, consent_log, consents,
  platform_tickets, platform_tokens, platform_authorizations, authorizers, merchant_templates CASCADE" >/dev/null
rabbitmqctl -q purge_queue "$WXNOTIFY_QUEUE.dlq" >/dev/null 2>&1 || true
# The simulator pushes each message's result to the receiver 300 ms after accepting it, like
# WeChat (10% "user block"), and answers 43101 to a subscribe message its user did not accept.
# It knows the platform and pushes its authorization events to the receiver's authorization event
# URL; a merchant's own pushes go to the message URL, /wechat/{its appid}.
$bin/wechat-sim --unsubscribed oUpF8uMuAJO_M2pxb1Q9zNjWe004 --enforce-consent \
  --callback-url "http://$WXNOTIFY_RECEIVER_ADDR/wechat/{appid}" --push-delay-ms 300 --push-user-block-rate 0.1 \
  --platform "$component:$PLATFORM_SECRET:$PLATFORM_TOKEN:$PLATFORM_AES_KEY" \
  --platform-callback-url "http://$WXNOTIFY_RECEIVER_ADDR/wechat/platform/{component_appid}" \
  >"$logs/sim.log" 2>&1 &
sim_pid=$!
WXNOTIFY_ADMIN_ADDR=127.0.0.1:9465 $bin/wxnotify receiver --no-migrate >"$logs/receiver.log" 2>&1 &
receiver_pid=$!
$bin/wxnotify worker --no-migrate >"$logs/worker.log" 2>&1 &
worker_pid=$!

wait_http() { for _ in $(seq 1 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
# wait_sql "select <boolean>" SECONDS: polls the ledger until the condition holds; says so if it
# never does (the tables below then show what happened instead).
wait_sql() {
  local deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$(PGPASSWORD=postgres psql -qAt "$DATABASE_URL" -c "$1")" = t ] && return 0
    sleep 0.1
  done
  echo "(still not true after $2 s: $1)" >&2
}
sleep 0.3
kill -0 "$sim_pid" 2>/dev/null || { cat "$logs/sim.log" >&2; echo "wechat-sim did not start (is $WECHAT_SIM_ADDR taken?)" >&2; exit 1; }
wait_http "$WECHAT_API_BASE/sim/healthz"
wait_http "http://$WXNOTIFY_ADMIN_ADDR/readyz" || { cat "$logs/worker.log" >&2; exit 1; }
wait_http "http://127.0.0.1:9465/readyz" || { cat "$logs/receiver.log" >&2; exit 1; }

# The two mini-program users of examples/events.jsonl said yes to the reminder in the pop-up;
# WeChat pushes their choice to the receiver.
popup() {
  curl -fsS -X POST -H 'content-type: application/json' \
    -d "{\"openid\": \"$1\", \"event\": \"subscribe_msg_popup_event\", \"list\": [{\"template_id\": \"TPL_REMINDER\", \"status\": \"$2\"}]}" \
    "$WECHAT_API_BASE/sim/events" >/dev/null
}
popup oUpF8uMuAJO_M2pxb1Q9zNjWe003 accept
popup oUpF8uMuAJO_M2pxb1Q9zNjWe008 accept
wait_sql "select (select count(*) from consent_log where kind = 'accept') >= 2" 10

echo "== publishing examples/events.jsonl (10 events, 1 duplicate, 1 without a template; openid ...004 does not follow the account)"
$bin/wxnotify publish examples/events.jsonl

wait_sql "select (select count(*) from deliveries where status in ('sent','dead')) >= 10" 20

echo
echo "== deliveries (Postgres ledger)"
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, event_type, template_id, status, attempts, last_errcode, wechat_msgid from deliveries order by event_id, template_id"
echo "== messages the WeChat simulator accepted"
curl -fsS "$WECHAT_API_BASE/sim/messages" | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    print("  %s  %-9s %-22s -> %s  %s" % (m["msgid"], m["api"], m["template_id"], m["touser"], json.dumps(m["data"], ensure_ascii=False)))'
echo "== dead letters (wxnotify dlq list)"
$bin/wxnotify dlq list
echo
echo "== ...004 follows the account again: wxnotify dlq replay --errcode 43004"
# WeChat pushes `subscribe`: the receiver records the user follows again (the 43004 had marked them gone).
curl -fsS -X POST -H 'content-type: application/json' -d '{"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWe004", "event": "subscribe"}' "$WECHAT_API_BASE/sim/events" >/dev/null
wait_sql "select (select count(*) from followers where openid like '%004' and followed) >= 1" 5
$bin/wxnotify dlq replay --errcode 43004
wait_sql "select (select count(*) from deliveries where status = 'sent') >= 10" 20
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, status, attempts, wechat_msgid from deliveries where openid like '%004'"
echo "== dead letters now"
$bin/wxnotify dlq list
echo
echo "== reminders (templates.toml: TPL_BOOKING_REMINDER an hour before the slot, cancelled by booking.cancelled / booking.rescheduled)"
# Three bookings whose slots start in an hour and a few seconds: their reminders fall due in seconds.
python3 - >"$logs/reminders.jsonl" <<'PY'
import datetime as dt, json
bj = dt.timezone(dt.timedelta(hours=8))
now = dt.datetime.now(bj).replace(microsecond=0)
def ev(i, kind, booking, openid, due_in, occurred):
    slot = now + dt.timedelta(minutes=60, seconds=due_in)
    return json.dumps({"event_id": "evt-demo-%02d" % i, "event_type": kind,
        "occurred_at": (now + dt.timedelta(seconds=occurred)).isoformat(), "openid": openid,
        "data": {"booking_id": booking, "service": "精洗套餐", "store": "徐汇店",
                 "slot_start": slot.isoformat(), "plate": "沪A12345", "price_cents": 3980}}, ensure_ascii=False)
print(ev(1, "booking.confirmed",   "B-DEMO-1", "oDemoReminder0000000000001", 6, 0))  # reminder in 6 s
print(ev(2, "booking.confirmed",   "B-DEMO-2", "oDemoReminder0000000000002", 6, 0))  # ...then cancelled
print(ev(3, "booking.cancelled",   "B-DEMO-2", "oDemoReminder0000000000002", 6, 1))
print(ev(4, "booking.cancelled",   "B-DEMO-4", "oDemoReminder0000000000004", 6, 1))  # cancellation first,
print(ev(5, "booking.confirmed",   "B-DEMO-4", "oDemoReminder0000000000004", 6, 0))  # booking second
print(ev(6, "booking.confirmed",   "B-DEMO-3", "oDemoReminder0000000000003", 6, 0))  # moved: old reminder
print(ev(7, "booking.rescheduled", "B-DEMO-3", "oDemoReminder0000000000003", 8, 1))  # cancelled, new one in 8 s
PY
$bin/wxnotify publish "$logs/reminders.jsonl"
sleep 1
echo "-- wxnotify scheduled list (waiting reminders)"
$bin/wxnotify scheduled list
wait_sql "select (select count(*) from deliveries where event_id like 'evt-demo-%' and template_id = 'TPL_BOOKING_REMINDER' and status = 'sent') >= 2" 30
echo "-- reminders in the ledger (sent ones: within a second of due_at; cancelled ones: never sent)"
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, event_type, status, to_char(due_at at time zone 'Asia/Shanghai', 'HH24:MI:SS.MS') as due_bj,
          round(extract(epoch from sent_at - due_at)::numeric, 3) as sent_after_due_s, last_error
     from deliveries where event_id like 'evt-demo-%' and template_id = 'TPL_BOOKING_REMINDER' order by event_id"
echo "-- reminders WeChat received"
curl -fsS "$WECHAT_API_BASE/sim/messages" | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    if m["template_id"] == "TPL_BOOKING_REMINDER":
        print("  %s -> %s  %s" % (m["template_id"], m["touser"], json.dumps(m["data"], ensure_ascii=False)))'
echo
echo "== receipts (WeChat's event push → wxnotify receiver → the ledger)"
wait_sql "select (select count(*) from deliveries where status = 'sent' and receipt_status is null) = 0" 20
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select status, receipt_status, count(*) from deliveries where status = 'sent' group by 1, 2 order by 1, 2"
echo "-- one user leaves the account (WeChat pushes unsubscribe); the next message to them is not sent"
curl -fsS -X POST -H 'content-type: application/json' -d '{"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWe003", "event": "unsubscribe"}' "$WECHAT_API_BASE/sim/events" >/dev/null
wait_sql "select (select count(*) from followers where openid like '%003' and not followed) >= 1" 5
before=$(curl -fsS "$WECHAT_API_BASE/sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["send_requests"])')
echo '{"event_id": "evt-20261122-000100", "event_type": "booking.completed", "occurred_at": "2026-11-22T10:00:00+08:00", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWe003", "data": {"booking_id": "B-10023", "service": "精洗套餐", "price_cents": 4280}}' \
  | $bin/wxnotify publish
wait_sql "select (select count(*) from deliveries where event_id = 'evt-20261122-000100' and status = 'suppressed') >= 1" 10
after=$(curl -fsS "$WECHAT_API_BASE/sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["send_requests"])')
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, openid, status, last_error from deliveries where event_id = 'evt-20261122-000100'"
echo "   send requests at the simulator before and after: $before -> $after (no call for the suppressed one)"
echo
echo "== subscription consent (mini program): one user accepts the reminder in the pop-up, one declines it"
popup oDemoConsent0000000000000001 accept
popup oDemoConsent0000000000000002 reject
wait_sql "select (select count(*) from consent_log where openid like 'oDemoConsent%') >= 2" 10
refused_before=$(curl -fsS "$WECHAT_API_BASE/sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors"].get("43101", 0))')
for n in 1 2; do
  for kind in confirmed reminder; do
    echo "{\"event_id\": \"evt-consent-$n-$kind\", \"event_type\": \"booking.$kind\", \"occurred_at\": \"2026-11-22T10:00:00+08:00\", \"openid\": \"oDemoConsent000000000000000$n\", \"data\": {\"booking_id\": \"B-C$n\", \"service\": \"精洗套餐\", \"store\": \"徐汇店\", \"slot_start\": \"2026-11-22T14:00:00+08:00\", \"plate\": \"沪A12345\", \"price_cents\": 3980}}"
  done
done | $bin/wxnotify publish
wait_sql "select (select count(*) from deliveries where event_id like 'evt-consent-%' and template_id in ('TPL_BOOKING_CONFIRMED', 'TPL_REMINDER') and status in ('sent', 'suppressed')) >= 4" 20
refused_after=$(curl -fsS "$WECHAT_API_BASE/sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors"].get("43101", 0))')
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, openid, template_id, status, last_error from deliveries
    where event_id like 'evt-consent-%' and template_id in ('TPL_BOOKING_CONFIRMED', 'TPL_REMINDER') order by event_id"
echo "   WeChat's 43101 answers before and after: $refused_before -> $refused_after (the declined reminder was never sent)"
echo
echo "== third-party platform $component: merchants authorize it by scanning, and it sends from their own accounts"
echo "-- WeChat pushes a verify ticket to the receiver's authorization event URL, /wechat/platform/$component"
curl -fsS -X POST "$WECHAT_API_BASE/sim/platform/ticket?component_appid=$component" >/dev/null
wait_sql "select exists (select 1 from platform_tickets where component_appid = '$component')" 10
$bin/wxnotify status | sed -n '/^PLATFORM/,/^$/p'
merchants="wx5555555555555551 wx5555555555555552 wx5555555555555553"
echo "-- three merchants onboard: wxnotify platform authorize-url, the merchant scans the page, WeChat pushes 'authorized'"
for m in $merchants; do
  url=$($bin/wxnotify platform authorize-url --component-appid "$component" --redirect-uri https://wash.example.com/platform/authorized)
  [ "$m" = wx5555555555555551 ] && echo "   $url"
  pre_auth_code=$(python3 -c 'import sys, urllib.parse as u; print(u.parse_qs(u.urlsplit(sys.argv[1]).query)["pre_auth_code"][0])' "$url")
  curl -fsS -X POST -H 'content-type: application/json' \
    -d "{\"component_appid\": \"$component\", \"authorizer_appid\": \"$m\", \"pre_auth_code\": \"$pre_auth_code\"}" \
    "$WECHAT_API_BASE/sim/platform/authorize" >/dev/null
  echo "   $m scanned the page with pre-auth code ${pre_auth_code:0:24}..."
done
# The receiver stores each push, answers `success`, then exchanges the code (api_query_auth).
wait_sql "select (select count(*) from authorizers where state = 'active' and access_token is not null) = 3" 15
echo "-- wxnotify platform list: the three are active, with their tokens"
$bin/wxnotify platform list
# merchant_booking N MERCHANT: a paid booking at that merchant (a library template: see above).
merchant_booking() {
  echo "{\"event_id\": \"evt-platform-$1\", \"event_type\": \"booking.paid\", \"app_id\": \"$2\", \"occurred_at\": \"2026-11-22T10:00:00+08:00\", \"openid\": \"oDemoMerchantUser00000000$1\", \"data\": {\"booking_id\": \"B-P$1\", \"service\": \"精洗套餐\", \"store\": \"徐汇店\", \"slot_start\": \"2026-11-22T14:00:00+08:00\", \"plate\": \"沪A12345\", \"price_cents\": 3980}}"
}
show_merchant_messages() {
  curl -fsS "$WECHAT_API_BASE/sim/messages" | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    if m["appid"].startswith("wx555555"):
        print("  from %s  %-38s -> %s  msgid %s" % (m["appid"], m["template_id"], m["touser"], m["msgid"]))'
}
echo "-- a booking at each merchant (booking.paid, app_id = the merchant's account)"
{ merchant_booking 01 wx5555555555555551; merchant_booking 02 wx5555555555555552; merchant_booking 03 wx5555555555555553; } \
  | $bin/wxnotify publish
wait_sql "select (select count(*) from deliveries where event_id like 'evt-platform-%' and status = 'sent') >= 3" 20
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, app_id, template_id, status, wechat_msgid from deliveries where event_id like 'evt-platform-%' order by event_id"
echo "-- messages the simulator accepted from the merchants: each from its own account, with the template id WeChat gave that account"
show_merchant_messages
echo
echo "-- merchant wx5555555555555552 revokes the platform (WeChat pushes 'unauthorized'): its next booking is dead-lettered 'unauthorized', the customer gets nothing"
curl -fsS -X POST -H 'content-type: application/json' -d "{\"component_appid\": \"$component\", \"authorizer_appid\": \"wx5555555555555552\"}" \
  "$WECHAT_API_BASE/sim/platform/revoke" >/dev/null
wait_sql "select (select state from authorizers where authorizer_appid = 'wx5555555555555552') = 'revoked'" 10
merchant_booking 04 wx5555555555555552 | $bin/wxnotify publish
wait_sql "select (select count(*) from deliveries where event_id = 'evt-platform-04' and status = 'dead') >= 1" 20
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, app_id, status, dead_reason, last_error from deliveries where event_id = 'evt-platform-04'"
$bin/wxnotify platform list
echo "-- dead letters (wxnotify dlq list)"
$bin/wxnotify dlq list
echo
echo "-- wx5555555555555552 authorizes again (WeChat pushes 'authorized'); wxnotify dlq replay --reason unauthorized"
curl -fsS -X POST -H 'content-type: application/json' -d "{\"component_appid\": \"$component\", \"authorizer_appid\": \"wx5555555555555552\"}" \
  "$WECHAT_API_BASE/sim/platform/reauthorize" >/dev/null
wait_sql "select (select state = 'active' and access_token is not null from authorizers where authorizer_appid = 'wx5555555555555552')" 15
$bin/wxnotify dlq replay --reason unauthorized
wait_sql "select (select count(*) from deliveries where event_id = 'evt-platform-04' and status = 'sent') >= 1" 20
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, app_id, status, attempts, wechat_msgid from deliveries where event_id = 'evt-platform-04'"
show_merchant_messages
echo
echo "-- the ledger loses merchant wx5555555555555553 (say, an old backup restored): wxnotify platform sync restores it from WeChat's authorizer list, no new scan"
PGPASSWORD=postgres psql -q "$DATABASE_URL" -c "DELETE FROM authorizers WHERE authorizer_appid = 'wx5555555555555553'" >/dev/null
$bin/wxnotify platform sync
$bin/wxnotify platform list
echo "-- the merchants' receipts: WeChat pushed them to the message URL, /wechat/{merchant's appid}, with the platform's token and key"
wait_sql "select (select count(*) from deliveries where event_id like 'evt-platform-%' and status = 'sent' and receipt_status is null) = 0" 10
PGPASSWORD=postgres psql "$DATABASE_URL" -c \
  "select event_id, app_id, status, receipt_status from deliveries where event_id like 'evt-platform-%' order by event_id"
echo
echo "== wxnotify report (views delivery_daily_summary, consent_daily_summary, delivery_failures)"
$bin/wxnotify report
echo "== simulator stats"
curl -fsS "$WECHAT_API_BASE/sim/stats"; echo
echo "(logs: $logs/worker.log, $logs/receiver.log, $logs/sim.log)"
