"""`gankit table`: every model trained for the same time, scored alike, in one table."""

from __future__ import annotations

import json

import pytest

from gankit.cli import main
from gankit.tools.table import format_table, verdicts


@pytest.mark.slow
def test_the_table_command_trains_scores_and_writes_the_table(tmp_path, capsys, data_dir):
    out = tmp_path / "table"
    code = main(["table", "--models", "gan,gan-002", "--quick", "--seeds", "2", "--out", str(out)])
    assert code == 0
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
    assert table.strip() == capsys.readouterr().out.strip()
    assert "| `gan` |" in table and "| `gan-002` (reference) |" in table
    assert "beats gan-002" in table or "does not beat gan-002" in table


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
    assert (
        "| `gan` | 1 | 40.0 | 0.50 | 0.50 | 0.50 | 10 | **does not beat gan-002** (30) |"
        in format_table(report)
    )
