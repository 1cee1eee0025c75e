#!/usr/bin/env bash
# Density of one host, release build: N hello apps (one route each) applied at once to a
# lattice with one host; the time until all are ready, the host's RSS idle before and after
# (and per app), a breakdown of its memory from /proc/PID/smaps_rollup, then requests spread
# over random apps (wrk with a script that picks an app per request): p50 and p99.
# Usage: bench/density.sh [APPS] (default 100)
set -euo pipefail
apps=${1:-100}
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh >/dev/null
# shellcheck source=../scripts/env.sh
source scripts/env.sh
# shellcheck source=lib.sh
source bench/lib.sh
need curl wrk
if [ -n "${SHOAL_BIN:-}" ]; then unset RUST_BACKTRACE; shoal=$SHOAL_BIN; else build_release; fi
hello=$root/target/guests/wasm32-wasip2/release/hello_http.wasm

work=$(mktemp -d)
pids=()
cleanup() {
  # A host under a profiler (SHOAL_HOST_WRAPPER) gets to write its output first.
  [ -n "${SHOAL_HOST_WRAPPER:-}" ] && [ -n "${host_pid:-}" ] && { kill -TERM "$host_pid"; sleep 5; }
  stop_all "${pids[@]}" "${host_pid:-}" "${nats_pid:-}"
}
trap cleanup EXIT
# The host's own process (under SHOAL_HOST_WRAPPER, the wrapper's child).
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$(host_process "$1")/status"; }
host_process() { pgrep -P "$1" -f "shoal host" | head -1 | grep . || echo "$1"; }
mib() { echo "scale=1; $1 / 1024" | bc; }
nats_port=$(free_port)
registry_port=$(free_port)
http_port=$(free_port)
export SHOAL_NATS=nats://127.0.0.1:$nats_port SHOAL_LATTICE=density SHOAL_LOG=warn
export SHOAL_CACHE_DIR=$work/cache
start_nats
start_registry
"$shoal" scheduler --id s1 --host-timeout 60s >>"$work/scheduler.log" 2>&1 &
pids+=($!)
${SHOAL_HOST_WRAPPER:-} "$shoal" host --id dense --http "127.0.0.1:$http_port" --max-replicas $((apps + 10)) --memory 64Gi \
  >>"$work/host.log" 2>&1 &
host_pid=$!
until "$shoal" get hosts 2>/dev/null | grep -q dense; do sleep 0.1; done
sleep 2
idle_rss=$(rss_kib "$host_pid")

reference=127.0.0.1:$registry_port/density/hello:1.0
"$shoal" push "$hello" "$reference" >/dev/null
for i in $(seq "$apps"); do
  printf 'apiVersion: shoal.dev/v1\nkind: App\nmetadata: {name: app-%s}\nspec:\n  component: %s\n  limits: {memory: 4Mi}\n  routes: [{path: /app-%s}]\n---\n' "$i" "$reference" "$i"
done >"$work/apps.yaml"
started=$(now_ms)
"$shoal" apply -f "$work/apps.yaml" >/dev/null
applied=$(( $(now_ms) - started ))
until [ "$("$shoal" get replicas -o json | grep -c '"phase": "ready"')" = "$apps" ]; do sleep 0.2; done
ready=$(( $(now_ms) - started ))
sleep 3
unused_rss=$(rss_kib "$host_pid")
unused_threads=$(awk '/^Threads:/ { print $2 }' "/proc/$(host_process "$host_pid")/status")
# Tokio's blocking threads (which start replicas) linger 10 s after their last task.
sleep 12
settled_rss=$(rss_kib "$host_pid")
settled_threads=$(awk '/^Threads:/ { print $2 }' "/proc/$(host_process "$host_pid")/status")
[ -n "${SHOAL_BENCH_SMAPS:-}" ] && cp "/proc/$(host_process "$host_pid")/smaps" "$SHOAL_BENCH_SMAPS"
# Every route answers through the host (its routing table has them all).
for i in $(seq "$apps"); do until curl -fs "http://127.0.0.1:$http_port/app-$i" >/dev/null; do sleep 0.05; done; done
sleep 3
apps_rss=$(rss_kib "$host_pid")
grep -E '^(Rss|Pss_Anon|Pss_File|Pss_Shmem|Anonymous|Private_Dirty)' "/proc/$(host_process "$host_pid")/smaps_rollup" >"$work/rollup"

cat >"$work/random.lua" <<LUA
math.randomseed(os.time())
request = function() return wrk.format("GET", "/app-" .. math.random(1, $apps)) end
LUA
wrk -t2 -c32 -d10s --latency -s "$work/random.lua" "http://127.0.0.1:$http_port" >"$work/wrk.txt"
after_rss=$(rss_kib "$host_pid")

printf '\n| %s hello apps on one host | value |\n| --- | --- |\n' "$apps"
printf '| apply (all apps, one request) | %s ms |\n' "$applied"
printf '| apply to all ready | %s ms |\n' "$ready"
printf '| host RSS, no app | %s MiB |\n' "$(mib "$idle_rss")"
printf '| host RSS, %s apps ready, no request yet | %s MiB (%s KiB an app) |\n' "$apps" "$(mib "$unused_rss")" "$(( (unused_rss - idle_rss) / apps ))"
printf '| the same 15 s later (threads %s, were %s) | %s MiB (%s KiB an app) |\n' "$settled_threads" "$unused_threads" "$(mib "$settled_rss")" "$(( (settled_rss - idle_rss) / apps ))"
printf '| host RSS, %s apps idle after one request each | %s MiB (%s KiB an app) |\n' "$apps" "$(mib "$apps_rss")" "$(( (apps_rss - idle_rss) / apps ))"
printf '| host RSS after 10 s of requests over random apps | %s MiB |\n' "$(mib "$after_rss")"
printf '| requests over random apps (wrk -t2 -c32 -d10s) | %s req/s |\n' "$(awk '/Requests\/sec/ { print $2 }' "$work/wrk.txt")"
printf '| p50 / p99 | %s / %s |\n' "$(awk '$1 == "50%" { print $2 }' "$work/wrk.txt")" "$(awk '$1 == "99%" { print $2 }' "$work/wrk.txt")"
printf '| non-2xx responses | %s |\n' "$(awk '/Non-2xx/ { print $4 }' "$work/wrk.txt" | grep . || echo 0)"
echo
echo "smaps_rollup with $apps apps (kB):"
cat "$work/rollup"
