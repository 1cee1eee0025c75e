#!/usr/bin/env bash
# Shoal's main job, today: a local OCI registry with the example component pushed to it and
# inspected. Runs until ctrl-c, then stops the registry. (This grows into `shoal up`: a whole
# local lattice, as the runtime and the lattice land.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh

port=${SHOAL_REGISTRY_PORT:-5000}
data=.shoal/registry
registry=localhost:$port
reference=$registry/examples/hello:1.0

echo "==> building shoal and the example component"
cargo build --quiet --bin shoal
scripts/build-guests.sh >/dev/null
shoal=target/debug/shoal
hello=target/guests/wasm32-wasip2/release/hello_http.wasm

answers() { curl -fsS -o /dev/null "http://$registry/v2/" 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

pid=
if answers; then
  echo "==> a registry already answers on $registry; using it"
else
  mkdir -p "$data"
  cat > "$data/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $(pwd)/$data/storage}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$port
YAML
  registry_bin=$(command -v docker-registry || command -v registry)
  "$registry_bin" serve "$data/config.yml" >"$data/registry.log" 2>&1 &
  pid=$!
  trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; echo; echo "registry stopped"' EXIT
  trap 'exit 0' INT TERM
  for _ in $(seq 100); do answers && break; sleep 0.1; done
  answers || { echo "the registry did not start; see $data/registry.log" >&2; exit 1; }
  echo "==> registry serving on $registry (storage in $data)"
fi

echo "==> shoal push $hello $reference"
"$shoal" push "$hello" "$reference"
echo "==> shoal inspect $reference"
"$shoal" inspect "$reference"

cat <<EOT

Try it yourself:
  $shoal pull $reference -o hello.wasm
  $shoal inspect $reference -o json
EOT
if [ -n "$pid" ]; then
  echo "The registry keeps running until ctrl-c."
  wait "$pid"
fi
