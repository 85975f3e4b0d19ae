"""Process helpers for the servers FlexServe starts (Triton; `bentoml serve` in the load tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def stop_group(process: subprocess.Popen | None, timeout_s: float = 20.0) -> None:
    """SIGTERM a process group (started with `start_new_session=True`), SIGKILL it if it lingers. The
    group is signalled even when its leader has exited: what it started (Ray's processes) may not have."""
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return  # the whole group is gone
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
    except ProcessLookupError:
        pass
    process.wait()


def interruptible() -> None:
    """A `preexec_fn` that gives the child SIGINT's default action back: a process started from a
    background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt (so Ray's
    `serve run` would not stop on Ctrl-C's signal)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
