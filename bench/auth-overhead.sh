#!/usr/bin/env bash
# What the secure lattice costs: the same local lattice (shoal up, 2 hosts) secure (the
# default: nats-server in operator mode, every part with its own credential, the CLI through
# the control API) and open (--insecure), in alternating rounds of one run:
#   apply → ready   shoal apply of a 2-replica app until `shoal get apps` shows 2/2 ready
#                   (median of 5; both modes pay the same process starts)
#   forwarded       hello through the host that does not run its only replica (wrk -t2 -c32)
# Usage: bench/auth-overhead.sh [ROUNDS]   (default 2)
set -euo pipefail
rounds=${1:-2}
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh >/dev/null
# shellcheck source=../scripts/env.sh
source scripts/env.sh
# shellcheck source=lib.sh
source bench/lib.sh
need curl wrk
build_release
hello="$root/target/guests/wasm32-wasip2/release/hello_http.wasm"
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

registry_port=$(free_port)
start_registry
reference="127.0.0.1:$registry_port/bench/hello:1.0"
"$shoal" push "$hello" "$reference" >/dev/null 2>&1

manifest() { # name replicas
  printf 'apiVersion: shoal.dev/v1\nkind: App\nmetadata: {name: %s}\nspec:\n  component: %s\n  replicas: %s\n  routes: [{path: /%s}]\n' \
    "$1" "$reference" "$2" "$1"
}

# One lattice in MODE (secure|insecure): prints "apply_ms forwarded_rps".
measure() {
  local mode=$1 round=$2 dir="$work/$1-$2"
  mkdir -p "$dir/cwd"
  local nats_port http_port
  nats_port=$(free_port); http_port=$(free_port)
  local flags=()
  [ "$mode" = insecure ] && flags+=(--insecure)
  (cd "$dir/cwd" && exec "$shoal" up --data-dir "$dir/data" --nats-port "$nats_port" \
     --http "127.0.0.1:$http_port" --hosts 2 "${flags[@]}" >"$dir/up.out" 2>"$dir/up.err") &
  local up=$!
  pids+=("$up")
  export SHOAL_NATS="nats://127.0.0.1:$nats_port"
  until grep -q "host local-2 ingress" "$dir/up.out" 2>/dev/null; do sleep 0.1; done
  local sh=("$shoal")
  cd "$dir/cwd"
  until "${sh[@]}" get hosts 2>/dev/null | grep -q local-2; do sleep 0.1; done
  local times=()
  for i in 1 2 3 4 5; do
    manifest "app-$i" 2 > "$dir/app-$i.yaml"
    local start; start=$(now_ms)
    "${sh[@]}" apply -f "$dir/app-$i.yaml" >/dev/null 2>&1
    until "${sh[@]}" get apps 2>/dev/null | awk -v app="app-$i" '$2 == app && $4 == "2/2" { found = 1 } END { exit !found }'; do :; done
    times+=($(( $(now_ms) - start )))
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
  manifest fw 1 > "$dir/fw.yaml"
  "${sh[@]}" apply -f "$dir/fw.yaml" >/dev/null 2>&1
  until "${sh[@]}" get apps 2>/dev/null | awk '$2 == "fw" && $4 == "1/1" { found = 1 } END { exit !found }'; do sleep 0.1; done
  local owner other
  owner=$("${sh[@]}" get replicas 2>/dev/null | awk '$2 == "fw" { print $4 }')
  if [ "$owner" = local-1 ]; then other=$((http_port + 1)); else other=$http_port; fi
  # Warm, then measure.
  until curl -fs "http://127.0.0.1:$other/fw" >/dev/null; do sleep 0.1; done
  wrk -t2 -c32 -d2s "http://127.0.0.1:$other/fw" >/dev/null
  local rps
  rps=$(wrk -t2 -c32 -d10s "http://127.0.0.1:$other/fw" | awk '/Requests\/sec/ { print $2 }')
  cd "$root"
  kill -INT "$up"; wait "$up" 2>/dev/null || true
  unset SHOAL_NATS
  echo "$median $rps"
}

printf '%-6s %-9s %14s %16s\n' round mode "apply→ready" "forwarded req/s"
declare -A apply rps
for round in $(seq 1 "$rounds"); do
  for mode in insecure secure; do
    read -r ms r < <(measure "$mode" "$round")
    printf '%-6s %-9s %11s ms %16s\n' "$round" "$mode" "$ms" "$r"
    apply[$mode]="${apply[$mode]:-} $ms"
    rps[$mode]="${rps[$mode]:-} $r"
  done
done
mean() { echo "$1" | tr ' ' '\n' | awk 'NF { sum += $1; n++ } END { printf "%.1f", sum / n }'; }
a_in=$(mean "${apply[insecure]}"); a_se=$(mean "${apply[secure]}")
r_in=$(mean "${rps[insecure]}"); r_se=$(mean "${rps[secure]}")
echo
echo "apply→ready: insecure $a_in ms, secure $a_se ms: secure/insecure $(awk -v a="$a_se" -v b="$a_in" 'BEGIN { printf "%.2f", a / b }')"
echo "forwarded:   insecure $r_in req/s, secure $r_se req/s: secure/insecure $(awk -v a="$r_se" -v b="$r_in" 'BEGIN { printf "%.2f", a / b }')"
