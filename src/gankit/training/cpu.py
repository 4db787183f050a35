"""CPU threads: as many as there are physical cores, and fewer while other programs load them.

PyTorch's OpenMP threads spin while they wait for each other. When another program takes one
of two cores, a two-thread step waits on a thread that is not running: on a 2-core machine a
DCGAN step took 3.2× as long as with one thread (336 vs 104 ms; an MLP GAN 2.1×). Passive
waiting avoids that but costs 17–32% on an idle machine. So gankit keeps spinning threads
and a :class:`ThreadGovernor` that sets their number to the cores the rest of the machine
leaves free, from the CPU time the kernel reports (Linux; elsewhere the count stays fixed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int] | None = None) -> int:
    """Physical cores among ``cpus`` (hyper-threads of one core count once): the thread count
    at which dense kernels run fastest."""
    cpus = usable_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                (topology / "physical_package_id").read_text().strip()
                + ":"
                + (topology / "core_id").read_text().strip()
            )
        except OSError:
            return len(cpus)  # no topology to read: count logical CPUs
    return max(1, len(cores))


def _busy_ticks(cpus: set[int]) -> int | None:
    """CPU ticks spent running anything (hypervisor steal included) on ``cpus`` so far."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            # user nice system idle iowait irq softirq steal (guest is inside user)
            values = [int(v) for v in rest.split()[:8]]
            total += sum(values) - values[3] - values[4]
    return total


def _own_ticks() -> int | None:
    """CPU ticks this process has used (user + system)."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the file)


class ThreadGovernor:
    """Adjusts torch's thread count to the cores other programs leave free.

    :meth:`poll` is cheap enough to call every training step: every ``interval`` seconds it
    compares the CPU time of the usable CPUs with this process's own, and sets the thread
    count to the free cores, rounded (at least 1, at most ``max_threads``). A change of thread
    count may change float rounding: runs that must repeat bit for bit set a fixed count.
    """

    def __init__(self, max_threads: int, interval: float = 5.0):
        self.max_threads, self.interval = max_threads, interval
        self.cpus = set(usable_cpus())
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.threads = max_threads
        self.changes: list[tuple[float, int]] = []  # (time, new thread count)
        self._mark()
        self.enabled = self._busy is not None and self._own is not None  # /proc readable

    def _mark(self) -> None:
        self._time = time.monotonic()
        self._busy, self._own = _busy_ticks(self.cpus), _own_ticks()

    def others(self) -> float | None:
        """Cores' worth of CPU other programs used since the last mark."""
        busy, own = _busy_ticks(self.cpus), _own_ticks()
        seconds = time.monotonic() - self._time
        if busy is None or own is None or seconds <= 0:
            return None
        return max(0.0, (busy - self._busy) - (own - self._own)) / self.tick / seconds

    def poll(self) -> int | None:
        """The new thread count when it changed, else None."""
        if not self.enabled or time.monotonic() - self._time < self.interval:
            return None
        others = self.others()
        self._mark()
        if others is None:
            return None
        threads = min(self.max_threads, max(1, round(len(self.cpus) - others)))
        if threads == self.threads:
            return None
        self.threads = threads
        torch.set_num_threads(threads)
        self.changes.append((time.time(), threads))
        return threads
