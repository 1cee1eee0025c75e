#!/usr/bin/env bash
# Footprint of an edge host, built with the `edge` profile (PROFILE=release to compare):
# binary size, `shoal host` startup to ingress listening and to joined, idle RSS with no
# app, with one hello replica and with ten apps, and an offline restart (NATS stopped, host
# killed with SIGKILL and started again) to the first 200 from its saved state. Median of
# ROUNDS (default 5) where timed.
# Usage: [PROFILE=release] bench/footprint.sh [ROUNDS]
set -euo pipefail
rounds=${1:-5}
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh >/dev/null
# shellcheck source=../scripts/env.sh
source scripts/env.sh
# shellcheck source=lib.sh
source bench/lib.sh
need curl
PROFILE=${PROFILE:-edge}
build_release
hello=$root/target/guests/wasm32-wasip2/release/hello_http.wasm

work=$(mktemp -d)
pids=()
cleanup() { stop_all "${pids[@]}" "${host_pid:-}" "${nats_pid:-}"; }
trap cleanup EXIT
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
nats_port=$(free_port)
registry_port=$(free_port)
http_port=$(free_port)
export SHOAL_NATS=nats://127.0.0.1:$nats_port SHOAL_LATTICE=footprint SHOAL_LOG=warn
export SHOAL_CACHE_DIR=$work/cache

start_nats
start_registry
"$shoal" scheduler --id s1 --host-timeout 60s >>"$work/scheduler.log" 2>&1 &
pids+=($!)

# Starts the host; sets listening_ms and joined_ms (to "ingress listening" and "joined").
start_host() {
  local started
  : >"$work/host.out"; : >"$work/host.log"
  started=$(now_ms)
  SHOAL_LOG=info "$shoal" host --id edge --http "127.0.0.1:$http_port" >"$work/host.out" 2>"$work/host.log" &
  host_pid=$!
  until grep -q "ingress listening" "$work/host.out" 2>/dev/null; do sleep 0.005; done
  listening_ms=$(( $(now_ms) - started ))
  until grep -q "host joined the lattice" "$work/host.log" 2>/dev/null; do sleep 0.005; done
  joined_ms=$(( $(now_ms) - started ))
}
stop_host() { kill -TERM "$host_pid"; wait "$host_pid" 2>/dev/null || true; host_pid=; }

listening=() joined=()
for _ in $(seq "$rounds"); do
  start_host
  listening+=("$listening_ms"); joined+=("$joined_ms")
  stop_host
done
start_host
sleep 3
idle_rss=$(rss_kib "$host_pid")

reference=127.0.0.1:$registry_port/footprint/hello:1.0
"$shoal" push "$hello" "$reference" >/dev/null
cat >"$work/hello.yaml" <<YAML
apiVersion: shoal.dev/v1
kind: App
metadata: {name: hello}
spec:
  component: $reference
  routes: [{path: /}]
YAML
"$shoal" apply -f "$work/hello.yaml" >/dev/null
until curl -fs "http://127.0.0.1:$http_port/" >/dev/null; do sleep 0.05; done
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$http_port/" >/dev/null; done
sleep 3
one_app_rss=$(rss_kib "$host_pid")

# Nine more apps of their own (each its own replica and route), 50 requests each.
for n in $(seq 2 10); do
  sed -e "s/name: hello/name: hello-$n/" -e "s|path: /}|path: /app-$n}|" "$work/hello.yaml" >"$work/hello-$n.yaml"
  "$shoal" apply -f "$work/hello-$n.yaml" >/dev/null
done
for n in $(seq 2 10); do
  until curl -fs "http://127.0.0.1:$http_port/app-$n" >/dev/null; do sleep 0.05; done
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$http_port/app-$n" >/dev/null; done
done
sleep 3
ten_apps_rss=$(rss_kib "$host_pid")
for n in $(seq 2 10); do "$shoal" delete app "hello-$n" >/dev/null; done
# The offline restart below serves the one app: wait until the others are gone and saved.
while "$shoal" get replicas | grep -Eq 'hello-(10|[2-9])\b'; do sleep 0.1; done
sleep 2

# Offline restart: NATS gone, host killed, started again: time to the first 200.
until [ -s "$SHOAL_CACHE_DIR/hosts/edge/state.json" ]; do sleep 0.05; done
kill -TERM "$nats_pid"
while kill -0 "$nats_pid" 2>/dev/null; do sleep 0.05; done
offline=()
for _ in $(seq "$rounds"); do
  kill -9 "$host_pid"; wait "$host_pid" 2>/dev/null || true
  started=$(now_ms)
  "$shoal" host --id edge --http "127.0.0.1:$http_port" >/dev/null 2>&1 &
  host_pid=$!
  until curl -fs "http://127.0.0.1:$http_port/" >/dev/null 2>&1; do sleep 0.005; done
  offline+=($(( $(now_ms) - started )))
done
offline_rss=$(rss_kib "$host_pid")

size=$(stat -c %s "$shoal")
printf '\n| shoal host, %s profile, %s | value |\n| --- | --- |\n' "$PROFILE" "$(uname -m)"
printf '| binary size | %.1f MiB (%s bytes) |\n' "$(echo "$size / 1048576" | bc -l)" "$size"
printf '| start to ingress listening (median of %s) | %s ms |\n' "$rounds" "$(printf '%s\n' "${listening[@]}" | median)"
printf '| start to joined the lattice (median of %s) | %s ms |\n' "$rounds" "$(printf '%s\n' "${joined[@]}" | median)"
printf '| idle RSS, no app | %.1f MiB |\n' "$(echo "$idle_rss / 1024" | bc -l)"
printf '| RSS, one hello replica after 200 requests | %.1f MiB |\n' "$(echo "$one_app_rss / 1024" | bc -l)"
printf '| RSS, ten hello apps after 50 requests each | %.1f MiB |\n' "$(echo "$ten_apps_rss / 1024" | bc -l)"
printf '| offline restart (NATS down, kill -9) to first 200 (median of %s) | %s ms |\n' "$rounds" "$(printf '%s\n' "${offline[@]}" | median)"
printf '| RSS serving offline | %.1f MiB |\n' "$(echo "$offline_rss / 1024" | bc -l)"
