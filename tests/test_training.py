"""The training loop on real data: every family learns something, runs resume exactly,
interruptions and divergence are handled."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
import torch
from conftest import Poison
from PIL import Image

import gankit
from gankit.api import launch
from gankit.errors import ConfigError
from gankit.runs import read_metrics
from gankit.runs.checkpoint import load_checkpoint
from gankit.training import Batches, Trainer, TrainingDiverged

# A few hundred updates of each family on real Fashion-MNIST: enough to move far from the
# untrained grid, small enough for two CPU cores.
FAMILY_RUNS = {
    "ae": 60,
    "vae": 60,
    "gan": 80,
    "dcgan": 40,
    "wgan": 15,
    "wgan-gp": 10,
    "cgan": 40,
    "bigan": 30,
}


def _grid(run_dir, step):
    with Image.open(run_dir / "samples" / f"step-{step:08d}.png") as image:
        return np.asarray(image, dtype=float)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILY_RUNS))
def test_each_family_trains_on_real_data(name, fashion, tmp_path):
    steps = FAMILY_RUNS[name]
    config = gankit.configure(
        name, steps=steps, batch_size=32, log_every=5, sample_every=steps, checkpoint_every=steps
    )
    trainer = Trainer(
        config, tmp_path, data=fashion.subset(5000), progress=False, tensorboard=False
    )
    result = trainer.fit()
    assert result.step == steps and not result.interrupted
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(5, steps + 1, 5))
    for row in rows:  # numbers are finite (a "warning" row field is text)
        assert all(math.isfinite(v) for k, v in row.items() if k != "warning"), row
    before, after = _grid(tmp_path, 0), _grid(tmp_path, steps)
    assert np.abs(before - after).mean() > 5.0  # samples moved away from the untrained ones
    if name in ("ae", "vae"):
        key = "loss/recon"
        assert rows[-1][key] < 0.7 * rows[0][key]  # reconstructions improve
        assert (tmp_path / "reconstructions" / f"step-{steps:08d}.png").exists()
    assert (tmp_path / "checkpoints" / f"step-{steps:08d}.safetensors").exists()


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_counters():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    b = Batches(images, None, 3, seed=7)
    epoch = torch.cat([b.next()[0].flatten() for _ in range(3)])
    assert sorted(epoch.tolist()) == sorted(set(epoch.tolist()))  # no repeats in an epoch
    after = [b.next()[0].flatten().tolist() for _ in range(5)]
    again = Batches(images, None, 3, seed=7)
    for _ in range(3):
        again.next()
    state = again.state()
    restored = Batches(images, None, 3, seed=7)
    restored.load_state(state)
    assert [restored.next()[0].flatten().tolist() for _ in range(5)] == after
    other = Batches(images, None, 3, seed=8)
    assert [other.next()[0].flatten().tolist() for _ in range(3)] != epoch.view(3, 3).tolist()


@pytest.mark.parametrize("sampler", ["epoch", "random"])
def test_processes_share_each_global_batch_disjointly_in_the_same_order(sampler):
    """With K processes each rank draws its part of the one-process batch: joined in rank
    order they are that batch, for every step, labels alike (the data-parallel contract)."""
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    labels = torch.arange(40) % 10
    single = Batches(images, labels, 8, seed=3, sampler=sampler)
    ranks = [Batches(images, labels, 8, seed=3, sampler=sampler, rank=r, world=4) for r in range(4)]
    for _ in range(12):  # past an epoch boundary
        x, y = single.next()
        parts = [b.next() for b in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert all(len(p[0]) == 2 for p in parts)
    with pytest.raises(ConfigError, match="multiple of 3"):
        Batches(images, labels, 8, seed=3, rank=0, world=3)


def _weights(model):
    return {f"{n}.{k}": v for n, m in model.nets.items() for k, v in m.state_dict().items()}


STABLE = ("images_per_s", "elapsed_s")  # wall-clock fields differ between runs


@pytest.mark.parametrize("name", ["wgan-001", "vae-000", "bigan-004", "dcgan"])
def test_resume_is_bit_exact(name, data_dir, tmp_path):
    """2N steps straight == N steps, stop, resume to 2N: same weights, same metrics rows."""
    settings = dict(
        steps=12,
        batch_size=16,
        log_every=2,
        sample_every=6,
        checkpoint_every=6,
        threads=2,  # a fixed count: the same float rounding in both runs
        data="fashion-mnist",
        data_dir=str(data_dir),
        data_limit=500,
    )
    straight = Trainer(
        gankit.configure(name, **settings), tmp_path / "a", progress=False, tensorboard=False
    )
    straight.fit()

    half = Trainer(
        gankit.configure(name, **settings | {"steps": 6}),
        tmp_path / "b",
        progress=False,
        tensorboard=False,
    )
    half.fit()
    resumed = launch(tmp_path / "b", changes={"steps": 12}, progress=False, tensorboard=False)
    assert resumed.step == 6
    resumed.fit()

    a, b = _weights(straight.model), _weights(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = [{k: v for k, v in r.items() if k not in STABLE} for r in read_metrics(tmp_path / "a")]
    again = [{k: v for k, v in r.items() if k not in STABLE} for r in read_metrics(tmp_path / "b")]
    assert strip == again


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_finishes_the_step_with_a_checkpoint_and_twice_stops_at_once(
    presses, fashion, tmp_path
):
    config = gankit.configure("gan-002", steps=50, batch_size=32, log_every=5, checkpoint_every=10)

    def interrupt(row):
        if row["step"] == 15:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)

    trainer = Trainer(
        config,
        tmp_path,
        data=fashion.subset(2000),
        callbacks=[interrupt],
        progress=False,
        tensorboard=False,
    )
    # as in a terminal: a background job (nohup, `&`) starts with SIGINT ignored, and a run
    # leaves an ignored signal ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if presses == 1:
            result = trainer.fit()
            assert result.interrupted and result.step == 15
            assert result.checkpoint.name == "step-00000015.safetensors"
        else:
            with pytest.raises(KeyboardInterrupt):
                trainer.fit()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
    newest = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1]
    step = 15 if presses == 1 else 10  # twice: no new checkpoint, the last one intact
    assert newest == f"step-{step:08d}.safetensors"
    assert (
        launch(tmp_path, progress=False, tensorboard=False, data=fashion.subset(2000)).step == step
    )


def test_non_finite_loss_stops_the_run_naming_step_network_and_checkpoint(fashion, tmp_path):
    config = gankit.configure("gan-002", steps=40, batch_size=32, log_every=5, checkpoint_every=10)
    trainer = Trainer(
        config,
        tmp_path,
        data=fashion.subset(2000),
        callbacks=[Poison(15, "discriminator")],
        progress=False,
        tensorboard=False,
    )
    good = tmp_path / "checkpoints" / "step-00000010.safetensors"
    with pytest.raises(
        TrainingDiverged,
        match=r"step 20: .*non-finite.*weights of .*"
        r"discriminator.*step-00000010.*untouched",
    ):
        trainer.fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000010.safetensors"]  # the last good one, untouched
    load_checkpoint(good)


def test_non_finite_weights_stop_the_run_before_a_checkpoint_is_written(fashion, tmp_path):
    """The EMA copy takes no part in any loss: only the weight check can see it go bad, and
    it must do so before the checkpoint due at the same step."""
    config = gankit.configure(
        "dcgan", steps=30, batch_size=32, log_every=10, checkpoint_every=5, sample_every=100
    )
    trainer = Trainer(
        config,
        tmp_path,
        data=fashion.subset(2000),
        callbacks=[Poison(10, "ema")],
        progress=False,
        tensorboard=False,
    )
    with pytest.raises(TrainingDiverged, match=r"step 10: the weights of ema hold NaN"):
        trainer.fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000005.safetensors"]
    assert all(
        math.isfinite(v)
        for r in read_metrics(tmp_path)
        for k, v in r.items()
        if k.startswith("loss/")
    )


def test_rollback_reloads_the_last_good_checkpoint_and_lowers_learning_rates(fashion, tmp_path):
    config = gankit.configure(
        "gan-002",
        steps=40,
        batch_size=32,
        log_every=5,
        checkpoint_every=10,
        on_divergence="rollback",
    )
    trainer = Trainer(
        config,
        tmp_path,
        data=fashion.subset(2000),
        callbacks=[Poison(15, "discriminator")],
        progress=False,
        tensorboard=False,
    )
    result = trainer.fit()
    assert result.step == 40
    trainer.check_weights()  # finite again: raises TrainingDiverged otherwise
    rows = read_metrics(tmp_path)
    rollbacks = [r for r in rows if "rollback" in r]
    assert rollbacks == [{"step": 10, "rollback": 1, "diverged_at": 20, "lr_scale": 0.5}]
    steps = [r["step"] for r in rows if "loss/D" in r]
    assert steps == list(range(5, 41, 5))  # the diverged rows were dropped, then redone
    for key, opt in trainer.optimizers.items():
        base = getattr(config.model, f"opt_{key}").lr
        assert all(g["lr"] == pytest.approx(0.5 * base) for g in opt.param_groups)
    assert load_checkpoint(result.checkpoint)[1]["lr_scale"] == 0.5


def test_rollbacks_are_bounded(fashion, tmp_path):
    config = gankit.configure(
        "gan-002",
        steps=40,
        batch_size=32,
        log_every=5,
        checkpoint_every=10,
        on_divergence="rollback",
        max_rollbacks=2,
    )
    trainer = Trainer(
        config,
        tmp_path,
        data=fashion.subset(2000),
        callbacks=[Poison(15, "discriminator", times=10)],
        progress=False,
        tensorboard=False,
    )
    with pytest.raises(TrainingDiverged, match="step 20"):
        trainer.fit()
    assert [r["lr_scale"] for r in read_metrics(tmp_path) if "rollback" in r] == [0.5, 0.25]


def test_length_from_epochs_counts_real_batches_per_step(fashion, tmp_path):
    config = gankit.configure("wgan-001", steps=0, epochs=1.0, batch_size=100)
    trainer = Trainer(
        config, tmp_path, data=fashion.subset(1000), progress=False, tensorboard=False
    )
    assert trainer.batches_per_step == 5  # five critic updates, each on a fresh batch
    assert trainer.total_steps == 2  # 1000 images / (5 × 100) per step


def test_data_that_does_not_fit_the_model_is_refused(tiny_data, tmp_path):
    from gankit.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"shape \(1, 28, 28\) but the model expects "
        r"\(1, 32, 32\)",
    ):
        Trainer(
            gankit.configure("gan", sets=["model.image_size=32"]),
            tmp_path,
            data=tiny_data,
            progress=False,
        )
    unlabelled = type(tiny_data)(tiny_data.images, None, "unlabelled", None)
    with pytest.raises(ConfigError, match="needs labels"):
        Trainer(gankit.configure("cgan"), tmp_path, data=unlabelled, progress=False)


def test_time_budget_stops_with_a_checkpoint_that_resumes(fashion, tmp_path, data_dir):
    config = gankit.configure(
        "gan-002",
        steps=100_000,
        batch_size=32,
        max_seconds=0.5,
        data="fashion-mnist",
        data_dir=str(data_dir),
        data_limit=2000,
    )
    result = Trainer(config, tmp_path, progress=False, tensorboard=False).fit()
    assert 0 < result.step < 100_000 and not result.interrupted
    assert result.checkpoint.name == f"step-{result.step:08d}.safetensors"
    resumed = launch(tmp_path, progress=False, tensorboard=False)
    assert resumed.step == result.step
    assert resumed.fit().step > result.step  # a second budget continues the same run


def test_an_unwritable_or_full_output_folder_is_refused_before_training(
    tiny_data, tmp_path, monkeypatch
):
    import shutil
    from collections import namedtuple

    from gankit.errors import ConfigError
    from gankit.runs import new_run_dir

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="not writable"):
        new_run_dir(blocker / "run", "x")  # a file where a parent folder should be
    config = gankit.configure("gan", steps=5, batch_size=16)
    trainer = Trainer(config, tmp_path / "run", data=tiny_data, progress=False, tensorboard=False)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * 2**20, 9 * 2**20, 2**20))
    with pytest.raises(ConfigError, match=r"has 1 MiB free but this run needs about \d+ MiB"):
        trainer.fit()
    assert trainer.step == 0 and not (tmp_path / "run" / "checkpoints").exists()


def test_a_row_logged_after_the_clock_stops_keeps_its_true_rate(monkeypatch):
    """The last row of a run stopped between logs (a time budget, a signal) is logged after
    the clock stops: its images/s covers the steps since the previous row, not ~0 s."""
    from gankit.training import guards

    now = [0.0]
    monkeypatch.setattr(guards.time, "perf_counter", lambda: now[0])
    clock = guards.Clock()
    now[0] = 1.0
    assert clock.lap(10) == pytest.approx(10.0)  # 10 steps in 1 s
    now[0] = 1.5
    clock.stop()  # 5 more steps happened in these 0.5 s
    assert clock.elapsed == pytest.approx(1.5)
    assert clock.lap(15) == pytest.approx(10.0)
    assert clock.elapsed == pytest.approx(1.5)  # not counted twice
    clock.restart(15)
    now[0] = 2.5
    assert clock.lap(25) == pytest.approx(10.0)
