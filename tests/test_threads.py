"""Thread counts of the parallel passes: the cores no other process is running on."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from capalloc._lib import threads


def test_other_processes_running_take_their_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "_own_running", lambda: 1)
    # fourth field of /proc/loadavg: runnable threads of the whole system, this one too
    assert threads.default_threads("0.10 0.20 0.30 1/300 4242") == 8
    assert threads.default_threads("3.00 2.00 1.00 4/300 4242") == 5
    assert threads.default_threads("9.00 9.00 9.00 40/300 4242") == 1
    monkeypatch.setattr(threads, "_own_running", lambda: 3)  # our own threads are not others
    assert threads.default_threads("1.00 1.00 1.00 3/300 4242") == 8
    # unreadable: one fewer than the cores, as before the count was known
    assert threads.default_threads("garbage") == 7
    assert threads.busy_elsewhere("") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_spinning_process_is_seen():
    cores = threads.usable_cores()
    before = threads.busy_elsewhere()
    assert before is not None and 1 <= threads.default_threads() <= cores
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        seen = max(threads.busy_elsewhere() for _ in range(20))
    finally:
        spinner.kill()
        spinner.wait()
    assert seen >= 1  # the spinner is runnable the whole time


def test_large_solves_use_the_free_cores(monkeypatch):
    kernels = pytest.importorskip("capalloc.allocation.methods.kernels")
    numba = pytest.importorskip("numba")
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    seen = []
    monkeypatch.setattr(kernels, "free_threads", lambda: seen.append(1) or 1)
    with kernels.threads(None, size=10):
        assert numba.get_num_threads() == 1 and not seen  # small work: never looks
    with kernels.threads(None, size=kernels.PARALLEL_MIN):
        assert numba.get_num_threads() == 1 and seen == [1]
    assert np.isfinite(kernels.default_threads())
