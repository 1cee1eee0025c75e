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
# Usage (as root): bench/flap.sh [MINUTES=10]
set -euo pipefail
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
bin=$root/target/release

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
start_nats

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

"$shoal" scheduler --id s1 >"$work/scheduler.log" 2>&1 &
pids+=($!)
remote=nats://10.213.0.1:$proxy_port
ip netns exec "$ns" env SHOAL_NATS="$remote" "$shoal" host --id defaults-2s-10s \
  --http 127.0.0.1:0 --cache-dir "$work/cache-a" >"$work/a.log" 2>&1 &
pids+=($!)
ip netns exec "$ns" env SHOAL_NATS="$remote" "$shoal" host --id old-1s-3s \
  --heartbeat 1s --lost-after 3s --http 127.0.0.1:0 --cache-dir "$work/cache-b" >"$work/b.log" 2>&1 &
pids+=($!)

echo "link: 300 ms round trip (150 ms each way), 5% loss each way; watching for $minutes min" >&2
"$bin/heartbeat-gaps" "$SHOAL_NATS" flap "$((minutes * 60))"
for host in defaults-2s-10s old-1s-3s; do
  lost=$("$shoal" events -o json --since "$((minutes + 2))m" | grep -c "\"HostLost\".*$host\|$host.*\"HostLost\"" || true)
  echo "$host: counted lost $lost time(s) in $minutes min"
done
