"""The prototype's scenario 2, out-of-order delivery, with the fault hook.

Replication from node1 to node3 is paused. x=100 is written at node1, read at
node2, and x=200 written at node2 after it. node2's write reaches node3 first:
node3 buffers it (its /status shows it waiting for node1's write) and shows
nothing. Once the link is resumed, node3 applies both, in order, and shows 200.
The nodes need the fault hook (``faults = true``; ``cargo xtask cluster`` and
``cargo xtask pytest`` turn it on).

    python3 examples/scenario2_out_of_order.py   # nodes: CAUSAL_KV_NODES, default :5001-5003
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from causal_kv import Client, Status

NODES = os.environ.get("CAUSAL_KV_NODES", "http://127.0.0.1:5001,http://127.0.0.1:5002,http://127.0.0.1:5003")
DEADLINE = 10.0


def buffered_at(client: Client, url: str) -> Status:
    """node3's status once it buffers an event (polled, at most DEADLINE seconds)."""
    end = time.monotonic() + DEADLINE
    while True:
        status = client.status(url)
        if status.buffered_total > 0 or time.monotonic() > end:
            return status
        time.sleep(0.02)


def main() -> int:
    urls = NODES.split(",")[:3]
    with Client(urls[0]) as at1, Client(urls[1]) as at2, Client(urls[2]) as at3:
        return scenario(urls, at1, at2, at3)


def scenario(urls: list[str], at1: Client, at2: Client, at3: Client) -> int:
    node1, node3 = at1.status().node, at3.status().node
    key = f"x-{uuid.uuid4().hex[:8]}"

    at1.pause_link(urls[0], node3)
    print(f"paused replication {node1} -> {node3}")
    try:
        first = at1.put(key, 100)
        print(f"node1: writes {key}=100  dot {first.dot}")
        session = at2.session(first.timestamp)
        read = session.get(key)
        print(f"node2: reads {key}={read.value}")
        second = session.put(key, 200)
        print(f"node2: writes {key}=200  dot {second.dot}, after {first.dot}")

        status = buffered_at(at3, urls[2])
        waiting = [(str(e.dot), [(m.node, m.want) for m in e.waiting_for]) for e in status.buffered_events]
        print(f"node3: buffers {waiting}")
        early = at3.get(key)
        print(f"node3: reads {key}={early.value} (node1's write has not arrived)")
        if not any(dot == str(second.dot) for dot, _ in waiting) or early.found:
            print("FAILED: node3 should buffer node2's write and show nothing", file=sys.stderr)
            return 1
    finally:
        at1.resume_link(urls[0], node3)
        print(f"resumed replication {node1} -> {node3}")

    last = at3.session(second.timestamp).get(key)
    print(f"node3: reads {key}={last.value}, siblings {[str(s.dot) for s in last.siblings]}")
    if last.value != 200 or len(last.siblings) != 1:
        print("FAILED: node3 should apply both writes in order and show 200", file=sys.stderr)
        return 1
    print("ok: out-of-order delivery buffered, then applied in causal order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
