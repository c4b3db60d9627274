"""gunicorn settings for tests/test_deploy.py: every worker campaigns under one explicit identity,
``POD_NAME`` (the mistake: the pod's name is shared by all of its worker processes)."""

from __future__ import annotations

import os
from typing import Any

from jobs import TIMINGS, start_scheduler

from singleton_jobs import FileElector


def post_fork(server: Any, worker: Any) -> None:
    timings = {name: float(os.environ[var]) for name, var in TIMINGS.items()}
    start_scheduler(FileElector(os.environ["LEASE_PATH"], identity=os.environ["POD_NAME"],
                                **timings))
