"""A replica for the multi-process tests: campaigns on a lease file and runs a guarded job.

With ``--kubernetes-api URL`` the lease is instead the Kubernetes Lease named ``path`` in
``--namespace``, on the API server at URL (the fake one in tests/k8s_api.py); with ``--sql-url
URL`` the row named ``path`` in the database at URL; with ``--redis-url URL`` the Redis lease
named ``path``.

Every run of the ``@leader_only`` job appends ``pid token start end`` (monotonic seconds, which
are comparable across processes on one Linux host) to the journal in one ``O_APPEND`` write.
State changes are printed as ``LEADER <token> <t>`` / ``FOLLOWER <t>``; SIGTERM stops the
elector with a release and exits. SIGUSR1 makes the replica fork ``--fork-children`` children
that call the same guarded job in a loop for ``--child-runs-for`` seconds, try to start the
inherited elector, stop it, and exit with ``sys.exit`` (so inherited ``atexit`` hooks run).

With ``--metrics-port`` it serves ``/metrics`` and ``/healthz`` (port 0: any free port; printed
as ``METRICS <port>``). With ``--liveness-timeout`` the main loop calls ``elector.heartbeat()``
on every iteration, and SIGUSR2 deadlocks the main loop for good (printed as ``DEADLOCKED``).
Log records of WARNING and above go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from singleton_jobs import Elector, FileElector, KubernetesElector, SingletonJobsError, leader_only


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("journal")
    parser.add_argument("--lease-duration", type=float, default=2.0)
    parser.add_argument("--renew-deadline", type=float, default=1.0)
    parser.add_argument("--retry-period", type=float, default=0.1)
    parser.add_argument("--job-every", type=float, default=0.01)
    parser.add_argument("--job-takes", type=float, default=0.002)
    parser.add_argument("--kubernetes-api", metavar="URL",
                        help="use the Lease named PATH on this Kubernetes API server")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--sql-url", help="use the lease named PATH in this database")
    parser.add_argument("--redis-url", help="use the lease named PATH on this Redis server")
    parser.add_argument("--identity", help="explicit identity (default: contender-<pid>); "
                                           "'default' leaves it to the library")
    parser.add_argument("--fork-children", type=int, default=4)
    parser.add_argument("--child-runs-for", type=float, default=1.0)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--liveness-timeout", type=float)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(message)s")

    def say(text: str) -> None:
        sys.stdout.write(f"{text} {time.monotonic():.6f}\n")
        sys.stdout.flush()

    options: dict[str, Any] = dict(
        identity=(None if args.identity == "default"
                  else args.identity or f"contender-{os.getpid()}"),
        lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        on_started_leading=lambda: say(f"LEADER {elector.fencing_token}"),
        on_stopped_leading=lambda: say("FOLLOWER"), liveness_timeout=args.liveness_timeout)
    elector: Elector
    if args.kubernetes_api:
        from kubernetes import client

        api_client = client.ApiClient(client.Configuration(host=args.kubernetes_api))
        elector = KubernetesElector(args.path, namespace=args.namespace, api_client=api_client,
                                    **options)
    elif args.sql_url:
        from singleton_jobs import SQLElector

        elector = SQLElector(args.sql_url, args.path, **options)
    elif args.redis_url:
        from singleton_jobs import RedisElector

        elector = RedisElector(args.redis_url, args.path, **options)
    else:
        elector = FileElector(args.path, **options)
    journal = os.open(args.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @leader_only(elector)
    def job() -> None:
        start = time.monotonic()
        token = elector.fencing_token
        time.sleep(args.job_takes)
        end = time.monotonic()
        os.write(journal, f"{os.getpid()} {token} {start:.6f} {end:.6f}\n".encode())

    # A flag, not a threading.Event: Event.set() in a signal handler can deadlock with the
    # Event.wait() it interrupted.
    terminated: list[int] = []
    fork_requests: list[int] = []
    deadlock_requests: list[int] = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: deadlock_requests.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    signal.signal(signal.SIGUSR1, lambda signum, frame: fork_requests.append(signum))
    elector.start()
    say(f"STARTED {elector.identity}")
    if args.metrics_port is not None:
        from singleton_jobs.observability import start_http_server

        say(f"METRICS {start_http_server(args.metrics_port, addr='127.0.0.1').port}")

    def child() -> None:
        until = time.monotonic() + args.child_runs_for
        while time.monotonic() < until:
            assert not elector.is_leader and elector.fencing_token is None
            job()
            time.sleep(args.job_every / 4)
        try:
            elector.start()
        except SingletonJobsError as exc:
            say(f"CHILD-START-REFUSED {os.getpid()} {exc}")
        elector.stop()
        say(f"CHILD-DONE {os.getpid()}")
        sys.exit(0)

    while not terminated:
        time.sleep(args.job_every)
        elector.heartbeat()
        job()
        if deadlock_requests:
            say("DEADLOCKED")
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()  # never returns: the main loop is stuck, the elector's threads run
        if fork_requests:
            fork_requests.clear()
            children = []
            for _ in range(args.fork_children):
                sys.stdout.flush()
                pid = os.fork()
                if pid == 0:
                    child()
                children.append(pid)
            say("FORKED " + " ".join(map(str, children)))
    elector.stop(release=True)
    say("STOPPED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
