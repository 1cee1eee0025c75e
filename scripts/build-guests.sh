#!/usr/bin/env bash
# Builds the guest components in examples/ for wasm32-wasip2 into target/guests/.
set -euo pipefail
cd "$(dirname "$0")/../examples"
cargo build --release --quiet
ls ../target/guests/wasm32-wasip2/release/*.wasm
