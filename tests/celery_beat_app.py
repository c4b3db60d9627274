"""The Celery app of tests/test_celery.py and benchmarks/celery_beat.py, configured by the
environment so that every test has its own queue and lease.

One periodic entry, ``tick``, every ``BEAT_INTERVAL`` seconds. Its arguments are evaluated when
beat sends it (``BeatLazyFunc``): the wall-clock time of the send and the sending beat's pid.
The worker appends ``<sent_at> <beat pid> <fencing token> <received_at>`` to ``BEAT_JOURNAL`` for
every message it receives, in one ``O_APPEND`` write.

BEAT_BROKER (default redis://127.0.0.1:6379/0), BEAT_QUEUE, BEAT_LEASE (the lease's name),
BEAT_LEASE_URL (the Redis server of the lease, default the broker's), BEAT_INTERVAL,
BEAT_LEASE_DURATION / BEAT_RENEW_DEADLINE / BEAT_RETRY_PERIOD, BEAT_MAX_LOOP_INTERVAL (seconds;
0: Celery's default), BEAT_JOURNAL; BEAT_REDBEAT (and BEAT_REDBEAT_LOCK_TIMEOUT) configure
celery-redbeat instead, for the benchmark.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from celery import Celery
from celery.beat import BeatLazyFunc

app = Celery("celery_beat_app", broker=os.environ.get("BEAT_BROKER", "redis://127.0.0.1:6379/0"))
QUEUE = os.environ.get("BEAT_QUEUE", "beat-test")
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    beat_max_loop_interval=float(os.environ.get("BEAT_MAX_LOOP_INTERVAL", "1")) or None,
    singleton_jobs_url=os.environ.get("BEAT_LEASE_URL") or None,
    singleton_jobs_lease_name=os.environ.get("BEAT_LEASE", "celery-beat-test"),
    singleton_jobs_lease_duration=float(os.environ.get("BEAT_LEASE_DURATION", "2")),
    singleton_jobs_renew_deadline=float(os.environ.get("BEAT_RENEW_DEADLINE", "1")),
    singleton_jobs_retry_period=float(os.environ.get("BEAT_RETRY_PERIOD", "0.2")),
    beat_schedule={
        "tick": {
            "task": "celery_beat_app.tick",
            "schedule": timedelta(seconds=float(os.environ.get("BEAT_INTERVAL", "1"))),
            # Arguments a schedule kept in Redis (redbeat's) cannot hold: BEAT_PLAIN leaves them
            # out, and the worker notes the time it received the message instead.
            "args": () if os.environ.get("BEAT_PLAIN") else (BeatLazyFunc(time.time),
                                                             BeatLazyFunc(os.getpid)),
        },
    },
)
if os.environ.get("BEAT_REDBEAT"):  # the peer compared in benchmarks/celery_beat.py
    app.conf.redbeat_redis_url = os.environ.get("BEAT_LEASE_URL") or app.conf.broker_url
    app.conf.redbeat_key_prefix = os.environ.get("BEAT_LEASE", "redbeat")
    if os.environ.get("BEAT_REDBEAT_LOCK_TIMEOUT"):
        app.conf.redbeat_lock_timeout = int(os.environ["BEAT_REDBEAT_LOCK_TIMEOUT"])
    for key in [key for key in app.conf if key.startswith("singleton_jobs_")]:
        del app.conf[key]


@app.task(bind=True, name="celery_beat_app.tick")
def tick(self, sent_at: float | None = None,  # type: ignore[no-untyped-def]
         beat_pid: int | None = None) -> None:
    headers = self.request.headers or {}
    token = headers.get("singleton_jobs_fencing_token",
                        getattr(self.request, "singleton_jobs_fencing_token", None))
    received = time.time()
    line = f"{sent_at or received:.6f} {beat_pid or 0} {token} {received:.6f}\n"
    journal = os.open(os.environ["BEAT_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(journal, line.encode())
    finally:
        os.close(journal)
