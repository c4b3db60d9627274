"""The example scripts run, and elect one runner for their leader-only job."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HERE, Process

EXAMPLES = HERE.parent / "examples"


@pytest.mark.parametrize(("script", "leader_line", "database", "ready_line"), [
    ("cleanup_job.py", "cleaning up", "sqlite", "following"),
    ("apscheduler_shared_sqlalchemy.py", "sending the report", "sqlite", "replica ready"),
    ("apscheduler_shared_sqlalchemy.py", "sending the report", "postgresql", "replica ready"),
    ("apscheduler_asyncio.py", "rates refreshed", "sqlite", "campaigning for lease"),
])
def test_example_runs_its_job_on_one_of_two_replicas(
        spawn: Callable[..., Process], tmp_path: Path, script: str, leader_line: str,
        database: str, ready_line: str, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    if database == "postgresql":
        url = request.getfixturevalue("fresh_postgres_database")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "JOBS_DATABASE": url}
    first = spawn(str(EXAMPLES / script), env=env)
    assert first.wait_for_line(lambda line: leader_line in line, 30), first.output()
    second = spawn(str(EXAMPLES / script), env=env)
    # The follower has finished starting up (a state, not a line printed before it).
    assert second.wait_for_line(lambda line: ready_line in line, 30), second.output()
    for process in (second, first):  # the follower first, so it never takes over
        process.signal(signal.SIGINT)
        assert process.popen.wait(20) == 0, process.output()
    assert leader_line not in second.output()
    assert "Traceback" not in first.output() + second.output()
    assert "=None" not in first.output() + second.output()  # no half-known state printed


def test_shared_store_example_exits_cleanly_on_ctrl_c_during_start_up(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path),
           "JOBS_DATABASE": f"sqlite:///{tmp_path / 'jobs.sqlite'}"}
    replica = spawn(str(EXAMPLES / "apscheduler_shared_sqlalchemy.py"), env=env)
    # As soon as the interpreter has started (the signal handlers are set first in main()).
    assert replica.wait_for_line(lambda line: "campaigning for lease" in line, 30), \
        replica.output()
    replica.signal(signal.SIGINT)
    assert replica.popen.wait(20) == 0, replica.output()
    assert "Traceback" not in replica.output()
