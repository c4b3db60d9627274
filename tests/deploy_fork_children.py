"""Process-pool workers forked from a leading process, for tests/test_deploy.py.

The parent starts an elector, leads, then forks a ``multiprocessing.Pool`` and a
``ProcessPoolExecutor`` (both with the ``fork`` method). Each worker reports, as JSON, what the
elector it inherited does there, and starts an elector the parent had only constructed. The
parent then prints its own view and the lease file. Usage: deploy_fork_children.py DIRECTORY
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from singleton_jobs import FileElector, SingletonJobsError, leader_only

directory = sys.argv[1]
# Long timings: a copy of the parent's state would look like a valid leader for 5 s.
TIMINGS = {"lease_duration": 10.0, "renew_deadline": 5.0, "retry_period": 0.2}
elector = FileElector(os.path.join(directory, "parent.lease"), **TIMINGS)
unstarted = FileElector(os.path.join(directory, "worker.lease"), **TIMINGS)


@leader_only(elector)
def guarded() -> str:
    return "ran"


def outcome(call: Any) -> str:
    try:
        return f"returned {call()!r}"
    except SingletonJobsError as exc:
        return f"raised {type(exc).__name__}: {exc}"


# Set by main() before each pool forks: every task waits for the other, so that each of the
# two tasks runs in its own worker (a worker that ran one already started `unstarted`).
together: Any = None


def inspect(_: int) -> dict[str, Any]:
    """Runs in a pool worker."""
    together.wait(timeout=60)
    report: dict[str, Any] = {
        "pid": os.getpid(), "is_leader": elector.is_leader,
        "fencing_token": elector.fencing_token, "running": elector.running,
        "guarded": guarded(), "identity": elector.identity,
        "start": outcome(elector.start),
        "acquire_lease": outcome(lambda: elector.acquire_lease(timeout=0.2)),
        "wait_for_leadership": outcome(lambda: elector.wait_for_leadership(timeout=0.2)),
        "unstarted_identity_before": unstarted.identity,
    }
    # Constructed in the parent but never started there: usable here, as this worker's own.
    unstarted.start()
    report["unstarted_led"] = unstarted.wait_for_leadership(timeout=10)
    report["unstarted_identity"] = unstarted.identity
    unstarted.stop()
    return report


def main() -> None:
    elector.start()
    if not elector.wait_for_leadership(timeout=10):
        sys.exit("the parent did not lead")
    token = elector.fencing_token
    global together
    fork = multiprocessing.get_context("fork")
    together = fork.Barrier(2)
    with fork.Pool(2) as pool:
        reports = pool.map(inspect, range(2), chunksize=1)
    together = fork.Barrier(2)
    with ProcessPoolExecutor(2, mp_context=fork) as executor:
        reports += list(executor.map(inspect, range(2)))
    with open(elector.path) as lease:
        record = lease.read()
    print(json.dumps({"pid": os.getpid(), "identity": elector.identity,
                      "is_leader": elector.is_leader, "token_before": token,
                      "token_after": elector.fencing_token, "lease": record,
                      "unstarted_identity": unstarted.identity, "workers": reports}), flush=True)
    elector.stop()


if __name__ == "__main__":
    main()
