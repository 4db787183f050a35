"""The README's test command works as a newcomer types it, from any working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA_DIR, REPO


def readme_test_command() -> str:
    """The one-line command under "Run the tests" in the README (what `.ci/run` runs)."""
    text = (REPO / "README.md").read_text()
    found = re.search(r"^Run the tests.*?^```bash\n(.+?)\n```", text, re.S | re.M)
    assert found, "README.md has no ```bash block after 'Run the tests'"
    return found.group(1)


def test_ci_runs_the_readme_command_as_written():
    command = readme_test_command()
    assert command.startswith("python3 -m venv .venv && ") and " -m pytest" in command
    done = subprocess.run(  # .ci/run's own extraction, on the README as it is
        [
            "bash",
            "-c",
            "awk '/^Run the tests/ {found = 1} found && /^```bash$/ {getline; "
            "print; exit}' README.md",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == command
    assert 'bash -c "$command"' in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_a_relative_data_path_reaches_gankit_started_in_another_folder(tmp_path):
    """The README's `GANKIT_DATA=../shared/data` is relative to the clone; a test harness
    running pytest that way must hand gankit processes started elsewhere a path that works."""
    if os.environ.get("GANKIT_NESTED_README_TEST"):  # the inner run: the actual check
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gankit",
                "train",
                "gan-002",
                "--data",
                "fashion-mnist",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        return
    relative = os.path.relpath(DATA_DIR, REPO)  # ../shared/data in the usual layout
    inner = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/integration/test_readme.py::"
            "test_a_relative_data_path_reaches_gankit_started_in_another_folder",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ
        | {
            "GANKIT_DATA": relative if not Path(relative).is_absolute() else str(DATA_DIR),
            "GANKIT_NESTED_README_TEST": "1",
        },
    )
    assert inner.returncode == 0, inner.stdout[-3000:]
    assert "1 passed" in inner.stdout
