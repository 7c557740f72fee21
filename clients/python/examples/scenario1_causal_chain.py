"""The prototype's scenario 1, a causal chain across three nodes.

x=5 is written at node1; a session reads it at node2 and writes x=x+5 there;
the same session reads x at node3, which answers only once it has both
writes: 10, never 5 or nothing.

    python3 examples/scenario1_causal_chain.py   # nodes: CAUSAL_KV_NODES, default :5001-5003
"""

from __future__ import annotations

import json
import os
import sys
import uuid

from causal_kv import Client, covers

NODES = os.environ.get("CAUSAL_KV_NODES", "http://127.0.0.1:5001,http://127.0.0.1:5002,http://127.0.0.1:5003")


def main() -> int:
    urls = NODES.split(",")[:3]
    with Client(urls[0]) as node1, Client(urls[1]) as node2, Client(urls[2]) as node3:
        return scenario(node1, node2, node3)


def scenario(node1: Client, node2: Client, node3: Client) -> int:
    key = f"x-{uuid.uuid4().hex[:8]}"
    first = node1.put(key, 5)
    print(f"node1: writes {key}=5   dot {first.dot}, clock {json.dumps(first.timestamp)}")

    session = node2.session(first.timestamp)  # the session saw node1's write
    read = session.get(key)
    print(f"node2: reads {key}={read.value}    clock {json.dumps(read.context)}")
    second = session.put(key, read.value + 5)
    print(f"node2: writes {key}={read.value + 5}  dot {second.dot}, clock {json.dumps(second.timestamp)}")

    at_node3 = node3.session(session.context)
    last = at_node3.get(key)
    print(f"node3: reads {key}={last.value}   clock {json.dumps(last.context)}")
    if last.value != 10 or not covers(last.context, second.timestamp):
        print("FAILED: node3 did not show the end of the causal chain", file=sys.stderr)
        return 1
    print("ok: causal chain x=5 -> x=10 seen in order at node3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
