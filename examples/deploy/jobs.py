"""The leader-only job and the small scheduler every example in this directory shares.

Each example differs only in *where* it calls ``start_scheduler(make_elector())``: once per
process that should campaign, after that process was forked. Settings come from the
environment, so the tests can shrink them; all are optional:

``LEASE_PATH``   the lease file (default: ``nightly-report.lease`` in the per-user lease directory)
``LEASE_DURATION`` / ``RENEW_DEADLINE`` / ``RETRY_PERIOD``   seconds (default 15 / 10 / 2)
``JOB_EVERY``    seconds between two calls of the job (default 5)
``JOURNAL``      a file each run appends ``pid identity token start end`` to (monotonic seconds)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from singleton_jobs import FileElector, get_default_elector, leader_only, set_default_elector

TIMINGS = {"lease_duration": "LEASE_DURATION", "renew_deadline": "RENEW_DEADLINE",
           "retry_period": "RETRY_PERIOD"}


def make_elector() -> FileElector:
    """A new elector for this process. Create it after the fork, in the process that schedules."""
    timings = {name: float(os.environ[var]) for name, var in TIMINGS.items() if var in os.environ}
    path = os.environ.get("LEASE_PATH")
    if path:
        return FileElector(path, **timings)
    return FileElector(name="nightly-report", **timings)


@leader_only  # consults the default elector at each call: the one start_scheduler() installed
def nightly_report() -> int | None:
    """The guarded job: runs only in the process whose elector leads. Returns its fencing token
    (None where it was skipped)."""
    elector = get_default_elector()
    assert elector is not None
    token = elector.fencing_token
    if token is None:
        return None  # leadership ended between the guard and here: do nothing
    start = time.monotonic()
    time.sleep(0.002)  # the work; pass `token` along with whatever it writes
    end = time.monotonic()
    journal = os.environ.get("JOURNAL")
    if journal:
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:  # one write per line: O_APPEND keeps lines of concurrent writers whole
            os.write(fd, f"{os.getpid()} {elector.identity} {token} {start:.6f} {end:.6f}\n"
                     .encode())
        finally:
            os.close(fd)
    return token


def start_scheduler(elector: FileElector,
                    job: Callable[[], object] = nightly_report) -> Callable[[], None]:
    """Start ``elector`` and a thread calling ``job`` every ``JOB_EVERY`` seconds in this process.

    Stands for any in-process scheduler (APScheduler's ``BackgroundScheduler`` with
    ``LeaderOnlyJobStore`` goes in the same place). Returns a function that stops both and
    releases the lease, for the server's shutdown hook.
    """
    every = float(os.environ.get("JOB_EVERY", "5"))
    set_default_elector(elector)
    elector.start()
    stopped = threading.Event()

    def loop() -> None:
        while not stopped.wait(every):
            job()

    thread = threading.Thread(target=loop, name="scheduler", daemon=True)
    thread.start()
    print(f"[{os.getpid()}] scheduler started, elector {elector.identity}", flush=True)

    def stop() -> None:
        stopped.set()
        thread.join()
        elector.stop()

    return stop
