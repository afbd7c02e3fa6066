# Helpers shared by scripts/services.sh, scripts/cluster.sh and scripts/tls-services.sh; sourced
# (`. "$(dirname "$0")/lib.sh"`), not run. A script may set LOG_TAG before sourcing (default: its
# name without .sh) to prefix its log lines.

LOG_TAG="${LOG_TAG:-$(basename "$0" .sh)}"

# A progress line on stderr (stdout stays for what a script prints to be read).
log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }

# Runs a command as root (directly when we are root, else through sudo). `as_root -u USER cmd…`
# runs it as USER instead: runuser when we are root (no password, no PAM session), else sudo -u.
as_root() {
  if [ "${1:-}" = "-u" ]; then
    local user="${2:?as_root -u needs a user}"
    shift 2
    if [ "$(id -u)" -eq 0 ]; then runuser -u "$user" -- "$@"; else sudo -u "$user" -- "$@"; fi
  elif [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    sudo "$@"
  fi
}

# psql as the postgres superuser over the local socket, stopping at the first error, unaligned
# and tuples only (`psql_root -p 5433 -c "select 1"`). Run from / so that psql, running as
# postgres, does not complain about a working directory it cannot read.
psql_root() { (cd / && as_root -u postgres psql -v ON_ERROR_STOP=1 -qAt "$@"); }

# Whether PostgreSQL cluster VERSION/NAME is online.
pg_online() { pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2" "$4}' | grep -q "^$1 $2 online"; }

# Runs a command (its output discarded) until it succeeds, at most TRIES times PAUSE seconds apart:
# `wait_for 120 1 rabbitmqctl -q ping`. Fails when it never did.
wait_for() {
  local tries="$1" pause="$2" _
  shift 2
  for _ in $(seq 1 "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep "$pause"
  done
  return 1
}

# Runs a command, showing its output only when it fails.
quietly() { local out; out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }; }

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
