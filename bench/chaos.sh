#!/usr/bin/env bash
# Chaos: a local lattice (one nats-server, two schedulers, three hosts, three apps) under a
# steady load through every host, while hosts, schedulers and the nats-server are killed
# with SIGKILL and restarted at random for a bounded time. At the end every app must be at
# its desired state and nothing applied may be lost.
# Reports requests sent and failed (per second of the run), each kill, and the longest
# recovery: the longest stretch of seconds in which some request failed.
# Usage: bench/chaos.sh [SECONDS=60] [SEED]
# Everything listens on loopback; every process is stopped at the end.
set -euo pipefail
duration=${1:-60}
seed=${2:-$RANDOM}
RANDOM=$seed
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh >/dev/null
# shellcheck source=../scripts/env.sh
source scripts/env.sh
# shellcheck source=lib.sh
source bench/lib.sh
need curl
build_release
hello=$root/target/guests/wasm32-wasip2/release/hello_http.wasm

work=$(mktemp -d)
pids=()
declare -A scheduler_pid host_pid host_url
cleanup() { stop_all "${pids[@]}" "${host_pid[@]}" "${scheduler_pid[@]}" "${nats_pid:-}"; }
trap cleanup EXIT

nats_port=$(free_port)
registry_port=$(free_port)
export SHOAL_NATS=nats://127.0.0.1:$nats_port SHOAL_LATTICE=chaos SHOAL_LOG=warn
export SHOAL_CACHE_DIR=$work/cache

start_nats
start_registry

start_scheduler() {
  "$shoal" scheduler --id "$1" --host-timeout 3s >>"$work/$1.log" 2>&1 &
  scheduler_pid[$1]=$!
  disown "${scheduler_pid[$1]}"
}
start_host() {
  local port=${host_port[$1]}
  "$shoal" host --id "$1" --heartbeat 1s --http "127.0.0.1:$port" --cache-dir "$work/cache-$1" >>"$work/$1.log" 2>&1 &
  host_pid[$1]=$!
  disown "${host_pid[$1]}"
  host_url[$1]=http://127.0.0.1:$port
}
declare -A host_port
for id in h1 h2 h3; do host_port[$id]=$(free_port); done
start_scheduler s1
start_scheduler s2
for id in h1 h2 h3; do start_host "$id"; done

reference=127.0.0.1:$registry_port/chaos/hello:1.0
"$shoal" push "$hello" "$reference" >/dev/null 2>&1
for app in alpha beta gamma; do
  cat >"$work/$app.yaml" <<YAML
apiVersion: shoal.dev/v1
kind: App
metadata: {name: $app}
spec:
  component: $reference
  replicas: 2
  routes: [{path: /$app}]
YAML
  "$shoal" apply -f "$work/$app.yaml" >/dev/null
done

ready() { # every app at 2 ready replicas
  local json
  json=$("$shoal" get apps -o json 2>/dev/null) || return 1
  python3 -c '
import json, sys
apps = {a["name"]: a for a in json.load(sys.stdin)}
ok = all(n in apps and (apps[n].get("status") or {}).get("ready", 0) >= 2 for n in ("alpha", "beta", "gamma"))
sys.exit(0 if ok else 1)' <<<"$json"
}
for _ in $(seq 600); do ready && break; sleep 0.1; done
ready || { echo "the lattice did not come up; logs in $work" >&2; exit 1; }

# Steady load: one client per host, each asking for every app in turn; one line per request.
load() {
  local id=$1
  while [ -e "$work/running" ]; do
    for app in alpha beta gamma; do
      code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "${host_url[$id]}/$app" || true)
      echo "$(date +%s) $id $app $code"
    done
  done >>"$work/requests"
}
touch "$work/running"
for id in h1 h2 h3; do load "$id" & done

begin=$(date +%s)
echo "chaos for ${duration}s (seed $seed): kill -9 and restart of hosts, schedulers and nats-server"
while [ $(( $(date +%s) - begin )) -lt "$duration" ]; do
  sleep $(( 3 + RANDOM % 4 ))
  case $(( RANDOM % 5 )) in
    0|1) victim=h$(( 1 + RANDOM % 3 )); kill -9 "${host_pid[$victim]}" 2>/dev/null || true
         sleep $(( 1 + RANDOM % 3 )); start_host "$victim" ;;
    2|3) victim=s$(( 1 + RANDOM % 2 )); kill -9 "${scheduler_pid[$victim]}" 2>/dev/null || true
         sleep $(( 1 + RANDOM % 3 )); start_scheduler "$victim" ;;
    4)   victim=nats-server; kill -9 "$nats_pid" 2>/dev/null || true
         sleep $(( 1 + RANDOM % 3 )); start_nats ;;
  esac
  echo "  +$(( $(date +%s) - begin ))s killed and restarted $victim"
done
settle_start=$(date +%s)
for _ in $(seq 600); do ready && break; sleep 0.1; done
ready && converged=yes || converged=no
settled=$(( $(date +%s) - settle_start ))
rm -f "$work/running"
wait_jobs=$(jobs -p)
sleep 6

applied=$("$shoal" get apps -o json | python3 -c 'import json,sys; print(" ".join(sorted(a["name"] for a in json.load(sys.stdin))))')
python3 - "$work/requests" "$begin" <<'PY'
import sys, collections
path, begin = sys.argv[1], int(sys.argv[2])
sent = failed = 0
failing_seconds = collections.Counter()
for line in open(path):
    parts = line.split()
    if len(parts) != 4:
        continue
    sent += 1
    if parts[3] != "200":
        failed += 1
        failing_seconds[int(parts[0]) - begin] += 1
longest = run = 0
previous = None
for second in sorted(failing_seconds):
    run = run + 1 if previous is not None and second == previous + 1 else 1
    longest = max(longest, run)
    previous = second
print(f"requests: {sent} sent, {failed} failed ({100.0 * failed / max(sent, 1):.2f}%)")
if failing_seconds:
    print("failures by second of the run: " + ", ".join(f"+{s}s:{n}" for s, n in sorted(failing_seconds.items())))
print(f"longest recovery (consecutive seconds with a failure): {longest}s")
PY
echo "every app at its desired state afterwards: $converged (after ${settled}s)"
echo "apps in the lattice: $applied"
[ "$converged" = yes ] && [ "$applied" = "alpha beta gamma" ]
