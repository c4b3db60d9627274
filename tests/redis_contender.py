"""A replica for the Redis multi-process test: campaigns on a Redis lease, runs a guarded job.

Usage: ``redis_contender.py URL NAME JOURNAL``. Every run of the ``@leader_only`` job appends
``pid token start end`` (monotonic seconds, comparable across processes on one Linux host) to
the journal in one ``O_APPEND`` write. State changes are printed as ``LEADER <token> <t>`` /
``FOLLOWER <t>``; SIGTERM stops the elector with a release and exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from singleton_jobs import RedisElector, leader_only


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("journal")
    parser.add_argument("--lease-duration", type=float, default=2.0)
    parser.add_argument("--renew-deadline", type=float, default=1.0)
    parser.add_argument("--retry-period", type=float, default=0.1)
    parser.add_argument("--job-every", type=float, default=0.01)
    parser.add_argument("--job-takes", type=float, default=0.002)
    args = parser.parse_args()

    def say(text: str) -> None:
        sys.stdout.write(f"{text} {time.monotonic():.6f}\n")
        sys.stdout.flush()

    elector = RedisElector(
        args.url, args.name, identity=f"redis-contender-{os.getpid()}",
        lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        on_started_leading=lambda: say(f"LEADER {elector.fencing_token}"),
        on_stopped_leading=lambda: say("FOLLOWER"))
    journal = os.open(args.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @leader_only(elector)
    def job() -> None:
        start = time.monotonic()
        token = elector.fencing_token
        time.sleep(args.job_takes)
        end = time.monotonic()
        os.write(journal, f"{os.getpid()} {token} {start:.6f} {end:.6f}\n".encode())

    # A flag, not an Event: Event.set() in a signal handler can deadlock with the wait() it
    # interrupted.
    terminated: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    elector.start()
    say(f"STARTED {elector.identity}")
    while not terminated:
        time.sleep(args.job_every)
        job()
    elector.stop(release=True)
    say("STOPPED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
