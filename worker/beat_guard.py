"""An embedded beat (`hyfunc worker --beat`) must not outlive its worker.

Celery runs it as a child process; a SIGKILLed worker leaves it orphaned, and the next
worker's beat makes two. In the child we ask Linux to SIGKILL it when its parent dies
(prctl PR_SET_PDEATHSIG), and, where prctl is missing, a watchdog thread exits when the
parent pid changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Any

from celery import signals

log = logging.getLogger("hyfunc.worker")

PR_SET_PDEATHSIG = 1
WORKER_PID = os.getpid()  # set again in the worker before beat forks (worker_init)


@signals.worker_init.connect
def _remember_worker_pid(**_: Any) -> None:
    global WORKER_PID
    WORKER_PID = os.getpid()


def _set_pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except OSError:
        return False


def _watch_parent(parent: int, interval: float = 1.0) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(0)
        threading.Event().wait(interval)


@signals.beat_embedded_init.connect
def _die_with_worker(**_: Any) -> None:
    parent = WORKER_PID
    _set_pdeathsig()
    # The parent may have died before prctl took effect: then it is already gone.
    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(parent,), name="hyfunc-beat-guard", daemon=True).start()
