#!/usr/bin/env bash
# Where the CPU goes during a benchmark: samples every process's CPU time once a second and prints,
# per second, the CPU used by each group (RabbitMQ, Postgres, the wxnotify worker, the bench binary
# with its simulator and publisher, everything else), in % of one core.
#
#   benches/cpu_by_process.sh cargo bench --bench throughput
#
# The command runs in the foreground; its output is kept, the samples go to stderr as TSV lines:
#   cpu<TAB>elapsed_s<TAB>rabbitmq<TAB>postgres<TAB>worker<TAB>bench<TAB>other
set -euo pipefail
hz=$(getconf CLK_TCK)

snapshot() {
  # comm and utime+stime (fields 14, 15 after the parenthesised comm) of every process.
  for stat in /proc/[0-9]*/stat; do
    read -r line < "$stat" 2>/dev/null || continue
    local comm="${line#*(}"; comm="${comm%%)*}"
    local rest="${line##*) }"
    # shellcheck disable=SC2086
    set -- $rest
    printf '%s %s %s\n' "${stat//[^0-9]/}" "$comm" "$(( ${12} + ${13} ))"
  done
}

group() {
  case "$1" in
    beam.smp|erl_child_setup|epmd|inet_gethost) echo rabbitmq ;;
    postgres) echo postgres ;;
    wxnotify) echo worker ;;
    throughput-*|latency-*|schedule-*|prune-*|receiver-*|wechat-sim) echo bench ;;
    *) echo other ;;
  esac
}

sampler() {
  local start prev now
  start=$(date +%s.%N)
  declare -A last
  while sleep 1; do
    declare -A used=([rabbitmq]=0 [postgres]=0 [worker]=0 [bench]=0 [other]=0)
    while read -r pid comm ticks; do
      local key="$pid:$comm"
      if [ -n "${last[$key]:-}" ]; then
        local g; g=$(group "$comm")
        used[$g]=$(( ${used[$g]} + ticks - ${last[$key]} ))
      fi
      last[$key]=$ticks
    done < <(snapshot)
    now=$(date +%s.%N)
    printf 'cpu\t%.0f\t%d\t%d\t%d\t%d\t%d\n' "$(echo "$now - $start" | bc)" \
      $(( used[rabbitmq] * 100 / hz )) $(( used[postgres] * 100 / hz )) \
      $(( used[worker] * 100 / hz )) $(( used[bench] * 100 / hz )) $(( used[other] * 100 / hz )) >&2
  done
}

sampler &
sampler_pid=$!
trap 'kill $sampler_pid 2>/dev/null || true' EXIT
"$@"
