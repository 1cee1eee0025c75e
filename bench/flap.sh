#!/usr/bin/env bash
# Flapping on a slow, lossy link: two hosts reach the lattice over an emulated cellular
# link (300 ms round trip, 5% of packets lost each way), one with today's defaults
# (heartbeat 2 s, lost after 10 s) and one with the old ones (1 s, 3 s). Reports, per host,
# the gaps between heartbeats as the lattice saw them and how often the scheduler counted
# the host lost although it never stopped.
# The link: the hosts run in a network namespace whose veth drops 5% of packets in and out
# (nftables; this kernel has no netem), with a 500 ms minimum retransmit timeout as TCP
# has on a 300 ms path, and reach nats-server through bench's slow-link proxy, which
# delays each direction by 150 ms.
# With --secure, the lattice is a secure one (operator mode, each process its own
# credential) and the scheduler holds the presence credential: a host whose connection
# closes is lost after a 1 s grace, so this counts what dropped connections on the link cost
# (the old-settings host names its own --lost-after and goes by heartbeats only).
# Usage (as root): bench/flap.sh [--secure] [MINUTES=10]
set -euo pipefail
secure=
if [ "${1:-}" = --secure ]; then secure=1; shift; fi
minutes=${1:-10}
[ "$(id -u)" = 0 ] || { echo "bench/flap.sh needs root (ip netns, nftables)" >&2; exit 1; }
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh >/dev/null
# shellcheck source=../scripts/env.sh
source scripts/env.sh
# shellcheck source=lib.sh
source bench/lib.sh
need nft:nftables
build_release shoal-bench
bin=$root/target/${PROFILE:-release}

work=$(mktemp -d)
ns=shoal-flap-$$
veth=sfl$$
pids=()
cleanup() {
  stop_all "${pids[@]}" "${nats_pid:-}"
  ip netns del "$ns" 2>/dev/null || true
  ip link del "${veth}a" 2>/dev/null || true
}
trap cleanup EXIT

nats_port=$(free_port)
proxy_port=$(free_port)
export SHOAL_NATS=nats://127.0.0.1:$nats_port SHOAL_LATTICE=flap SHOAL_LOG=warn
if [ -n "$secure" ]; then
  auth=$work/auth
  "$shoal" auth --dir "$auth" --lattice flap init >/dev/null
  mint() { "$shoal" auth --dir "$auth" --lattice flap "$@" >/dev/null; }
  mint scheduler s1 -o "$auth/s1.creds"
  mint user admin --role admin -o "$auth/admin.creds"
  for host in defaults-2s-10s old-1s-3s; do mint host "$host" -o "$auth/$host.creds"; done
  # nats-server includes files by paths relative to its config: inline it.
  { cat "$auth/nats-auth.conf"; printf 'max_payload: 9437184\n'; } >"$work/nats.conf"
  nats-server -c "$work/nats.conf" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >>"$work/nats.log" 2>&1 &
  nats_pid=$!
  disown "$nats_pid"
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.05; done
  export SHOAL_NATS_CREDS=$auth/admin.creds
  scheduler_creds=(--nats-creds "$auth/s1.creds" --presence-creds "$auth/presence.creds"
    --secrets-key "$auth/secrets.xk" --store-key "$auth/stores.nk")
  host_creds() { echo "--nats-creds $auth/$1.creds"; }
else
  start_nats
  scheduler_creds=()
  host_creds() { :; }
fi

ip netns add "$ns"
ip link add "${veth}a" type veth peer name "${veth}b" netns "$ns"
ip addr add 10.213.0.1/30 dev "${veth}a"
ip link set "${veth}a" up
ip netns exec "$ns" ip addr add 10.213.0.2/30 dev "${veth}b"
ip netns exec "$ns" ip link set "${veth}b" up
ip netns exec "$ns" ip link set lo up
ip route change 10.213.0.0/30 dev "${veth}a" rto_min 500ms
ip netns exec "$ns" ip route change 10.213.0.0/30 dev "${veth}b" rto_min 500ms
ip netns exec "$ns" nft -f - <<NFT
table inet flap {
  chain in { type filter hook input priority 0; iifname "${veth}b" numgen random mod 100 < 5 drop; }
  chain out { type filter hook output priority 0; oifname "${veth}b" numgen random mod 100 < 5 drop; }
}
NFT
"$bin/slow-link" "10.213.0.1:$proxy_port" "127.0.0.1:$nats_port" 150 &
pids+=($!)

"$shoal" scheduler --id s1 "${scheduler_creds[@]}" >"$work/scheduler.log" 2>&1 &
pids+=($!)
remote=nats://10.213.0.1:$proxy_port
# shellcheck disable=SC2046 # host_creds prints two words, or none
ip netns exec "$ns" env SHOAL_NATS="$remote" "$shoal" host --id defaults-2s-10s $(host_creds defaults-2s-10s) \
  --http 127.0.0.1:0 --cache-dir "$work/cache-a" >"$work/a.log" 2>&1 &
pids+=($!)
# shellcheck disable=SC2046
ip netns exec "$ns" env SHOAL_NATS="$remote" "$shoal" host --id old-1s-3s $(host_creds old-1s-3s) \
  --heartbeat 1s --lost-after 3s --http 127.0.0.1:0 --cache-dir "$work/cache-b" >"$work/b.log" 2>&1 &
pids+=($!)

echo "link: 300 ms round trip (150 ms each way), 5% loss each way${secure:+, secure lattice with presence}; watching for $minutes min" >&2
if [ -n "$secure" ]; then
  # Host records live in the state account, where no bench credential listens: the lost
  # counts below are what this run measures.
  sleep "$((minutes * 60))"
else
  "$bin/heartbeat-gaps" "$SHOAL_NATS" flap "$((minutes * 60))"
fi
for host in defaults-2s-10s old-1s-3s; do
  lost=$("$shoal" events -o json --since "$((minutes + 2))m" | grep -c "\"HostLost\".*$host\|$host.*\"HostLost\"" || true)
  echo "$host: counted lost $lost time(s) in $minutes min"
done
if [ -n "$secure" ]; then
  closed=$("$shoal" events -o json --since "$((minutes + 2))m" | grep -c "connection closed and it did not connect again" || true)
  echo "of which lost because a connection closed (presence): $closed"
fi
