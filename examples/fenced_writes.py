"""Writes that a stale leader cannot make: the fencing token, checked by the database.

    python examples/fenced_writes.py                                  # in two terminals (SQLite)
    python examples/fenced_writes.py postgresql+psycopg://127.0.0.1/test  # or a shared database

Each copy campaigns for a lease kept in the same database (``SQLElector``) and, while it leads,
publishes a report in batches. Before each batch the body asks ``current_term().check()``
whether this replica still leads, and every write carries the term's fencing token. The table
refuses a write whose token is lower than the one it holds::

    UPDATE fenced_report SET body = :body, fence = :token WHERE id = 1 AND fence <= :token

A check cannot close the gap between itself and the write: a leader paused there (a GC pause,
``kill -STOP``, a slow disk) and replaced meanwhile would overwrite the new leader's report. The
database closes it: the late write matches no row and the old leader prints ``REFUSED``. Try
it: start two copies, ``kill -STOP`` the leader while it says ``COMPUTING``, wait until the
other one says ``WROTE``, then ``kill -CONT`` the first.

Needs ``pip install "singleton_jobs[sql]"`` (and ``psycopg`` for PostgreSQL).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import sqlalchemy
from sqlalchemy import text

from singleton_jobs import SQLElector, current_term, default_lease_dir, exit_on_sigterm, leader_only


def say(line: str) -> None:
    print(line, flush=True)


def prepare(engine: sqlalchemy.engine.Engine) -> None:
    """The downstream table: one report, and the highest fencing token that wrote it."""
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS fenced_report (id INTEGER PRIMARY "
                                "KEY, body TEXT NOT NULL, fence BIGINT NOT NULL)"))
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO fenced_report (id, body, fence) "
                                    "VALUES (1, 'no report yet', -1)"))
    except sqlalchemy.exc.IntegrityError:
        pass  # another replica created it first


def write(engine: sqlalchemy.engine.Engine, token: int, body: str) -> bool:
    """Store ``body`` unless a newer leader (a higher token) already wrote; True if stored."""
    with engine.begin() as connection:
        result = connection.execute(
            text("UPDATE fenced_report SET body = :body, fence = :token "
                 "WHERE id = 1 AND fence <= :token"), {"body": body, "token": token})
        return result.rowcount == 1


def stored(engine: sqlalchemy.engine.Engine) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT body, fence FROM fenced_report WHERE id = 1")).one()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="database URL (default: a SQLite file in the "
                        "per-user lease directory)")
    parser.add_argument("--work-seconds", type=float, default=3.0,
                        help="how long each batch computes before it writes")
    parser.add_argument("--lease-duration", type=float, default=6.0)
    parser.add_argument("--renew-deadline", type=float, default=4.0)
    parser.add_argument("--retry-period", type=float, default=1.0)
    args = parser.parse_args()
    url = args.url or f"sqlite:///{os.path.join(default_lease_dir(), 'fenced_writes.sqlite')}"
    engine = sqlalchemy.create_engine(url)
    prepare(engine)
    elector = SQLElector(engine, "fenced-report", identity=f"replica-{os.getpid()}",
                         lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
                         retry_period=args.retry_period)

    @leader_only(elector)
    def publish_report() -> None:
        term = current_term()
        for batch in range(1, 4):
            term.check()  # leadership ended: stop here (the guard logs it and returns)
            say(f"COMPUTING token {term.fencing_token} batch {batch}")
            time.sleep(args.work_seconds)  # the work: a pause here makes a stale write
            body = f"batch {batch} by {elector.identity} (token {term.fencing_token})"
            if not write(engine, term.fencing_token, body):
                body, fence = stored(engine)
                say(f"REFUSED token {term.fencing_token} batch {batch}: the table holds token "
                    f"{fence} ({body})")
                return
            say(f"WROTE token {term.fencing_token} batch {batch}")

    exit_on_sigterm()
    try:
        with elector:
            say(f"STARTED {elector.identity}")
            while True:
                publish_report()  # returns at once on followers
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
