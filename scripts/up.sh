#!/usr/bin/env bash
# Shoal's main job: a local lattice with the example app serving. Starts a local OCI registry,
# pushes the example component to it, then runs `shoal up --example` (nats-server with
# JetStream, a scheduler and a host) until ctrl-c, and stops everything.
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

# `shoal` by name from any shell: a link in cargo's bin directory (on PATH wherever rustup
# installed Rust) to the binary just built, so a rebuild is picked up. A `shoal` there that
# is not such a link (cargo install) is left alone.
bin_dir=${CARGO_HOME:-$HOME/.cargo}/bin
link=$bin_dir/shoal
if [ -L "$link" ] || [ ! -e "$link" ]; then
  mkdir -p "$bin_dir"
  ln -sfn "$(pwd)/$shoal" "$link"
  echo "==> shoal is on your PATH: $link links to $(pwd)/$shoal"
  case ":$PATH:" in
    *":$bin_dir:"*) ;;
    *) echo "    (add $bin_dir to PATH to run it by name)" ;;
  esac
  export PATH="$bin_dir:$PATH"
else
  echo "==> $link is another shoal (not a link); run this one as $(pwd)/$shoal"
fi

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
manifest=examples/apps/hello.yaml
if [ "$port" != 5000 ]; then
  manifest=.shoal/hello.yaml
  sed "s/localhost:5000/$registry/" examples/apps/hello.yaml > "$manifest"
fi

echo "==> shoal up --example $manifest"
"$shoal" up --example "$manifest" --data-dir .shoal/nats &
up=$!
trap 'kill -TERM "$up" 2>/dev/null' INT TERM
wait "$up" || true
wait "$up" 2>/dev/null || true
