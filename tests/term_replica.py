"""A replica whose guarded job body outlives its leadership, for tests/test_terms.py.

Campaigns for the Redis lease ``name`` at ``--redis-url`` (a TCP proxy in the tests, so the
network can be cut) and runs one long ``@leader_only`` body after another. ``--body async``:
an ``async def`` body that sleeps in small steps and never checks anything (the library cancels
it); ``--body sync``: a synchronous body that works in batches and stops at
``current_term().check()``. Each body appends ``start <pid> <token> <t>`` when it starts and
``end <pid> <token> <t> <how>`` when it has stopped (``t``: monotonic seconds, comparable across
processes on one Linux host) to the journal, in one ``O_APPEND`` write each. SIGTERM stops the
elector with a release and exits (a synchronous body is interrupted by it); the state is
printed as ``LEADER <token>`` / ``FOLLOWER``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

from singleton_jobs import RedisElector, current_term, leader_only


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("journal")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--body", choices=("async", "sync"), required=True)
    parser.add_argument("--lease-duration", type=float, default=2.0)
    parser.add_argument("--renew-deadline", type=float, default=1.0)
    parser.add_argument("--retry-period", type=float, default=0.1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(message)s")

    def say(text: str) -> None:
        sys.stdout.write(f"{text}\n")
        sys.stdout.flush()

    elector = RedisElector(
        args.redis_url, args.name, identity=f"replica-{os.getpid()}",
        lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        on_started_leading=lambda: say(f"LEADER {elector.fencing_token}"),
        on_stopped_leading=lambda: say("FOLLOWER"))
    journal = os.open(args.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def note(event: str, token: int, how: str = "") -> None:
        os.write(journal, f"{event} {os.getpid()} {token} {time.monotonic():.6f} {how}\n"
                 .encode())

    @leader_only(elector)
    async def async_body() -> None:
        token = current_term().fencing_token
        note("start", token)
        how = "finished"
        try:
            for _ in range(6000):  # a minute, never looking at leadership
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        finally:
            note("end", token, how)

    @leader_only(elector)
    def sync_body() -> None:
        term = current_term()
        note("start", term.fencing_token)
        how = "finished"
        try:
            for _ in range(6000):
                time.sleep(0.01)  # one batch of work
                term.check()      # then stop here if leadership ended
        except BaseException:
            how = "stopped"
            raise
        finally:
            note("end", term.fencing_token, how)

    terminated: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))

    async def run_async() -> None:
        while not terminated:
            task = asyncio.ensure_future(async_body())
            while not task.done():
                if terminated:
                    # stop() cancels the body and waits for it before it releases: it must
                    # run off the loop, which has to go on to deliver the cancellation.
                    await asyncio.get_running_loop().run_in_executor(None, elector.stop)
                await asyncio.wait([task], timeout=0.02)
            await asyncio.sleep(0.02)

    elector.start()
    say(f"STARTED {elector.identity}")
    if args.body == "async":
        asyncio.run(run_async())
    else:
        def leave(signum: int, frame: object) -> None:
            raise SystemExit(0)  # unwinds a running body, then the elector stops below

        signal.signal(signal.SIGTERM, leave)
        try:
            while True:
                sync_body()
                time.sleep(0.02)
        except SystemExit:
            pass
    elector.stop(release=True)
    say("STOPPED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
