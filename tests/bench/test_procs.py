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


def test_stop_group_leaves_an_exited_process_alone(monkeypatch) -> None:
    # Its pid (and so its group id) may already belong to another process: no signal may be sent.
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait(timeout=30)
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: sent.append((pgid, sig)))
    stop_group(proc)
    assert sent == []


def test_stop_group_kills_a_group_that_ignores_sigterm(monkeypatch) -> None:
    # A process that ignores SIGTERM is SIGKILLed once the grace period is over (shortened here).
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print('ready', flush=True); time.sleep(60)"], start_new_session=True, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    real_wait = proc.wait
    waits: list[float | None] = []

    def short_wait(timeout: float | None = None) -> int:
        waits.append(timeout)
        return real_wait(timeout=0.5 if timeout == 20 else timeout)

    monkeypatch.setattr(proc, "wait", short_wait)
    stop_group(proc)
    assert proc.returncode == -9 and waits[0] == 20, (proc.returncode, waits)


def test_free_port_is_free_and_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as probe:  # nothing listens there ...
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    with socket.socket() as s:  # ... and a server can take it
        s.bind(("127.0.0.1", port))
        assert s.getsockname()[1] == port
