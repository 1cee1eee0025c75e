#!/usr/bin/env bash
# Messages through triggers, release build, one run: Shoal's JetStream and core NATS
# triggers into a no-op wasi:messaging handler against plain nats-py consumers doing the
# same no-op on the same nats-server; p50/p99 of a message and its answer at concurrency
# 1; and how long 2,000 waiting messages take to wake an app at zero and scale it to three
# replicas (bench/triggers.py says what each figure is).
# Usage: bench/triggers.sh [MESSAGES=20000]
set -euo pipefail
count=${1:-20000}
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh >/dev/null
# shellcheck source=../scripts/env.sh
source scripts/env.sh
# shellcheck source=lib.sh
source bench/lib.sh
need curl
"$root/.shoal/tools/venv/bin/pip" install --quiet --disable-pip-version-check nats-py
build_release
component=$root/target/guests/wasm32-wasip2/release/messaging_publisher.wasm

work=$(mktemp -d)
pids=()
cleanup() { stop_all "${pids[@]}" "${nats_pid:-}"; }
trap cleanup EXIT
nats_port=$(free_port)
registry_port=$(free_port)
metrics_port=$(free_port)
export SHOAL_NATS=nats://127.0.0.1:$nats_port SHOAL_LATTICE=triggerbench SHOAL_LOG=warn
export SHOAL_CACHE_DIR=$work/cache
start_nats
start_registry
"$shoal" scheduler --id s1 >"$work/scheduler.log" 2>&1 &
pids+=($!)
"$shoal" host --id h1 --http "127.0.0.1:$(free_port)" --metrics "127.0.0.1:$metrics_port" >"$work/host.log" 2>&1 &
pids+=($!)
reference=127.0.0.1:$registry_port/bench/messaging:1.0
"$shoal" push "$component" "$reference" >/dev/null
cat >"$work/apps.yaml" <<YAML
apiVersion: shoal.dev/v1
kind: App
metadata: {name: sink}
spec:
  component: $reference
  publish: [alerts.>]
  limits: {concurrency: 100}
  triggers:
    - {stream: bench, maxBytes: 1Gi}
    - {subject: "core.*"}
    - {subject: "lat.*"}
---
apiVersion: shoal.dev/v1
kind: App
metadata: {name: scaler}
spec:
  component: $reference
  replicas: 0
  limits: {concurrency: 10}
  triggers: [{stream: scale}]
  autoscale: {min: 0, max: 3, targetPending: 50, window: 6s, scaleDownDelay: 6s}
YAML
for _ in $(seq 100); do "$shoal" apply -f "$work/apps.yaml" >/dev/null 2>&1 && break; sleep 0.2; done
# The sink's replica ready (the host logs at warn: its status says).
ready=
for _ in $(seq 600); do
  "$shoal" get replicas | grep sink | grep -q ready && ready=1 && break
  sleep 0.2
done
[ -n "$ready" ] || { echo "the sink app did not become ready:" >&2; tail -5 "$work/host.log" >&2; exit 1; }
"$root/.shoal/tools/venv/bin/python" bench/triggers.py "nats://127.0.0.1:$nats_port" triggerbench \
  "http://127.0.0.1:$metrics_port/metrics" "$shoal" "$count" | tee "$work/result.json"
"$root/.shoal/tools/venv/bin/python" - "$work/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"JetStream   shoal {r['jetstream_shoal']:>9.0f} msg/s   nats-py {r['jetstream_peer']:>9.0f} msg/s   ratio {r['jetstream_shoal'] / r['jetstream_peer']:.2f}")
print(f"core NATS   shoal {r['core_shoal']:>9.0f} msg/s ({r['core_shoal_handled']} handled)   nats-py {r['core_peer']:>9.0f} msg/s ({r['core_peer_handled']} handled)")
s, p = r['latency_shoal_us'], r['latency_peer_us']
print(f"answer p50/p99  shoal {s[0]:.0f}/{s[1]:.0f} us   nats-py {p[0]:.0f}/{p[1]:.0f} us")
print(f"backlog of 2000 at zero: first replica ready {r['backlog_first_ready_s']} s, three ready {r['backlog_three_ready_s']} s")
PY
