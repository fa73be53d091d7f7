"""hyfunc.bench.procs: the benchmarks' subprocess stop and port pick."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from hyfunc.bench.procs import free_port, stop_group


def test_stop_group_ends_the_whole_process_group() -> None:
    # A parent with a child of its own in the same session: both must be gone after stop_group.
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    stop_group(proc)
    assert proc.returncode is not None
    # The orphaned sleep may linger a moment as a zombie until it is reaped: only live members count.
    deadline = time.monotonic() + 10
    while _live_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_members(proc.pid) == [], "a process of the group outlived stop_group"


def _live_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies (from /proc/<pid>/stat)."""
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # After the command name: state, ppid, pgrp.
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            live.append(int(entry))
    return live


def test_stop_group_leaves_an_exited_process_alone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait(timeout=30)
    stop_group(proc)  # no signal to a group that no longer exists
    assert proc.returncode == 0


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
