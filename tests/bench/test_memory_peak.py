"""The memory bench's peak is the measured process's own, not inherited from its driver."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_child_peak_is_not_the_drivers():
    ballast = bytearray(400 * 2**20)  # the driver's peak grows by 400 MiB
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page so it is resident
    code = "from hyfunc.bench.memory import peak_rss_mib; print(peak_rss_mib())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) < 300, "a fresh child reported its driver's peak RSS"
    del ballast
