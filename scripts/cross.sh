#!/usr/bin/env bash
# Cross-builds `shoal` for another architecture with Debian's cross toolchain and runs the
# tests/arm64.rs end-to-end test with that binary under qemu-user. One command:
#   scripts/cross.sh aarch64
# Installs what it needs (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user, the Rust
# target) and is idempotent. Not part of CI: the cross build alone takes longer than CI may.
# PROFILE=edge builds the profile meant for small devices (default: release).
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:-aarch64}"
if [ "$arch" != aarch64 ]; then
  echo "only aarch64 is supported" >&2
  exit 64
fi
target=aarch64-unknown-linux-gnu
scripts/setup.sh
source scripts/env.sh

missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

profile=${PROFILE:-release}
echo "==> cargo build --profile $profile --target $target"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
started=$(date +%s)
cargo build --profile "$profile" --target "$target" -p shoal-cli
binary="target/$target/$profile/shoal"
echo "==> built $binary: $(stat -c %s "$binary") bytes in $(( $(date +%s) - started )) s"
file "$binary" 2>/dev/null || true

echo "==> guests and the arm64 test under qemu-aarch64"
scripts/build-guests.sh >/dev/null
export SHOAL_ARM64_BIN="$PWD/$binary"
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
cargo test -p shoal-cli --test arm64 -- --nocapture
