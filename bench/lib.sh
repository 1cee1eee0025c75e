# Sourced by the bench scripts: free ports, and a JetStream nats-server and a registry on
# loopback with their data in "$work" (which the caller makes and removes). The caller sets
# nats_port and registry_port; start_nats sets nats_pid, start_registry adds to pids.

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
