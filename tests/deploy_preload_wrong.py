"""The wrong ``gunicorn --preload`` pattern, for tests/test_deploy.py: an elector started at import.

With ``--preload`` this module is imported once, in the master, before the workers are forked,
so the elector and its scheduler thread run in the master. The mistake on top: every worker
also schedules the guarded job (``deploy_preload_wrong_conf.post_fork``) with the elector it
inherited. The engine must make that harmless: an inherited elector is dead in the worker.

Each request reports the worker's view of its inherited elector as JSON.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from singleton_jobs import FileElector, SingletonJobsError, leader_only

TIMINGS = {"lease_duration": "LEASE_DURATION", "renew_deadline": "RENEW_DEADLINE",
           "retry_period": "RETRY_PERIOD"}
elector = FileElector(os.environ["LEASE_PATH"],
                      **{name: float(os.environ[var]) for name, var in TIMINGS.items()}).start()


@leader_only(elector)
def nightly_report() -> int | None:
    token = elector.fencing_token
    if token is None:
        return None
    start = time.monotonic()
    time.sleep(0.002)
    end = time.monotonic()
    fd = os.open(os.environ["JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {elector.identity} {token} {start:.6f} {end:.6f}\n".encode())
    finally:
        os.close(fd)
    return token


def schedule() -> None:
    """Start a scheduler thread calling the guarded job in this process."""
    every = float(os.environ["JOB_EVERY"])

    def loop() -> None:
        while True:
            time.sleep(every)
            nightly_report()

    threading.Thread(target=loop, name="scheduler", daemon=True).start()
    print(f"[{os.getpid()}] scheduler started", flush=True)


schedule()  # in the master


def _outcome(call: Any) -> str:
    try:
        return f"returned {call()!r}"
    except SingletonJobsError as exc:
        return f"raised {type(exc).__name__}: {exc}"


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    state = {
        "pid": os.getpid(), "identity": elector.identity, "is_leader": elector.is_leader,
        "fencing_token": elector.fencing_token, "running": elector.running,
        "ran": nightly_report() is not None,
        "start": _outcome(elector.start),
        "acquire_lease": _outcome(lambda: elector.acquire_lease(timeout=0.1)),
        "wait_for_leadership": _outcome(lambda: elector.wait_for_leadership(timeout=0.1)),
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(state).encode()]
