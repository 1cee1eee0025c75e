#!/usr/bin/env bash
# One command for the benchmarks: builds release binaries and guests, installs wrk and the
# wasmtime CLI matching the embedded wasmtime if they are missing, then runs
#   serve:   shoal run vs wasmtime serve vs native axum under wrk (shoal-bench)
#   lattice: placement throughput (cargo bench), apply-to-ready, host-loss-to-ready and
#            forwarded vs local (on shared CPUs, then each host held to its own CPU quota by
#            a cgroup, which needs root) on a local lattice (lattice-bench), and the
#            scheduler with 10,000 simulated hosts and 10,000 apps (sim-hosts; SIM_HOSTS,
#            SIM_APPS to change)
#   density: 1,000 hello apps on one host (bench/density.sh; DENSITY_APPS to change)
# Usage: bench/run.sh [serve|lattice|density|all] [extra shoal-bench arguments, e.g. --duration 5]
set -euo pipefail
what=all
case "${1:-}" in serve|lattice|density|all) what=$1; shift ;; esac
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
# shellcheck source=../scripts/env.sh
source scripts/env.sh

# shellcheck source=lib.sh
source bench/lib.sh
need wrk
# The wasmtime version Shoal embeds, from Cargo.lock.
version="$(awk '/^name = "wasmtime"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)"
wasmtime="$root/.shoal/tools/bin/wasmtime"
if [ "$what" != lattice ] && [ "$what" != density ] && ! "$wasmtime" --version 2>/dev/null | grep -q "wasmtime $version"; then
    echo "installing wasmtime-cli $version (a long compile, once)" >&2
    cargo install "wasmtime-cli@$version" --locked --root "$root/.shoal/tools"
fi

build_release shoal-bench
guests=target/guests/wasm32-wasip2/release
if [ "$what" = serve ] || [ "$what" = all ]; then
  target/release/shoal-bench \
    --shoal target/release/shoal \
    --wasmtime "$wasmtime" \
    --native target/release/native-hello \
    --guests "$guests" \
    "$@"
fi
if [ "$what" = density ] || [ "$what" = all ]; then
  SHOAL_BIN=$root/target/release/shoal bench/density.sh "${DENSITY_APPS:-1000}"
fi
if [ "$what" = lattice ] || [ "$what" = all ]; then
  echo
  cargo bench --quiet -p shoal-scheduler --bench placement
  echo
  target/release/lattice-bench --shoal target/release/shoal --component "$guests/hello_http.wasm" --greeter "$guests/greeter.wasm" --fixtures "$guests/http_fixtures.wasm"
  target/release/sim-hosts --shoal target/release/shoal --hosts "${SIM_HOSTS:-10000}" --apps "${SIM_APPS:-10000}"
fi
