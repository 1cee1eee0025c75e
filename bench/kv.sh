#!/usr/bin/env bash
# Key-value cost per request, release build: one host serving the kv-counter component
# under wrk, `/open` (opens the app's store, no read or write) against `/rw` (one
# wasi:keyvalue read and one write per request, to JetStream KV on the same machine), in
# alternating rounds; prints req/s of each and their ratio.
# Usage: bench/kv.sh [ROUNDS=2] [SECONDS=10]
set -euo pipefail
rounds=${1:-2}
seconds=${2:-10}
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh >/dev/null
# shellcheck source=../scripts/env.sh
source scripts/env.sh
# shellcheck source=lib.sh
source bench/lib.sh
need curl wrk
build_release
counter=$root/target/guests/wasm32-wasip2/release/kv_counter.wasm

work=$(mktemp -d)
pids=()
cleanup() { stop_all "${pids[@]}" "${nats_pid:-}"; }
trap cleanup EXIT
nats_port=$(free_port)
registry_port=$(free_port)
http_port=$(free_port)
export SHOAL_NATS=nats://127.0.0.1:$nats_port SHOAL_LATTICE=kvbench SHOAL_LOG=warn
export SHOAL_CACHE_DIR=$work/cache
start_nats
start_registry
"$shoal" scheduler --id s1 >"$work/scheduler.log" 2>&1 &
pids+=($!)
"$shoal" host --id h1 --http "127.0.0.1:$http_port" >"$work/host.log" 2>&1 &
pids+=($!)
reference=127.0.0.1:$registry_port/bench/kv-counter:1.0
"$shoal" push "$counter" "$reference" >/dev/null
cat >"$work/app.yaml" <<YAML
apiVersion: shoal.dev/v1
kind: App
metadata: {name: counter}
spec:
  component: $reference
  routes: [{path: /counter}]
  keyValue: [{name: default}]
YAML
for _ in $(seq 100); do "$shoal" apply -f "$work/app.yaml" >/dev/null 2>&1 && break; sleep 0.2; done
base=http://127.0.0.1:$http_port/counter
for _ in $(seq 300); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/rw")" = 200 ] && break; sleep 0.1; done
rps() { wrk -t2 -c16 -d"${seconds}s" "$1" | awk '/Requests\/sec/ { print $2 }'; }
printf '%-6s %12s %12s %7s\n' round open rw ratio
for round in $(seq "$rounds"); do
  open=$(rps "$base/open")
  rw=$(rps "$base/rw")
  awk -v r="$round" -v o="$open" -v w="$rw" 'BEGIN { printf "%-6s %12s %12s %7.2f\n", r, o, w, w / o }'
done
