#!/usr/bin/env bash
# Autoscaling, release build, on one machine:
#  1. cold requests: an app scaled to zero (`autoscale.min: 0`), then one request; the time
#     to its response (curl's time_total), asked at the host the app wakes on and through
#     another host (the app may run only on the first), with the compiled-code cache warm
#     and emptied; median and max of ROUNDS (default 5);
#  2. scaling up from one replica under a closed-loop load of 16 clients (each replica
#     takes 2 requests at once, 50 ms each): p99 second by second, and when it stays
#     under 150 ms.
# Usage: bench/autoscale.sh [ROUNDS]
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
build_release shoal-bench
guests=$root/target/guests/wasm32-wasip2/release

work=$(mktemp -d)
pids=()
cleanup() { stop_all "${pids[@]}" "${nats_pid:-}"; }
trap cleanup EXIT
nats_port=$(free_port)
registry_port=$(free_port)
port_a=$(free_port)
port_b=$(free_port)
export SHOAL_NATS=nats://127.0.0.1:$nats_port SHOAL_LATTICE=autoscale SHOAL_LOG=warn
export SHOAL_CACHE_DIR=$work/cache
start_nats
start_registry
"$shoal" scheduler --id s1 >>"$work/scheduler.log" 2>&1 &
pids+=($!)
"$shoal" host --id a --label role=run --http "127.0.0.1:$port_a" >>"$work/a.log" 2>&1 &
pids+=($!)
"$shoal" host --id b --http "127.0.0.1:$port_b" >>"$work/b.log" 2>&1 &
pids+=($!)
until [ "$("$shoal" get hosts -o json 2>/dev/null | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))' 2>/dev/null)" = 2 ]; do sleep 0.1; done

hello=127.0.0.1:$registry_port/autoscale/hello:1.0
fixtures=127.0.0.1:$registry_port/autoscale/fixtures:1.0
"$shoal" push "$guests/hello_http.wasm" "$hello" >/dev/null
"$shoal" push "$guests/http_fixtures.wasm" "$fixtures" >/dev/null
cat >"$work/apps.yaml" <<YAML
apiVersion: shoal.dev/v1
kind: App
metadata: {name: near}
spec:
  component: $hello
  routes: [{path: /near}]
  autoscale: {min: 0, max: 1, window: 6s, scaleDownDelay: 1s}
---
apiVersion: shoal.dev/v1
kind: App
metadata: {name: far}
spec:
  component: $hello
  routes: [{path: /far}]
  placement: {requires: {role: run}}
  autoscale: {min: 0, max: 1, window: 6s, scaleDownDelay: 1s}
YAML
"$shoal" apply -f "$work/apps.yaml" >/dev/null

# Waits until APP has no replica and the hosts have had a moment to see its endpoints go.
at_zero() {
  until "$shoal" get apps -o json | python3 -c '
import json, sys
app = [a for a in json.load(sys.stdin) if a["name"] == sys.argv[1]][0]
sys.exit(0 if app["spec"]["replicas"] == 0 else 1)' "$1" \
    && "$shoal" get replicas -o json | python3 -c '
import json, sys
sys.exit(1 if any(r["app"] == sys.argv[1] for r in json.load(sys.stdin)) else 0)' "$1"; do
    sleep 0.2
  done
  sleep 1
}
# One cold request: prints its time in ms.
cold() {
  local app=$1 port=$2 empty=$3
  at_zero "$app"
  [ "$empty" = yes ] && rm -f "$SHOAL_CACHE_DIR"/compiled/*
  curl -fs -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/$app" | awk '{ printf "%d\n", $1 * 1000 }'
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
# Warm the compiled cache and check both routes answer.
curl -fs "http://127.0.0.1:$port_a/near" >/dev/null
curl -fs "http://127.0.0.1:$port_b/far" >/dev/null

echo "cold request: app at zero -> first response (ms, $rounds rounds)"
printf '%-44s %8s %8s\n' "" median max
for case in "near $port_a no at the host it wakes on, compiled cache warm" \
            "far $port_b no through another host, compiled cache warm" \
            "near $port_a yes at the host it wakes on, compiled cache empty" \
            "far $port_b yes through another host, compiled cache empty"; do
  read -r app port empty label <<<"$case"
  times=()
  for _ in $(seq "$rounds"); do times+=("$(cold "$app" "$port" "$empty")"); done
  printf '%-44s %8s %8s\n' "$label" "$(printf '%s\n' "${times[@]}" | median)" "$(printf '%s\n' "${times[@]}" | sort -n | tail -1)"
done

cat >"$work/busy.yaml" <<YAML
apiVersion: shoal.dev/v1
kind: App
metadata: {name: busy}
spec:
  component: $fixtures
  routes: [{path: /slow}]
  placement: {requires: {role: run}}
  limits: {concurrency: 2}
  autoscale: {min: 1, max: 8, targetConcurrency: 2, window: 10s, scaleDownDelay: 30s}
YAML
"$shoal" apply -f "$work/busy.yaml" >/dev/null
until curl -fs "http://127.0.0.1:$port_a/slow?ms=1" >/dev/null; do sleep 0.1; done
sleep 3
echo
echo "scale up from 1 replica: 16 clients, 50 ms a request, 2 at once a replica"
target/release/scale-up "http://127.0.0.1:$port_a/slow?ms=50" 16 20 150
"$shoal" events --app busy 2>/dev/null | grep Scaled || true
