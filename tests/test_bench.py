"""The fast paths against PyTorch's plain ones, and ``gankit bench`` end to end.

The bench's numbers depend on the machine and are not asserted here; what is asserted is
that the optimisations it measures leave training unchanged within float tolerance.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import gankit
from gankit.cli import main
from gankit.errors import GankitError
from gankit.tools import bench
from gankit.training import Trainer, uses_convolutions


def _trained(
    name: str, fast: bool, data, folder, steps: int = 1, seed: int = 3
) -> tuple[dict, dict]:
    """Parameters before and after ``steps`` steps."""
    config = gankit.configure(
        name,
        batch_size=32,
        steps=steps,
        seed=seed,
        log_every=1,
        sample_every=100,
        checkpoint_every=100,
        threads=2,
    )
    config.train.fast = fast
    trainer = Trainer(config, folder, data=data, progress=False, tensorboard=False)
    convolutional = uses_convolutions(trainer.model)
    assert trainer.memory_format == (
        torch.channels_last if fast and convolutional else torch.contiguous_format
    )

    def params() -> dict:
        return {
            f"{n}.{k}": p.detach().clone()
            for n, net in trainer.model.nets.items()
            for k, p in net.named_parameters()
        }

    before = params()
    for _ in range(steps):
        trainer.train_step()
    return before, params()


@pytest.mark.parametrize("name", ["gan", "dcgan", "vae", "gan-000", "bigan-004"])
def test_fast_path_trains_the_same_parameters_as_plain_pytorch(name, fashion, tmp_path):
    """Fused optimisers, channels-last convolutions, one spectral-norm weight per update and
    (for reuse_noise presets: the dcgan default, gan-000, bigan-004) G(z) reused from D's
    update: one step (D's update, then G's) lands on the same parameters as PyTorch's
    defaults, same seed and batch.

    Each tensor's update must agree to 2% of its size; another seed's differ by > 100%.
    The rounding of channels-last convolutions differs from NCHW's at 1e-7, but Adam moves
    each weight by about ±lr at first whatever the size of its gradient, so a weight whose
    gradient is near zero (a batch-norm scale, say) amplifies it: the MLPs agree to 1e-4,
    the conv nets to ~1e-2.
    """
    data = fashion.subset(512)
    start, fast = _trained(name, True, data, tmp_path / "fast")
    _, plain = _trained(name, False, data, tmp_path / "plain")
    assert fast.keys() == plain.keys()
    for key in fast:
        update = float((plain[key] - start[key]).norm())
        assert float((fast[key] - plain[key]).norm()) <= 0.02 * update + 1e-7, key
    # the comparison can fail: another seed's updates are far apart
    _, other = _trained(name, True, data, tmp_path / "other", seed=4)
    apart = sum(float((other[k] - fast[k]).norm()) for k in fast)
    assert apart > 0.5 * sum(float((fast[k] - start[k]).norm()) for k in fast)


def test_reuse_takes_g_of_z_from_the_d_update_and_runs_g_once_less(fashion, tmp_path):
    """gan-000 reuses D's noise: with the fast path its generator runs once per step."""
    from gankit.tools.flops import sample_flops, step_flops

    counts = {}
    for fast in (True, False):
        config = gankit.configure("gan-000", batch_size=32, steps=1)
        config.train.fast = fast
        trainer = Trainer(
            config,
            tmp_path / str(fast),
            data=fashion.subset(256),
            progress=False,
            tensorboard=False,
        )
        counts[fast] = step_flops(trainer)
        g_forward = sample_flops(trainer.model, 32)
    assert counts[False] - counts[True] == g_forward


def test_usual_way_baseline_trains_the_same_model(fashion):
    """The bench's baseline is a real training loop of the same networks: its D learns."""
    config = bench.preset_config("gan", bench.Settings(), "fashion-mnist")
    usual = bench.UsualWay(config, fashion.subset(640), torch.device("cpu"), batch_size=64)
    before = [p.detach().clone() for p in usual.model.parameters()]
    for _ in range(12):
        usual.train_step()
    assert len(usual.history) == 24  # one D and one G loss read back per step
    assert all(math.isfinite(v) for v in usual.history)
    after = list(usual.model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # the example-style data set yields the model's range: [-1, 1] for a tanh generator
    x, _ = usual.loader.dataset[0]
    assert x.shape == (1, 28, 28) and x.min() >= -1 and x.max() <= 1 and x.min() < -0.9


@pytest.mark.slow
def test_bench_quick_runs_end_to_end_and_writes_its_table(
    evaluation, data_dir, tmp_path, monkeypatch, capsys
):
    """``gankit bench --quick`` on three models: every section in the table, JSON rows with
    the documented fields. The values are not asserted (they are the machine's)."""
    monkeypatch.setenv("GANKIT_DATA", str(data_dir))
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--models", "gan,dcgan,vae", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for text in (
        "GEMM peak",
        "| gan |",
        "| dcgan |",
        "| vae |",
        "usual way",
        "evaluation of",
        "tutorial DCGAN",
        "gankit dcgan",
    ):
        assert text in table
    report = json.loads(out.read_text())
    assert [r["model"] for r in report["rows"]] == ["gan", "dcgan", "vae"]
    fields = (
        "model",
        "batch_size",
        "images_per_s",
        "baseline_images_per_s",
        "speedup",
        "gflop_per_step",
        "gemm_peak_gflops",
        "peak_fraction",
    )
    for row in report["rows"]:
        assert all(k in row for k in fields)
        assert row["images_per_s"] > 0 and row["gflop_per_step"] > 0
    assert {"tutorial", "gankit", "fid_ratio"} <= set(report["time_to_quality"])


def test_bench_refuses_unknown_models():
    with pytest.raises(GankitError, match="unknown nope"):
        bench.resolve_models("gan,nope")


def test_bf16_autocast_trains_close_to_fp32(fashion, tmp_path, capsys):
    """precision = bf16 runs the losses under autocast (on a CPU with a warning): a step
    lands near the fp32 one, not on it."""
    runs = {}
    for precision in ("fp32", "bf16"):
        config = gankit.configure("gan", batch_size=32, steps=1, seed=0, threads=2)
        config.train.precision = precision
        trainer = Trainer(
            config,
            tmp_path / precision,
            data=fashion.subset(256),
            progress=False,
            tensorboard=False,
        )
        start = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
        trainer.train_step()
        runs[precision] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert "bf16" in capsys.readouterr().err
    fp32, bf16 = runs["fp32"] - start, runs["bf16"] - start
    assert torch.isfinite(bf16).all() and not torch.equal(fp32, bf16)
    assert float((fp32 - bf16).norm()) < 0.5 * float(fp32.norm())
