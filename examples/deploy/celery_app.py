"""A Celery prefork worker whose main process schedules; its pool children only execute tasks.

    cd examples/deploy
    celery -A celery_app worker -c 3          # on every host; Redis at CELERY_BROKER_URL

The worker's main process (one per host or pod, never recycled) creates the elector and the
scheduler when it is ready, which is after the prefork pool forked its children. On the
leading worker the scheduler enqueues ``deliver_report``, and any pool child of any worker may
execute it: the enqueueing is what runs once. Children forked later (``--max-tasks-per-child``,
a crashed child) inherit the elector dead and never campaign. A warm shutdown (SIGTERM)
releases the lease.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutting_down
from jobs import make_elector, nightly_report, start_scheduler

app = Celery("reports", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.task_default_queue = os.environ.get("REPORT_QUEUE", "reports")
app.conf.task_ignore_result = True


@app.task
def deliver_report(token: int) -> None:
    """Runs in a pool child. ``token`` is the fencing token of the run that enqueued it."""
    print(f"[{os.getpid()}] delivered report {token}", flush=True)


def schedule_report() -> None:
    token = nightly_report()  # runs on the leading worker only; None elsewhere
    if token is not None:
        deliver_report.delay(token)


_stop_scheduler = None


@worker_ready.connect
def start_scheduling(**kwargs: Any) -> None:
    global _stop_scheduler
    _stop_scheduler = start_scheduler(make_elector(), job=schedule_report)


@worker_shutting_down.connect
def stop_scheduling(**kwargs: Any) -> None:
    if _stop_scheduler is not None:
        _stop_scheduler()
