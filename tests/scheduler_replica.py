"""One replica of a service with an APScheduler scheduler, for the multi-process tests.

Every replica adds the same jobs at start-up, as the documentation says (a shared store: add
after ``start()`` and ignore ``ConflictingIdError``; a per-replica store: add before), and
journals each executed run as ``pid job_id scheduled_run_time`` through an event listener;
``MISSED`` and ``SKIPPED`` lines record misfires and follower skips.

``--pause-after-read N`` makes the replica stop itself with SIGSTOP right after its Nth
non-empty read of due jobs from the shared store, before it claims them (``PAUSED`` line with
the first due run's scheduled time); once continued it journals ``HANDED leader <n>``: how many
jobs the LeaderOnlyJobStore then handed to the scheduler to run.
"""

from __future__ import annotations

import argparse
import faulthandler
import multiprocessing
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.executors.pool import ProcessPoolExecutor, ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from filelock import FileLock

from singleton_jobs import Elector, FileElector, SQLElector
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
    parser.add_argument("--database-url", help="one database for jobs and lease (a SQLElector "
                                               "named after LEASE's file name)")
    parser.add_argument("--jobs-table", default="apscheduler_jobs")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--per-replica-job", action="store_true")
    parser.add_argument("--blocking", action="store_true")
    parser.add_argument("--lease-duration", type=float, default=2.0)
    parser.add_argument("--renew-deadline", type=float, default=1.0)
    parser.add_argument("--retry-period", type=float, default=0.1)
    parser.add_argument("--grace", type=int, default=1, help="the job's misfire_grace_time")
    parser.add_argument("--no-coalesce", action="store_true")
    parser.add_argument("--max-instances", type=int, default=1, help="the job's max_instances")
    parser.add_argument("--die-on-submit", action="store_true",
                        help="exit abruptly the moment the first run is handed to the executor")
    parser.add_argument("--executor", choices=["thread", "processpool-fork"], default="thread",
                        help="processpool-fork: run jobs in a process pool forked from the replica")
    parser.add_argument("--pause-after-read", type=int, default=0, metavar="N",
                        help="SIGSTOP this process right after its Nth non-empty due-jobs read")
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: every thread's stack, on stderr

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

    timings = dict(lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
                   retry_period=args.retry_period)
    elector: Elector
    if args.database_url:
        elector = SQLElector(args.database_url, os.path.basename(args.lease),
                             identity=f"replica-{os.getpid()}", **timings)
    else:
        elector = FileElector(args.lease, identity=f"replica-{os.getpid()}", **timings)
    handed_after_pause: list[int] = []  # empty until this replica paused itself

    class PausingSQLAlchemyJobStore(SQLAlchemyJobStore):  # type: ignore[misc]
        """The real store; the Nth read that finds due jobs stops the process before it
        returns: a replica paused (GC, a stuck disk, SIGSTOP) while it waited on the database."""

        reads = 0

        def get_due_jobs(self, now: datetime) -> list[Any]:
            jobs: list[Any] = super().get_due_jobs(now)
            if jobs and args.pause_after_read:
                self.reads += 1
                if self.reads == args.pause_after_read:
                    first = min(job.next_run_time for job in jobs)
                    # Not while the elector is inside the lease file's critical section: a
                    # process stopped there blocks every writer of the lease until it continues
                    # (the file backend's documented caveat), and nobody could take over.
                    with FileLock(getattr(elector.store, "lock_path", args.lease + ".lock")):
                        write(f"PAUSED leader {first.timestamp():.3f}")
                    # Directed at this thread, so that this thread stops the process before
                    # it runs another line: a SIGSTOP sent to the process is taken by the main
                    # thread, and this one could go on and claim meanwhile.
                    signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
                    handed_after_pause.append(-1)
            return jobs

    class ReportingLeaderOnlyJobStore(LeaderOnlyJobStore):
        """Journals what the wrapper hands to the scheduler in the pass that was paused."""

        def get_due_jobs(self, now: datetime) -> list[Any]:
            due: list[Any] = super().get_due_jobs(now)
            if handed_after_pause == [-1]:
                handed_after_pause[0] = len(due)
                write(f"HANDED leader {len(due)}")
            return due

    if args.store == "sqlalchemy":
        inner = PausingSQLAlchemyJobStore(url=args.database_url or f"sqlite:///{args.db}",
                                          tablename=args.jobs_table)
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
    if args.executor == "processpool-fork":
        # APScheduler's ProcessPoolExecutor uses "spawn" unless told otherwise; "fork" is
        # Python's default on Linux: workers start as copies of this replica, elector included.
        scheduler.add_executor(ProcessPoolExecutor(2, pool_kwargs={
            "mp_context": multiprocessing.get_context("fork")}), "default")
    scheduler.add_jobstore(ReportingLeaderOnlyJobStore(elector, inner), "leader")
    scheduler.add_listener(on_event)

    def add_leader_job() -> None:
        # In a process pool, the body also journals which replica's pool it ran in.
        body = ("aps_jobs:record_run_with_parent" if args.executor == "processpool-fork"
                else "aps_jobs:record_run")
        scheduler.add_job(body, "interval", seconds=args.interval,
                          start_date=EPOCH, args=[args.journal + ".bodies", "leader"],
                          id="leader-job", jobstore="leader", misfire_grace_time=args.grace,
                          coalesce=not args.no_coalesce, max_instances=args.max_instances)

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
