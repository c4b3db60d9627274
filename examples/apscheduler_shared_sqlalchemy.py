"""Several replicas share one database for their jobs and their lease; each scheduled run happens
exactly once.

    pip install "singleton_jobs[apscheduler]"            # APScheduler and SQLAlchemy
    python examples/apscheduler_shared_sqlalchemy.py     # in two or three terminals
    JOBS_DATABASE=postgresql+psycopg://app@db/app python examples/apscheduler_shared_sqlalchemy.py

Every replica runs the same scheduler. The report job lives in the shared store, wrapped in a
LeaderOnlyJobStore: only the leader runs it, and after the leader dies the next one continues
from the schedule stored in the database. The lease is a row in the same database (SQLElector),
so replicas on several hosts need nothing but the database they already share; the default
SQLite file serves the processes of one host. The heartbeat job lives in the scheduler's
ordinary memory store and runs on every replica.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import timezone

from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from singleton_jobs import SQLElector, default_lease_dir
from singleton_jobs.apscheduler import LeaderOnlyJobStore

# Every replica must point at the same database: for the jobs and for the lease. The default
# SQLite file lives in the per-user lease directory, so replicas started from any directory
# share it.
DATABASE_URL = os.environ.get("JOBS_DATABASE") or "sqlite:///" + os.path.join(
    default_lease_dir(), "apscheduler_shared_sqlalchemy.sqlite")


def send_report() -> None:
    print(f"[{os.getpid()}] sending the report (this replica leads)", flush=True)


def heartbeat() -> None:
    print(f"[{os.getpid()}] local heartbeat (every replica)", flush=True)


def main() -> None:
    # Ctrl+C (or SIGTERM) at any moment, even during start-up, only asks the loop below to end:
    # start-up completes, then the scheduler shuts down and the lease is released.
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    elector = SQLElector(DATABASE_URL, "report-sender", lease_duration=6, renew_deadline=4,
                         retry_period=1)
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_jobstore(LeaderOnlyJobStore(elector, SQLAlchemyJobStore(url=DATABASE_URL)),
                           "leader")
    scheduler.add_job(heartbeat, "interval", seconds=5)  # default store: runs everywhere
    scheduler.start()  # also starts the elector
    try:
        try:
            # Shared store: add after start(); keep the schedule another replica stored.
            scheduler.add_job(send_report, "interval", seconds=3, id="report",
                              jobstore="leader", coalesce=True, misfire_grace_time=10)
        except ConflictingIdError:
            pass
        print(f"[{os.getpid()}] replica ready (Ctrl+C to stop)", flush=True)
        while not stop:
            time.sleep(0.2)
    finally:
        scheduler.shutdown()  # stops the elector too, releasing the lease


if __name__ == "__main__":
    main()
