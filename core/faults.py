"""Crash points for the recovery tests: AUTORESEARCH_KILL_AT=NAME[:N] makes the engine SIGKILL itself the Nth
time it passes point NAME, exactly where a power cut or kill -9 could land. Unset (always, outside the tests)
each point is one dictionary lookup."""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("AUTORESEARCH_KILL_AT")
_seen: dict[str, int] = {}


def point(name: str) -> None:
    if _SPEC is None:
        return
    want, _, nth = _SPEC.partition(":")
    if want != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
