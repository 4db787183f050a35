"""`gankit table`: every model trained for the same time, scored alike, in one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gankit
from gankit.cli import main
from gankit.config import to_dict
from gankit.errors import ConfigError
from gankit.presets import preset_names
from gankit.tools.table import finished_row, format_table, table_models, verdicts


def _table(capsys, *args: str) -> tuple[dict, str]:
    """Run ``gankit table ARGS --quick``; the report and what it logged."""
    assert main(["table", *args, "--quick"]) == 0
    out = args[args.index("--out") + 1]
    return json.loads((Path(out) / "table.json").read_text()), capsys.readouterr().err


def _stamps(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_the_table_command_trains_scores_and_writes_the_table(tmp_path, capsys, data_dir):
    out = tmp_path / "table"
    report, _ = _table(capsys, "--models", "gan", "--seeds", "1", "--out", str(out))
    first = _stamps(out / "gan-s0")
    # run again with more seeds and models: the finished run is reused, the rest trained
    code = main(["table", "--models", "gan,gan-002", "--quick", "--seeds", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert "gan (seed 0): scored before with the same config, reusing" in printed.err
    assert _stamps(out / "gan-s0") == first  # not trained or scored again
    report = json.loads((out / "table.json").read_text())
    assert [row["model"] for row in report["rows"]] == ["gan", "gan-002"]
    for row in report["rows"]:
        assert len(row["runs"]) == 2 and row["steps"] > 0
        assert row["fid"] > 0 and row["fid_std"] is not None  # two seeds: mean ± std
        for run in row["runs"]:  # each run trained for the budget and kept its folder
            assert 4 < run["train_s"] < 30
            assert any((out / f"{row['model']}-s{run['seed']}" / "checkpoints").iterdir())
    assert report["evaluator"]["evaluator"]["origin"] == "shipped"
    table = (out / "table.md").read_text()
    assert table.strip() == printed.out.strip()
    assert "| `gan` |" in table and "| `gan-002` (reference) |" in table
    assert "beats gan-002" in table or "does not beat gan-002" in table

    # a run killed before it was scored leaves no row: the next table trains it again
    (out / "gan-002-s1" / "table-row.json").unlink()
    report, log = _table(capsys, "--models", "gan-002", "--seeds", "2", "--out", str(out))
    assert "gan-002 (seed 0): scored before" in log
    assert "gan-002 (seed 1): " + str(out / "gan-002-s1") + " holds no row" in log
    assert (out / "gan-002-s1" / "table-row.json").is_file()
    assert report["rows"][0]["runs"][1]["steps"] > 0


def test_a_table_row_is_reused_only_for_the_same_settings_and_config(tmp_path):
    made = {"settings": {"minutes": 5.0, "seeds": 1}, "config": {"model": {"n_critic": 1}}}
    row = {"seed": 0, "steps": 100, "fid": 50.0}
    (tmp_path / "table-row.json").write_text(json.dumps(made | {"row": row}))
    assert finished_row(tmp_path, made) == row
    other_config = made | {"config": {"model": {"n_critic": 2}}}  # the preset changed since
    assert finished_row(tmp_path, other_config) is None
    assert finished_row(tmp_path, made | {"settings": {"minutes": 1.0, "seeds": 1}}) is None
    (tmp_path / "table-row.json").write_text('{"settings": {"minutes"')  # cut short
    assert finished_row(tmp_path, made) is None
    assert finished_row(tmp_path / "missing", made) is None


def test_the_table_refuses_to_replace_a_folder_that_is_not_a_run(tmp_path, capsys):
    stranger = tmp_path / "table" / "gan-002-s0"
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("mine")
    code = main(["table", "--models", "gan-002", "--quick", "--out", str(tmp_path / "table")])
    assert code != 0
    assert f"{stranger} exists and is not a run folder; move it away" in capsys.readouterr().err
    assert (stranger / "notes.txt").read_text() == "mine"


def test_each_default_is_judged_against_its_best_reference():
    rows = [
        {
            "model": m,
            "default": d,
            "fid": f,
            "steps": 1,
            "precision": 0.5,
            "recall": 0.5,
            "coverage": 0.5,
            "classes_covered": 10,
            "runs": [{"cpu": "CPU B" if m == "cgan" else "CPU A"}],
        }
        for m, d, f in (
            ("gan", True, 40.0),
            ("gan-000", False, 90.0),
            ("gan-002", False, 30.0),
            ("dcgan", True, 20.0),
            ("dcgan-001", False, 120.0),
            ("cgan", True, 25.0),
        )
    ]
    report = {
        "rows": rows,
        "settings": {"minutes": 5, "data": "fashion-mnist", "eval_n": 10, "seeds": 1},
        "evaluator": {"evaluator": {"data": "fashion-mnist", "key": "k", "origin": "shipped"}},
        "machine": {"cpu": "cpu", "threads": 2},
    }
    assert verdicts(report) == {
        "gan": "**does not beat gan-002** (30)",
        "dcgan": "beats dcgan-001 (120)",
    }  # cgan has no reference
    rows[-1] |= {"label_accuracy": 0.905, "label_accuracy_std": None}
    table = format_table(report)
    assert (
        "| `gan` | 1 | 40.0 | 0.50 | 0.50 | 0.50 | 10 |  | **does not beat gan-002** (30) |"
        in table
    )
    assert "| `cgan` | 1 | 25.0 | 0.50 | 0.50 | 0.50 | 10 | label acc 0.91 |  |" in table
    assert "; CPU A and CPU B, 2 threads." in table.splitlines()[0]  # rows from two machines


def test_the_table_trains_the_presets_and_refuses_a_bench_shape():
    assert table_models(None) == preset_names()  # every default and reference, no bench rows
    assert table_models("gan, gan-002") == ["gan", "gan-002"]
    with pytest.raises(ConfigError, match="dcgan:3x32: the table trains every model on --data"):
        table_models("dcgan,dcgan:3x32")
    with pytest.raises(ConfigError, match="unknown gann"):
        table_models("gann")


def test_a_row_made_before_a_setting_existed_is_reused_at_its_default(tmp_path):
    def made(**overrides) -> dict:
        config = json.loads(json.dumps(to_dict(gankit.configure("gan-002", **overrides))))
        return {"settings": {"minutes": 5.0}, "config": config}

    row = {"seed": 0, "steps": 100, "fid": 50.0}
    stored = made()
    del stored["config"]["model"]["pack"]  # written by a gankit without the setting
    (tmp_path / "table-row.json").write_text(json.dumps(stored | {"row": row}))
    assert finished_row(tmp_path, made()) == row  # the new setting at its default
    assert finished_row(tmp_path, made(pack=2)) is None  # the new setting changed
    assert finished_row(tmp_path, made(n_critic=2)) is None
    stored["config"]["model"]["dropped"] = 1  # a setting gankit no longer has
    (tmp_path / "table-row.json").write_text(json.dumps(stored | {"row": row}))
    assert finished_row(tmp_path, made()) is None


def test_a_row_is_reused_after_its_preset_was_only_reworded(tmp_path):
    config = json.loads(json.dumps(to_dict(gankit.configure("gan-002"))))
    made = {"settings": {"minutes": 5.0}, "config": config}
    row = {"seed": 0, "steps": 100, "fid": 50.0}
    (tmp_path / "table-row.json").write_text(json.dumps(made | {"row": row}))
    reworded = json.loads(json.dumps(made))
    reworded["config"]["description"] = config["description"] + " Now with a sweep behind it."
    assert finished_row(tmp_path, reworded) == row  # prose about the run is not the run
    retuned = json.loads(json.dumps(reworded))
    retuned["config"]["model"]["opt_g"]["lr"] = 0.5
    assert finished_row(tmp_path, retuned) is None
