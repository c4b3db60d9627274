"""The ``singleton-jobs`` command: a demo replica, and a look at a lease, on any backend."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, SingletonJobsError

if TYPE_CHECKING:
    from .election import Elector
    from .store import LeaseStore

_print_lock = threading.Lock()

DEMO_LEASE_NAME = "singleton-jobs-demo"


def log(message: str) -> None:
    """Print one line in Go's ``log`` format (``2024/01/10 14:30:25 message``), as the seed did."""
    line = f"{time.strftime('%Y/%m/%d %H:%M:%S')} {message}\n"
    with _print_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="singleton-jobs",
        description="Run scheduled work on exactly one replica, with failover.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run one demo replica (start several to watch the election)",
        description="Run one replica: it campaigns for the lease, prints a heartbeat every "
                    "second and runs a leader-only job. Ctrl+C releases the lease.")
    _add_lease_arguments(demo)
    demo.add_argument("--identity", help="node id written into the lease (default: the PID; "
                                         "with --backend kubernetes <POD_NAME or hostname>_"
                                         "<pid>_<random>)")
    demo.add_argument("--lease-duration", type=_seconds, default=6.0, metavar="SECONDS",
                      help="how long followers wait before taking over a silent leader "
                           "(default: 6)")
    demo.add_argument("--renew-deadline", type=_seconds, default=4.0, metavar="SECONDS",
                      help="the leader steps down if no renew succeeds this long (default: 4)")
    demo.add_argument("--retry-period", type=_seconds, default=1.0, metavar="SECONDS",
                      help="time between acquire and renew attempts (default: 1)")
    demo.add_argument("--job-interval", type=_seconds, default=5.0, metavar="SECONDS",
                      help="how often the leader-only job is scheduled (default: 5)")
    demo.add_argument("--heartbeat", type=_seconds, default=1.0, metavar="SECONDS",
                      help="time between status lines (default: 1)")

    status = commands.add_parser("status", help="print who holds the demo's lease")
    _add_lease_arguments(status)
    return parser


def _add_lease_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["file", "kubernetes", "sql", "redis"],
                        default="file", help="where the lease lives (default: file)")
    parser.add_argument("--lease-path", help="file backend: the lease file (default: "
                                             "demo.lease in a per-user directory)")
    parser.add_argument("--lease-name", default=DEMO_LEASE_NAME,
                        help="kubernetes, sql and redis backends: the lease's name (default: "
                             f"{DEMO_LEASE_NAME})")
    parser.add_argument("--url", help="sql backend: a SQLAlchemy database URL "
                                      "(postgresql+psycopg://user@host/db, mysql+pymysql://…, "
                                      "sqlite:///path); redis backend: redis://host:port/db")
    parser.add_argument("--namespace", help="kubernetes backend: the Lease's namespace (default: "
                                            "the pod's, else the kubeconfig context's, else "
                                            "default)")


def _demo_path(path: str | None) -> str:
    from .backends.file import default_lease_path

    return path if path is not None else default_lease_path("demo.lease")


def run_demo(args: argparse.Namespace) -> int:
    from .decorators import leader_only

    if args.identity is not None:
        node = args.identity
    elif args.backend != "file":
        from .lease import default_identity

        node = default_identity()  # every pod's PID may be 1: the pod or host name, PID, random
    else:
        node = str(os.getpid())
    log(f"Starting leader election demo for node: {node}")

    def started() -> None:
        log(f"[{node}] Successfully acquired leadership")
        log(f"🎉 [{node}] BECAME LEADER - Starting leadership duties")

    def stopped() -> None:
        log(f"💔 [{node}] LOST LEADERSHIP - Stopping leadership duties")

    def new_leader(identity: str) -> None:
        if identity != node:
            log(f"[{node}] New leader elected: {identity}")

    timings = dict(lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
                   retry_period=args.retry_period)
    elector: Elector
    callbacks: dict[str, Any] = dict(on_started_leading=started, on_stopped_leading=stopped,
                                     on_new_leader=new_leader)
    if args.backend == "kubernetes":
        from .backends.kubernetes import KubernetesElector

        elector = KubernetesElector(
            args.lease_name, namespace=args.namespace, identity=node, **timings, **callbacks)
        where = f"Lease: {elector.store.name} on {elector.store.host}"
    elif args.backend in ("sql", "redis"):
        elector = _url_elector(args, identity=node, **timings, **callbacks)
        where = f"Lease: {elector.store.name}"
    else:
        from .backends.file import FileElector

        elector = FileElector(
            _demo_path(args.lease_path), identity=node, **timings,
            on_started_leading=started, on_stopped_leading=stopped, on_new_leader=new_leader)
        where = f"Lease file: {elector.path}"

    @leader_only(elector)
    def warm_cache() -> None:
        log(f"🔥 [{node}] Running leader-only job: warming cache "
            f"(fencing token {elector.fencing_token})")

    # A flag, not a threading.Event: Event.set() in a signal handler can deadlock with the
    # Event.wait() it interrupted (both take the same non-reentrant lock).
    signals: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)  # a closed terminal or tmux pane

    elector.start()
    log(f"✅ [{node}] Leader election started. Press Ctrl+C to stop")
    log(f"[{node}] {where}")
    scheduler = _schedule(elector, warm_cache, args.job_interval)
    if scheduler is None:
        log(f"[{node}] APScheduler is not installed: the job runs from a plain timer "
            '(pip install "singleton_jobs[apscheduler]")')
    next_beat = next_job = time.monotonic()
    while not signals:
        now = time.monotonic()
        if now >= next_beat:
            clock = time.strftime("%H:%M:%S")
            if elector.is_leader:
                log(f"👑 [{node}] Status: LEADER - Heartbeat at {clock}")
            else:
                log(f" [{node}] Status: FOLLOWER - Heartbeat at {clock}")
            next_beat += args.heartbeat
        if scheduler is None and now >= next_job:
            warm_cache()
            next_job += args.job_interval
        upcoming = next_beat if scheduler is not None else min(next_beat, next_job)
        time.sleep(min(max(upcoming - time.monotonic(), 0.0), 0.1))
    log(f"🛑 [{node}] Shutting down: releasing the lease")
    if scheduler is not None:
        scheduler.shutdown(wait=False)
    elector.stop(release=True)
    log(f"👋 [{node}] Stopped")
    return 0


def _require_url(args: argparse.Namespace) -> str:
    if not args.url:
        example = ("postgresql+psycopg://user@host/db" if args.backend == "sql"
                   else "redis://localhost:6379/0")
        raise ConfigurationError(f"--backend {args.backend} needs --url, e.g. --url {example}")
    return str(args.url)


def _url_elector(args: argparse.Namespace, **options: Any) -> Elector:
    if args.backend == "sql":
        from .backends.sql import SQLElector

        return SQLElector(_require_url(args), args.lease_name, **options)
    from .backends.redis import RedisElector

    return RedisElector(_require_url(args), args.lease_name, **options)


def _url_store(args: argparse.Namespace) -> LeaseStore:
    if args.backend == "sql":
        from .backends.sql import SQLLeaseStore

        return SQLLeaseStore(_require_url(args), args.lease_name)
    from .backends.redis import RedisLeaseStore

    return RedisLeaseStore(_require_url(args), args.lease_name)


def _schedule(elector: Elector, job: Any, interval: float) -> Any:
    """Run ``job`` every ``interval`` seconds on the leader through APScheduler, if installed."""
    try:
        from apscheduler.schedulers.background import BackgroundScheduler

        from .apscheduler import LeaderOnlyJobStore
    except ImportError:
        return None
    import datetime

    scheduler = BackgroundScheduler(timezone=datetime.timezone.utc)
    scheduler.add_jobstore(LeaderOnlyJobStore(elector), "leader")
    scheduler.add_job(job, "interval", seconds=interval, jobstore="leader", id="warm-cache",
                      next_run_time=datetime.datetime.now(datetime.timezone.utc))
    scheduler.start()
    return scheduler


def run_status(args: argparse.Namespace) -> int:
    store: LeaseStore
    if args.backend == "kubernetes":
        from .backends.kubernetes import KubernetesLeaseStore

        store = KubernetesLeaseStore(args.lease_name, namespace=args.namespace)
        where = f"Lease {store.name} on {store.host}"
    elif args.backend in ("sql", "redis"):
        store = _url_store(args)
        where = store.name
    else:
        from .backends.file import FileLeaseStore

        store = FileLeaseStore(_demo_path(args.lease_path))
        where = store.path
    snapshot = store.get(timeout=10.0)
    if snapshot is None:
        print(f"{where}: no lease yet")
        return 0
    record = snapshot[0]
    if not record.readable:
        holder = "unreadable content (treated as held by nobody valid)"
    else:
        holder = record.holder or "nobody (released)"
    print(f"{where}\n  holder:      {holder}\n  transitions: {record.transitions}\n"
          f"  renewed:     {time.time() - record.renew_time:.1f}s ago (by the writer's clock)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args)
        return run_status(args)
    except SingletonJobsError as exc:
        print(f"singleton-jobs: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional dependency; the message names the extra
        print(f"singleton-jobs: {exc}", file=sys.stderr)
        return 2
