# Sourced by the bench scripts (from the repository root, with $root set): missing tools
# installed, release binaries built, free ports, a JetStream nats-server and a registry on
# loopback with their data in "$work" (which the caller makes), and everything stopped at
# the end. The caller sets nats_port and registry_port; start_nats sets nats_pid,
# start_registry adds to pids.

# Installs each missing command with apt: `need wrk`, or `need nft:nftables` when the
# package has another name.
need() {
  local spec command package
  for spec in "$@"; do
    command=${spec%%:*}
    package=${spec#*:}
    command -v "$command" >/dev/null && continue
    echo "installing $package (apt)" >&2
    $(command -v sudo || true) apt-get install -y -qq "$package" >&2
  done
}

# Builds the guest components and release binaries of shoal-cli and the packages given
# (the cargo profile in $PROFILE, default release), and measures as a user would run it:
# without RUST_BACKTRACE. Sets $shoal.
build_release() {
  local packages=(-p shoal-cli) package profile=${PROFILE:-release}
  for package in "$@"; do packages+=(-p "$package"); done
  scripts/build-guests.sh >/dev/null
  cargo build --profile "$profile" --quiet "${packages[@]}"
  unset RUST_BACKTRACE
  shoal=$root/target/$profile/shoal
}

# Kills (SIGKILL) the processes given and the shell's jobs, waits for them, removes $work.
stop_all() {
  local pid
  for pid in "$@" $(jobs -p); do
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}

now_ms() { date +%s%3N; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_nats() {
  printf 'max_payload: 9437184\n' >"$work/nats.conf"
  nats-server -c "$work/nats.conf" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >>"$work/nats.log" 2>&1 &
  nats_pid=$!
  disown "$nats_pid"
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && return; sleep 0.05; done
}

start_registry() {
  mkdir -p "$work/registry"
  cat >"$work/registry/config.yml" <<YAML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry/data}}
http: {addr: 127.0.0.1:$registry_port}
YAML
  "$(command -v docker-registry || command -v registry)" serve "$work/registry/config.yml" >"$work/registry.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$registry_port/v2/" >/dev/null && break; sleep 0.1; done
}
