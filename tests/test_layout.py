"""The code's shape, checked like its behaviour: imports run one way through the layers
declared in pyproject.toml (import-linter), and ruff finds nothing to fix or reformat."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' installs it")
    return path


def test_imports_follow_the_layers():
    done = subprocess.run(
        [tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the package where a model imports the training loop."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "src", copy / "src")
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    base = copy / "src" / "gankit" / "models" / "base.py"
    base.write_text(base.read_text() + "\nfrom gankit.training import loop  # noqa\n")
    done = subprocess.run(
        [tool("lint-imports"), "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(copy / "src"), "PATH": str(BIN)},
    )
    assert done.returncode != 0
    assert "gankit.models is not allowed to import gankit.training" in done.stdout


def test_ruff_finds_nothing():
    for argv in (["check", "src", "tests"], ["format", "--check", "src", "tests"]):
        done = subprocess.run([tool("ruff"), *argv], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, f"ruff {' '.join(argv)}:\n{done.stdout[-3000:]}"
