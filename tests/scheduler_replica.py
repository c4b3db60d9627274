"""One replica of a service with an APScheduler scheduler, for the multi-process tests.

Every replica adds the same jobs at start-up, the way the README recommends (a shared store: add
after ``start()`` and ignore ``ConflictingIdError``; a per-replica store: add before), and
journals each executed run as ``pid job_id scheduled_run_time`` through an event listener;
``MISSED`` and ``SKIPPED`` lines record misfires and follower skips.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from datetime import datetime, timezone

from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from singleton_jobs import FileElector
from singleton_jobs.apscheduler import (
    EVENT_JOB_SKIPPED_NOT_LEADER,
    EVENT_LEADERSHIP_GAINED,
    EVENT_LEADERSHIP_LOST,
    LeaderOnlyJobStore,
)

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)  # a common grid for every replica's schedule


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("lease")
    parser.add_argument("journal")
    parser.add_argument("--store", choices=["sqlalchemy", "memory"], default="sqlalchemy")
    parser.add_argument("--db")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--per-replica-job", action="store_true")
    parser.add_argument("--blocking", action="store_true")
    parser.add_argument("--lease-duration", type=float, default=2.0)
    parser.add_argument("--renew-deadline", type=float, default=1.0)
    parser.add_argument("--retry-period", type=float, default=0.1)
    parser.add_argument("--grace", type=int, default=1, help="the job's misfire_grace_time")
    parser.add_argument("--no-coalesce", action="store_true")
    parser.add_argument("--die-on-submit", action="store_true",
                        help="exit abruptly the moment the first run is handed to the executor")
    args = parser.parse_args()

    journal = os.open(args.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(text: str) -> None:
        os.write(journal, f"{os.getpid()} {text}\n".encode())

    def on_event(event: object) -> None:
        code = getattr(event, "code", 0)
        if code == EVENT_JOB_EXECUTED:
            write(f"RUN {event.job_id} {event.scheduled_run_time.timestamp():.3f}")  # type: ignore[attr-defined]
        elif code == EVENT_JOB_MISSED:
            write(f"MISSED {event.job_id} {event.scheduled_run_time.timestamp():.3f}")  # type: ignore[attr-defined]
        elif code == EVENT_JOB_SKIPPED_NOT_LEADER:
            write(f"SKIPPED {event.job_id} {event.scheduled_run_times[-1].timestamp():.3f}")  # type: ignore[attr-defined]
        elif code in (EVENT_LEADERSHIP_GAINED, EVENT_LEADERSHIP_LOST):
            state = "GAINED" if code == EVENT_LEADERSHIP_GAINED else "LOST"
            print(f"{state} {time.monotonic():.6f}", flush=True)

    elector = FileElector(args.lease, identity=f"replica-{os.getpid()}",
                          lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
                          retry_period=args.retry_period)
    if args.store == "sqlalchemy":
        inner = SQLAlchemyJobStore(url=f"sqlite:///{args.db}")
    else:
        inner = MemoryJobStore()
    scheduler_class = BlockingScheduler if args.blocking else BackgroundScheduler
    scheduler = scheduler_class(timezone=timezone.utc)
    if args.die_on_submit:
        class DyingExecutor(ThreadPoolExecutor):  # type: ignore[misc]
            def _do_submit_job(self, job: object, run_times: list[datetime]) -> None:
                write(f"SUBMITTED {getattr(job, 'id', '?')} {run_times[-1].timestamp():.3f}")
                os._exit(3)  # dies between handing the run over and recording it as done

        scheduler.add_executor(DyingExecutor(), "default")
    scheduler.add_jobstore(LeaderOnlyJobStore(elector, inner), "leader")
    scheduler.add_listener(on_event)

    def add_leader_job() -> None:
        scheduler.add_job("aps_jobs:record_run", "interval", seconds=args.interval,
                          start_date=EPOCH, args=[args.journal + ".bodies", "leader"],
                          id="leader-job", jobstore="leader", misfire_grace_time=args.grace,
                          coalesce=not args.no_coalesce)

    if args.store == "memory":
        add_leader_job()
    if args.per_replica_job:
        scheduler.add_job("aps_jobs:record_run", "interval", seconds=args.interval,
                          start_date=EPOCH, args=[args.journal + ".bodies", "local"],
                          id="local-job")

    # A flag, not a threading.Event: Event.set() in a signal handler can deadlock with the
    # Event.wait() the handler interrupted (both take the same non-reentrant lock).
    terminated: list[int] = []

    def on_term(signum: int, frame: object) -> None:
        terminated.append(signum)
        if args.blocking:
            raise KeyboardInterrupt  # leaves BlockingScheduler.start(), as Ctrl+C does

    signal.signal(signal.SIGTERM, on_term)
    if args.blocking:
        print(f"STARTED {time.monotonic():.6f}", flush=True)
    try:
        scheduler.start()  # BlockingScheduler returns only after shutdown
    except KeyboardInterrupt:
        pass
    if not args.blocking:
        if args.store == "sqlalchemy":
            try:
                add_leader_job()
            except ConflictingIdError:
                pass  # another replica added it first: the shared schedule stands
        print(f"STARTED {time.monotonic():.6f}", flush=True)
        while not terminated:
            time.sleep(0.05)
    if scheduler.running:
        scheduler.shutdown()
    elector.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
