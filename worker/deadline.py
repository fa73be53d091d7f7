"""A wall-clock deadline around a block of Python: `with deadline(s): runner.run(...)`.

In the main thread (the solo pool's, and the tests') a SIGALRM timer raises in the block,
which also cuts a sleep short; in any other thread a timer injects the exception with
PyThreadState_SetAsyncExc. Either way it lands between two Python bytecodes, so one long
C call (a big matmul) finishes first; the cascade's steps are short.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class DeadlineExceeded(BaseException):
    """Raised inside the block; a BaseException so the runner's own `except Exception`
    handlers cannot swallow it."""

    def __init__(self, seconds: float):
        super().__init__(f"ran past its deadline of {seconds:g} s")
        self.seconds = seconds


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    if seconds is None:
        yield
        return
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        with _alarm(seconds):
            yield
    else:
        with _async_raise(seconds):
            yield


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def _raise(_signum: int, _frame: Any) -> None:
        raise DeadlineExceeded(seconds)

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _async_raise(seconds: float) -> Iterator[None]:
    target = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    state = {"active": True, "fired": False}

    class _Exceeded(DeadlineExceeded):
        def __init__(self) -> None:  # SetAsyncExc instantiates the class without arguments
            super().__init__(seconds)

    def fire() -> None:
        with lock:
            if state["active"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(target, ctypes.py_object(_Exceeded))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            state["active"] = False
            if state["fired"]:  # fired but maybe not delivered yet: withdraw it
                ctypes.pythonapi.PyThreadState_SetAsyncExc(target, None)
