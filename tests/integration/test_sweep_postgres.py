"""A sweep on PostgreSQL, the storage that workers on many machines share: the test starts a
throw-away server on 127.0.0.1 (Debian's postgresql package; .ci/run installs it)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from test_sweep import check_run_folder, finish, spawn_worker

from gankit.tools.sweep import sweep_report


def server_binaries() -> Path | None:
    """The newest PostgreSQL server's bin folder (initdb, pg_ctl), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    path = found[-1] if found else shutil.which("pg_ctl")
    return Path(path).parent if path and (Path(path).parent / "initdb").exists() else None


def server_user() -> list[str]:
    """The command prefix that runs the server as a user other than root (which PostgreSQL
    refuses), or [] when we are not root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip(
            "running as root without runuser: PostgreSQL refuses to run as root and "
            "there is no way here to start it as another user"
        )
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return [runuser, "-u", name, "--"]
    pytest.skip(
        "running as root with neither a 'postgres' nor a 'nobody' user to start "
        "PostgreSQL as (it refuses to run as root)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres() -> Iterator[str]:
    """The URL of a new database on a private PostgreSQL server, stopped afterwards."""
    bindir = server_binaries()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin "
            "or on PATH: install them with `apt-get install postgresql` (.ci/run does)"
        )
    as_user = server_user()
    folder = Path(tempfile.mkdtemp(prefix="gankit-pg-"))  # in /tmp: the server's user can reach
    if as_user:
        shutil.chown(folder, as_user[2])
    data, log, port = folder / "data", folder / "server.log", free_port()

    def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*as_user, *argv], capture_output=True, text=True, check=check, timeout=60
        )

    try:
        init = run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "gankit",
            "--no-sync",
            check=False,
        )
        if init.returncode:
            pytest.skip(f"initdb failed, so no PostgreSQL server here: {init.stderr[-500:]}")
        start = run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
            check=False,
        )
        if start.returncode:
            text = log.read_text()[-500:] if log.exists() else start.stderr[-500:]
            pytest.skip(f"the PostgreSQL server did not start: {text}")
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "gankit", "sweep"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql+psycopg2://gankit@127.0.0.1:{port}/sweep"
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(postgres, evaluation, data_dir, tmp_path):
    argv = [
        "--param",
        "lr=loguniform:1e-4:1e-3",
        "--trials",
        "2",
        "--storage",
        postgres,
        "--study",
        "pg",
        "--pruner",
        "none",
        "--heartbeat",
        "5",
    ]
    workers = [spawn_worker(tmp_path, data_dir, *argv) for _ in range(2)]
    logs = [finish(w) for w in workers]

    trials = optuna.load_study(study_name="pg", storage=postgres).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], logs
    assert sorted(t.user_attrs["config"] for t in trials) == [0, 1]
    for trial in trials:
        check_run_folder(trial)
    report = sweep_report(postgres, "pg", tmp_path / "plot.png")
    assert sorted(c["fid"] for c in report.configs) == pytest.approx(
        sorted(t.value for t in trials)
    )
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
