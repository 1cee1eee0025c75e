#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test against real
# registries (and later nats-servers) that the tests start on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
# A CI build starts clean and runs once: incremental caches would only take disk (gigabytes)
# and time.
if [[ -n "${CI:-}" ]]; then
  export CARGO_INCREMENTAL=0
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
(cd examples && cargo fmt --all -- --check)
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
(cd examples && cargo clippy --quiet -- -D warnings)
echo "==> guest components"
scripts/build-guests.sh >/dev/null
echo "==> the guest SDK's examples compile"
(cd examples && cargo test --doc -p shoal-sdk --quiet)
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
