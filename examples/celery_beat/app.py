"""A Celery app whose periodic task is sent once, whichever replica runs beat.

Every replica runs ``celery -A app worker -B --scheduler singleton_jobs.celery:LeaderScheduler``
(a worker with beat embedded): all of them consume tasks, and the beat of only one of them — the
leader of the lease ``celery-beat-example`` on the Redis server — sends the periodic task. Stop
the leader and another replica's beat takes over: within one retry period after Ctrl+C or
SIGTERM, after the lease duration when it is killed.
"""

from __future__ import annotations

import os
import socket

from celery import Celery

REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("app", broker=REDIS)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_default_queue="celery-beat-example",
    beat_schedule={"send-report": {"task": "app.send_report", "schedule": 2.0}},
    # The lease: on the broker's Redis server by default (singleton_jobs_backend = "redis").
    singleton_jobs_lease_name="celery-beat-example",
    singleton_jobs_lease_duration=6,
    singleton_jobs_renew_deadline=4,
    singleton_jobs_retry_period=1,
)


@app.task(name="app.send_report", bind=True)
def send_report(self) -> None:  # type: ignore[no-untyped-def]
    token = (self.request.headers or {}).get("singleton_jobs_fencing_token")
    print(f"[{socket.gethostname()}:{os.getpid()}] report sent by the beat of term {token}",
          flush=True)
