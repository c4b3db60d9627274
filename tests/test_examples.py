"""The example scripts run, and elect one runner for their leader-only job."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HERE, Process

EXAMPLES = HERE.parent / "examples"


@pytest.mark.parametrize(("script", "leader_line"), [
    ("cleanup_job.py", "cleaning up"),
    ("apscheduler_shared_sqlalchemy.py", "sending the report"),
    ("apscheduler_asyncio.py", "rates refreshed"),
])
def test_example_runs_its_job_on_one_of_two_replicas(
        spawn: Callable[..., Process], tmp_path: Path, script: str, leader_line: str) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path),
           "JOBS_DATABASE": f"sqlite:///{tmp_path / 'jobs.sqlite'}"}
    first = spawn(str(EXAMPLES / script), env=env)
    assert first.wait_for_line(lambda line: leader_line in line, 30), first.output()
    second = spawn(str(EXAMPLES / script), env=env)
    assert second.wait_for_line(lambda line: "campaigning for lease" in line, 30), second.output()
    for process in (second, first):  # the follower first, so it never takes over
        process.signal(signal.SIGINT)
        assert process.popen.wait(20) == 0, process.output()
    assert leader_line not in second.output()
    assert "Traceback" not in first.output() + second.output()
