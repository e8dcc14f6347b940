"""How many threads a parallel pass should use now: the cores nobody else is running on.

A parallel pass (a numba kernel, a BLAS call) waits at each barrier for its slowest
thread. When another process holds a core, the thread placed there is preempted and
every barrier waits for it: on a busy 2-core machine two threads made a water-filling
pass 20 times and a ``dsyrk`` 15-25 times slower than one. An idle machine, on the
other hand, should get every core. :func:`default_threads` reads the number of
runnable tasks the kernel reports at this instant (``/proc/loadavg``), subtracts this
process's own running threads, and leaves the cores the others occupy.

Examples
--------
>>> from capalloc._lib.threads import default_threads, usable_cores
>>> 1 <= default_threads() <= usable_cores()
True
"""

from __future__ import annotations

import os

__all__ = ["busy_elsewhere", "default_threads", "usable_cores"]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _own_running() -> int:
    """Threads of this process in state R (running or runnable), at least 1 (this one)."""
    count = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # the thread ended meanwhile
        # state follows the command name, which is in parentheses and may hold spaces
        count += stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"R"
    return max(count, 1)


def busy_elsewhere(loadavg: str | None = None) -> int | None:
    """Runnable tasks of other processes right now, or ``None`` where unknown.

    ``loadavg`` is the text of ``/proc/loadavg`` (read when not given); its fourth field
    ``running/total`` counts every runnable thread of the system, this process's too.
    """
    if loadavg is None:
        try:
            with open("/proc/loadavg") as fh:
                loadavg = fh.read()
        except OSError:
            return None
    try:
        running = int(loadavg.split()[3].split("/")[0])
    except (IndexError, ValueError):
        return None
    return max(running - _own_running(), 0)


def default_threads(loadavg: str | None = None) -> int:
    """Threads for a parallel pass: the usable cores less those other processes are
    running on now (at least 1); one fewer than the cores where that is unknown."""
    cores = usable_cores()
    others = busy_elsewhere(loadavg)
    if others is None:
        return max(1, cores - 1)
    return max(1, cores - others)
