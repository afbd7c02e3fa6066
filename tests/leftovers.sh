#!/usr/bin/env bash
# Counts what test runs left on the shared services (scripts/services.sh): queues and exchanges
# named `t-p<pid>-…` (also `chaos-p<pid>-…`, `cluster-p<pid>-…`) and databases `wxn_test_p<pid>_…`.
#   tests/leftovers.sh PID    those of the test process PID (e.g. one you killed)
#   tests/leftovers.sh        those of every test process that is gone (what the next test binary sweeps)
#   tests/leftovers.sh demo [SECS]
#                             runs the slow tokens:: and schedule:: tests, SIGKILLs the test binary
#                             after SECS (20) seconds, counts its leftovers, runs one quick test
#                             (whose first TestEnv sweeps), counts again: `total 0`
# Prints `queues N exchanges N databases N total N`. Lists with rabbitmqctl (as root, like
# scripts/services.sh) or else the management API; Postgres as postgres/postgres on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = demo ]; then
  bin=$(cargo test --test it --no-run 2>&1 | grep -o 'target/debug/deps/it-[0-9a-f]*' | head -1)
  "$bin" tokens:: schedule:: --test-threads 2 >/dev/null 2>&1 &
  killed=$!
  sleep "${2:-20}"
  kill -KILL "$killed"
  wait "$killed" 2>/dev/null || true
  echo "killed test binary $killed; its leftovers: $("$0" "$killed")"
  "$bin" leftovers:: --test-threads 2 2>&1 | grep -E '^swept|^test result'
  echo "after the next run: $("$0" "$killed")"
  exit 0
fi
pid="${1:-}"

names() { # queues|exchanges
  if rabbitmqctl -q "list_$1" name 2>/dev/null; then return; fi
  curl -fsS -u guest:guest "http://127.0.0.1:15672/api/$1/%2f?columns=name" | grep -o '"name":"[^"]*"' | cut -d'"' -f4
}
databases() {
  PGPASSWORD="${PGPASSWORD:-postgres}" psql -h 127.0.0.1 -U postgres -d postgres -qAt \
    -c "select datname from pg_database where datname like 'wxn\\_test\\_p%'"
}
# Keeps the names of `$pid`, or of processes that are gone.
mine() {
  local name p
  while read -r name; do
    p=$(sed -nE 's/^(t|chaos|cluster)-p([0-9]+)-.*/\2/p; s/^wxn_test_p([0-9]+)_.*/\1/p' <<<"$name")
    [ -n "$p" ] || continue
    if [ -n "$pid" ]; then [ "$p" = "$pid" ] && echo "$name"
    elif [ ! -d "/proc/$p" ]; then echo "$name"; fi
  done
}
q=$(names queues | mine | wc -l)
x=$(names exchanges | mine | wc -l)
d=$(databases | mine | wc -l)
echo "queues $q exchanges $x databases $d total $((q + x + d))"
