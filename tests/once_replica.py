"""A replica that runs a one-off job with ``run_once``, for tests/test_once.py.

It starts an elector on the main lease ``path`` (a file; with ``--redis-url`` the Redis lease
named ``path``), then calls ``run_once(elector, key, work)``. ``work`` appends ``start <pid>
<token> <t>`` to the journal, works for ``--work-seconds`` in steps of 10 ms (calling
``current_term().check()`` after each, unless ``--no-check``), then appends ``end <pid> <token>
<t>`` (``t``: monotonic seconds, comparable across processes on one Linux host), and raises
with ``--fail``. The outcome is printed as ``RETURNED True|False <t>``, ``FAILED <exception
class> <t>`` or ``TIMEOUT <t>``; the replica then keeps running (campaigning for the main lease)
until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any

from singleton_jobs import (
    Elector,
    FileElector,
    RunOnceError,
    RunOnceTimeout,
    current_term,
    run_once,
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("key")
    parser.add_argument("journal")
    parser.add_argument("--redis-url")
    parser.add_argument("--work-seconds", type=float, default=1.0)
    parser.add_argument("--no-check", action="store_true")
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--lease-duration", type=float, default=2.0)
    parser.add_argument("--renew-deadline", type=float, default=1.0)
    parser.add_argument("--retry-period", type=float, default=0.1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s",
                        stream=sys.stdout)

    def say(text: str) -> None:
        sys.stdout.write(f"{text} {time.monotonic():.6f}\n")
        sys.stdout.flush()

    options: dict[str, Any] = dict(
        identity=f"once-{os.getpid()}", lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline, retry_period=args.retry_period)
    elector: Elector
    if args.redis_url:
        from singleton_jobs import RedisElector

        elector = RedisElector(args.redis_url, args.path, **options)
    else:
        elector = FileElector(args.path, **options)
    journal = os.open(args.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def note(event: str, token: int) -> None:
        os.write(journal, f"{event} {os.getpid()} {token} {time.monotonic():.6f}\n".encode())

    def work() -> None:
        term = current_term()
        note("start", term.fencing_token)
        until = time.monotonic() + args.work_seconds
        while time.monotonic() < until:
            time.sleep(0.01)
            if not args.no_check:
                term.check()
        note("end", term.fencing_token)
        if args.fail:
            raise RuntimeError("the migration failed")

    terminated: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    elector.start()
    say(f"STARTED {elector.identity}")
    try:
        ran = run_once(elector, args.key, work, timeout=args.timeout)
    except RunOnceTimeout:
        say("TIMEOUT")
    except RunOnceError as exc:
        say(f"FAILED {type(exc).__name__}")
    except RuntimeError as exc:
        say(f"FAILED {type(exc).__name__}")
    else:
        say(f"RETURNED {ran}")
    while not terminated:
        time.sleep(0.05)
    elector.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
