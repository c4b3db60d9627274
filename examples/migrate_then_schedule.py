"""A service that migrates its database once per fleet, then runs leader-only jobs.

    pip install "singleton_jobs[apscheduler]"            # APScheduler and SQLAlchemy
    python examples/migrate_then_schedule.py             # in two or three terminals
    JOBS_DATABASE=postgresql+psycopg://app@db/app python examples/migrate_then_schedule.py

At start-up every replica calls ``run_once(elector, "schema:2", migrate)``. One replica
migrates the schema while the others wait for it (they must not serve against the old schema);
if it dies half-way, another one runs the migration again, so it is one transaction. Once it
has completed, no replica runs it again, also after restarts: the mark is kept beside the lease,
in the same database. Then every replica starts its scheduler, whose report job runs on the
leader only and writes rows with its fencing token.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import timezone

import sqlalchemy
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text

from singleton_jobs import SQLElector, current_term, default_lease_dir, run_once
from singleton_jobs.apscheduler import LeaderOnlyJobStore

DATABASE_URL = os.environ.get("JOBS_DATABASE") or "sqlite:///" + os.path.join(
    default_lease_dir(), "migrate_then_schedule.sqlite")
engine = sqlalchemy.create_engine(DATABASE_URL)


def migrate() -> None:
    """Schema version 2: a reports table with the fencing token of the run that wrote each row.
    One transaction, so a replica killed half-way leaves nothing for the next one to trip on."""
    print(f"[{os.getpid()}] migrating the schema", flush=True)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS reports (written_by VARCHAR(300) "
                                "NOT NULL, fencing_token BIGINT NOT NULL)"))
        time.sleep(float(os.environ.get("MIGRATION_SECONDS", "2")))  # a big table takes a while
    print(f"[{os.getpid()}] schema migrated", flush=True)


def write_report() -> None:
    token = current_term().fencing_token
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO reports (written_by, fencing_token) "
                                "VALUES (:who, :token)"), {"who": str(os.getpid()), "token": token})
    print(f"[{os.getpid()}] report written (fencing token {token})", flush=True)


def main() -> None:
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    elector = SQLElector(engine, "reports", lease_duration=6, renew_deadline=4, retry_period=1)
    # Before serving anything: the schema this version needs, migrated by one replica.
    ran = run_once(elector, "schema:2", migrate, timeout=600)
    print(f"[{os.getpid()}] schema ready ({'migrated here' if ran else 'by another replica'})",
          flush=True)
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_jobstore(LeaderOnlyJobStore(elector), "leader")
    scheduler.add_job(write_report, "interval", seconds=2, jobstore="leader")
    scheduler.start()  # also starts the elector
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        scheduler.shutdown()  # stops the elector too, releasing the lease


if __name__ == "__main__":
    main()
