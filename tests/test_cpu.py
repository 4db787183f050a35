"""Thread count: physical cores, fewer while other programs load the CPU."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gankit
from gankit.training import Trainer, cpu
from gankit.training.callbacks import FollowLoad


class FakeProc:
    """Scripted /proc readings: machine-wide busy ticks and this process's own."""

    def __init__(self, monkeypatch):
        self.busy = self.own = 0
        self.now = 1000.0
        monkeypatch.setattr(cpu, "_busy_ticks", lambda cpus: self.busy)
        monkeypatch.setattr(cpu, "_own_ticks", lambda: self.own)
        monkeypatch.setattr(cpu.time, "monotonic", lambda: self.now)

    def advance(self, seconds: float, own_cores: float, other_cores: float, tick: int) -> None:
        self.now += seconds
        self.own += round(own_cores * seconds * tick)
        self.busy += round((own_cores + other_cores) * seconds * tick)


def test_governor_drops_threads_while_others_load_the_cpu_and_restores_them(monkeypatch):
    proc = FakeProc(monkeypatch)
    governor = cpu.ThreadGovernor(max_threads=2, interval=5.0)
    governor.cpus = {0, 1}
    tick = governor.tick
    proc.advance(1.0, 2.0, 0.0, tick)
    assert governor.poll() is None  # not yet time to look
    proc.advance(5.0, 2.0, 0.0, tick)
    assert governor.poll() is None and governor.threads == 2  # idle machine: all cores
    proc.advance(5.0, 1.2, 0.8, tick)  # another program takes most of a core
    assert governor.poll() == 1 and torch.get_num_threads() == 1
    proc.advance(5.0, 1.0, 1.0, tick)
    assert governor.poll() is None  # still loaded: stays at one
    proc.advance(5.0, 1.0, 0.1, tick)  # it finished (a little background noise left)
    assert governor.poll() == 2 and torch.get_num_threads() == 2
    assert [n for _, n in governor.changes] == [1, 2]


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux's /proc/stat")
def test_governor_sees_a_real_busy_program():
    governor = cpu.ThreadGovernor(max_threads=2, interval=0.0)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        governor._mark()
        time.sleep(1.5)
        assert governor.others() > 0.5
    finally:
        busy.kill()
        busy.wait()


def test_physical_cores_counts_each_core_once():
    cores = cpu.physical_cores()
    assert 1 <= cores <= len(cpu.usable_cpus())


def test_trainer_follows_the_load_only_when_threads_are_not_fixed(tiny_data, tmp_path):
    auto = Trainer(
        gankit.configure("gan", steps=1),
        tmp_path / "a",
        data=tiny_data,
        progress=False,
        tensorboard=False,
    )
    fixed = Trainer(
        gankit.configure("gan", steps=1, threads=2),
        tmp_path / "b",
        data=tiny_data,
        progress=False,
        tensorboard=False,
    )
    assert fixed.callback(FollowLoad) is None and torch.get_num_threads() == 2
    if cpu.physical_cores() > 1:
        assert auto.callback(FollowLoad).governor.max_threads == cpu.physical_cores()
