"""One session shared by kvctl and Python through kvctl's session file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from causal_kv import CausalTimeout, Client, covers, kvctl_session_path, load_context
from conftest import LiveCluster


def run_kvctl(kvctl: str, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(state)}
    env.pop("KVCTL_NODES", None)
    return subprocess.run([kvctl, "-o", "json", *args], env=env, capture_output=True, text=True, timeout=30)


def test_kvctl_writes_and_python_reads_with_the_same_session(
    cluster: LiveCluster, kvctl: str, key: str, tmp_path: Path
) -> None:
    with cluster.paused((1, 2)):
        done = run_kvctl(kvctl, tmp_path, "--session", "shared", "-n", cluster.url(1), "put", key, '{"by":"kvctl"}')
        assert done.returncode == 0, done.stderr
        written = json.loads(done.stdout)
        path = kvctl_session_path("shared", state_home=tmp_path)
        assert path.exists()
        assert load_context(path) == written["timestamp"]
        with Client([cluster.url(2)], timeout=5.0) as node2:
            # node2 lacks kvctl's write: with the session's context it says so
            # instead of answering without it.
            assert not node2.get(key).found
            with pytest.raises(CausalTimeout):
                node2.session(path=path).get(key)
    with Client([cluster.url(2)]) as node2:
        read = node2.session(path=path).get(key)
        assert read.value == {"by": "kvctl"}
        assert covers(read.context, written["timestamp"])
    # The read's clock went into the file, as a kvctl get's would.
    assert covers(load_context(path), read.context)


def test_python_writes_and_kvctl_reads_with_the_same_session(
    cluster: LiveCluster, kvctl: str, key: str, tmp_path: Path
) -> None:
    path = kvctl_session_path("py", state_home=tmp_path)
    with cluster.paused((1, 3)):
        with Client([cluster.url(1)]) as node1:
            session = node1.session()
            written = session.put(key, ["from", "python"])
            assert session.save(path) == written.timestamp
        blocked = run_kvctl(kvctl, tmp_path, "--session", "py", "-n", cluster.url(3), "get", key)
        assert blocked.returncode == 4, (blocked.stdout, blocked.stderr)
        assert "(503)" in blocked.stderr and "waiting for writes" in blocked.stderr
    shown = run_kvctl(kvctl, tmp_path, "--session", "py", "-n", cluster.url(3), "get", key)
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    assert answer["value"] == ["from", "python"]
    # kvctl merged node3's clock into the file; Python picks it up.
    with Client([cluster.url(2)]) as node2:
        resumed = node2.session()
        resumed.load(path)
        assert resumed.context == load_context(path)
        assert covers(resumed.context, answer["context"])
        assert resumed.get(key).value == ["from", "python"]
