"""A session's causal context in a file, in the format of ``kvctl --session``.

The file holds one JSON clock, ``{"node1":3,"node2":1}``. Saving merges into
what the file holds, under an exclusive ``flock`` of the lock file beside it
(``NAME.lock`` for ``NAME.json``), and replaces the file atomically (a
temporary file, then a rename): the protocol kvctl follows, so Python programs
and kvctl commands of one session can run at the same time without losing each
other's clocks.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

from .errors import InvalidValue
from .types import Clock, merge

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def kvctl_session_path(name: str, state_home: str | os.PathLike[str] | None = None) -> Path:
    """The file of kvctl's session `name` (``kvctl --session NAME``):
    ``$XDG_STATE_HOME/kvctl/sessions/NAME.json``, else under ``~/.local/state``.
    """
    if not _NAME.fullmatch(name) or name.startswith("."):
        raise InvalidValue(f"session name {name!r}: use letters, digits, '-', '_' and '.'")
    if state_home is None:
        env = os.environ.get("XDG_STATE_HOME")
        state_home = env if env else Path.home() / ".local" / "state"
    return Path(state_home) / "kvctl" / "sessions" / f"{name}.json"


def load_context(path: str | os.PathLike[str]) -> Clock:
    """The context saved in `path`; empty when the file does not exist."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise InvalidValue(f"{path} is not a session file: {exc}") from None
    if not isinstance(raw, dict) or not all(
        isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 for seq in raw.values()
    ):
        raise InvalidValue(f"{path} is not a session file: not a clock of node ids to counters")
    return {str(node): seq for node, seq in raw.items()}


def merge_into(path: str | os.PathLike[str], seen: Clock) -> Clock:
    """Merges `seen` into the context saved in `path` (created with its
    directory if need be) and returns the merged context."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            context = merge(load_context(path), seen)
            tmp = path.with_name(f"{path.name}.{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(json.dumps(context, separators=(",", ":"), sort_keys=True))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return context
