"""Messages through Shoal's triggers against plain nats-py consumers on the same
nats-server, one run each, side by side (driven by bench/triggers.sh, which starts the
lattice and applies the apps):

- JetStream: N messages published to a stream; Shoal's trigger hands each to a no-op
  handler (`noop`) and acknowledges it; the peer is a nats-py pull consumer on a stream of
  its own that acknowledges each. Messages a second from the first publish to the last
  acknowledged (Shoal: the host's shoal_trigger_messages_total).
- Core NATS: N messages published at full speed to a subject; Shoal's trigger and a
  nats-py queue subscriber each count what they handled (core NATS drops what a slow
  subscriber cannot take: both are reported).
- Latency at concurrency 1: a message and its answer (the handler publishes one), one at a
  time; Shoal's component against a nats-py subscriber that answers the same way.
- Backlog: N messages for an app scaled to zero (targetPending 50, max 3): time to its
  first ready replica and to three.
"""

import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


def handled(metrics_url, trigger):
    text = urllib.request.urlopen(metrics_url).read().decode()
    total = 0
    for line in text.splitlines():
        if (
            line.startswith("shoal_trigger_messages_total{")
            and f'trigger="{trigger}"' in line
            and 'outcome="handled"' in line
        ):
            total += int(line.rsplit(" ", 1)[1])
    return total


async def wait_handled(metrics_url, trigger, base, count, patience):
    deadline = time.perf_counter() + patience
    last, last_change = base, time.perf_counter()
    while True:
        now = handled(metrics_url, trigger)
        if now != last:
            last, last_change = now, time.perf_counter()
        if now - base >= count or time.perf_counter() > deadline:
            return now - base, last_change
        # Core NATS: nothing more for a second means the rest was dropped.
        if time.perf_counter() - last_change > 1.0 and now > base:
            return now - base, last_change
        await asyncio.sleep(0.02)


def replicas(shoal, app):
    out = subprocess.run(
        [shoal, "get", "replicas", "-o", "json"], capture_output=True, text=True
    ).stdout
    try:
        rows = json.loads(out)
    except ValueError:
        return 0, 0
    mine = [row for row in rows if row.get("app") == app]
    ready = [row for row in mine if (row.get("status") or {}).get("phase") == "ready"]
    return len(mine), len(ready)


async def main():
    url, lattice, metrics_url, shoal, count = sys.argv[1:6]
    count = int(count)
    prefix = f"shoal.{lattice}.v1.msg.default"
    nc = await nats.connect(url)
    js = nc.jetstream()
    results = {}

    # JetStream through Shoal.
    base = handled(metrics_url, "stream bench")
    start = time.perf_counter()
    for index in range(count):
        await nc.publish(f"{prefix}.bench.{index}", b"noop")
    await nc.flush()
    done, end = await wait_handled(metrics_url, "stream bench", base, count, 300)
    results["jetstream_shoal"] = done / (end - start)
    # JetStream, plain nats-py pull consumer on a stream of its own.
    await js.add_stream(name="peerbench", subjects=["peerbench.>"])
    await js.add_consumer(
        "peerbench",
        ConsumerConfig(
            durable_name="peer", ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL
        ),
    )
    subscription = await js.pull_subscribe_bind("peer", stream="peerbench")
    start = time.perf_counter()
    for index in range(count):
        await nc.publish(f"peerbench.{index}", b"noop")
    await nc.flush()
    acked = 0
    while acked < count:
        try:
            batch = await subscription.fetch(100, timeout=5)
        except nats.errors.TimeoutError:
            break
        for message in batch:
            await message.ack()
            acked += 1
    await nc.flush()
    results["jetstream_peer"] = acked / (time.perf_counter() - start)

    # Core NATS through Shoal, and a plain queue subscriber.
    base = handled(metrics_url, "subject core.*")
    start = time.perf_counter()
    for index in range(count):
        await nc.publish(f"{prefix}.core.{index}", b"noop")
    await nc.flush()
    core_done, end = await wait_handled(metrics_url, "subject core.*", base, count, 60)
    results["core_shoal"] = core_done / (end - start)
    results["core_shoal_handled"] = core_done
    peer_count = 0
    peer_last = [time.perf_counter()]

    async def on_core(message):
        nonlocal peer_count
        peer_count += 1
        peer_last[0] = time.perf_counter()

    await nc.subscribe("peercore.*", queue="peer", cb=on_core)
    await nc.flush()
    start = time.perf_counter()
    for index in range(count):
        await nc.publish(f"peercore.{index}", b"noop")
    await nc.flush()
    while peer_count < count and time.perf_counter() - peer_last[0] < 1.0:
        await asyncio.sleep(0.02)
    results["core_peer"] = peer_count / (peer_last[0] - start)
    results["core_peer_handled"] = peer_count

    # Latency: a message and its answer, one at a time.
    async def round_trips(send, answers, rounds):
        times = []
        for index in range(rounds):
            future = asyncio.get_running_loop().create_future()
            subscription = await nc.subscribe(answers.format(index), max_msgs=1)
            began = time.perf_counter()
            await nc.publish(send.format(index), str(index).encode())
            await subscription.next_msg(timeout=5)
            times.append((time.perf_counter() - began) * 1e6)
            del future
        times.sort()
        return times[len(times) // 2], times[int(len(times) * 0.99) - 1]

    async def answer(message):
        name = message.subject.rsplit(".", 1)[1]
        await nc.publish(f"peeralerts.{name}", b"handled " + message.data)

    await nc.subscribe("peerlat.*", queue="peer", cb=answer)
    rounds = 1000
    results["latency_shoal_us"] = await round_trips(
        f"{prefix}.lat.{{}}", f"{prefix}.alerts.{{}}", rounds
    )
    results["latency_peer_us"] = await round_trips("peerlat.{}", "peeralerts.{}", rounds)

    # Backlog to scaled-up replicas: the scaler app idles to zero first.
    deadline = time.perf_counter() + 120
    while replicas(shoal, "scaler")[0] != 0 and time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
    start = time.perf_counter()
    for index in range(2000):
        await nc.publish(f"{prefix}.scale.{index}", b"noop")
    await nc.flush()
    first = three = None
    while three is None and time.perf_counter() - start < 120:
        placed, ready = replicas(shoal, "scaler")
        now = time.perf_counter() - start
        if ready >= 1 and first is None:
            first = now
        if ready >= 3:
            three = now
        await asyncio.sleep(0.1)
    results["backlog_first_ready_s"] = first
    results["backlog_three_ready_s"] = three
    await nc.close()
    print(json.dumps(results))


asyncio.run(main())
