"""The ``singleton-jobs`` command: a demo replica, and a look at a lease, on any backend."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigurationError, LeaseStoreError, SingletonJobsError

if TYPE_CHECKING:
    from .election import Elector
    from .lease import LeaseRecord
    from .store import LeaseStore, Snapshot

_print_lock = threading.Lock()

DEMO_LEASE_NAME = "singleton-jobs-demo"

#: The backends each lease option belongs to; given with another backend it is an error, not
#: silently ignored (the lease would be looked for somewhere else than the user meant).
_OPTION_BACKENDS = {
    "lease_path": ("file",),
    "url": ("sql", "redis"),
    "namespace": ("kubernetes",),
    "table": ("sql",),
    "key_prefix": ("redis",),
}

#: How ``status`` judges validity, in its JSON: a one-shot reader cannot watch the record
#: change on its own clock as an elector does, so only the writer's timestamps are left.
JUDGED_BY = "the writer's wall clock: clock skew between the writer and this host shifts it"


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


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="singleton-jobs",
        description="Run scheduled work on exactly one replica, with failover.")
    parser.add_argument("--version", action="version", version=f"singleton-jobs {__version__}")
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
    demo.add_argument("--liveness-timeout", type=_seconds, metavar="SECONDS",
                      help="step down if the main loop (which prints the status lines) stops "
                           "for this long (default: no watchdog)")
    demo.add_argument("--metrics-port", type=int, metavar="PORT",
                      help="serve /metrics (Prometheus) and /healthz on this port")

    status = commands.add_parser(
        "status", help="print who holds a lease (the demo's by default)",
        description="Read the lease once and print its holder, fencing token, last renew and "
                    "whether it is valid. Validity is judged by the writer's wall clock "
                    "(renew time + lease duration), so clock skew between the writer and this "
                    "host shifts it.",
        epilog="exit status: 0 a valid holder exists (with --once: or the key's job completed); "
               "1 nobody leads (no lease yet, released, expired or unreadable; with --once: "
               "or its last run failed); 2 the lease could not be read (bad option, server "
               "unreachable, missing extra), with the reason on stderr")
    _add_lease_arguments(status)
    status.add_argument("--once", metavar="KEY",
                        help="read the lease of this run_once() key (beside the lease) instead: "
                             "who runs it, or whether it completed or failed")
    status.add_argument("--timeout", type=_positive_seconds, default=10.0, metavar="SECONDS",
                        help="give up reading the lease after this long (default: 10)")
    status.add_argument("--json", action="store_true",
                        help="print one JSON object instead of lines")
    return parser


def _add_lease_arguments(parser: argparse.ArgumentParser) -> None:
    # Backend options default to None so that one given for another backend can be refused.
    parser.add_argument("--backend", choices=["file", "kubernetes", "sql", "redis"],
                        default="file", help="where the lease lives (default: file)")
    parser.add_argument("--lease-path", help="file backend: the lease file (default: "
                                             "demo.lease in a per-user directory)")
    parser.add_argument("--lease-name",
                        help=f"the lease's name (default: {DEMO_LEASE_NAME}); with --backend "
                             "file, the file <name>.lease in the per-user directory")
    parser.add_argument("--url", help="sql backend: a SQLAlchemy database URL "
                                      "(postgresql+psycopg://user@host/db, mysql+pymysql://…, "
                                      "sqlite:///path); redis backend: redis://host:port/db")
    parser.add_argument("--namespace", help="kubernetes backend: the Lease's namespace (default: "
                                            "the pod's, else the kubeconfig context's, else "
                                            "default)")
    parser.add_argument("--table", help="sql backend: the leases table (default: "
                                        "singleton_jobs_leases)")
    parser.add_argument("--key-prefix", help="redis backend: prefix of the lease's keys "
                                             "(default: singleton_jobs:)")


def _check_lease_arguments(args: argparse.Namespace) -> None:
    """Refuse options that belong to another backend than ``--backend``.

    :raises ConfigurationError: an option of another backend, or two that name the same lease.
    """
    for option, backends in _OPTION_BACKENDS.items():
        if getattr(args, option) is not None and args.backend not in backends:
            flag = "--" + option.replace("_", "-")
            owners = " or ".join(f"--backend {backend}" for backend in backends)
            raise ConfigurationError(f"{flag} is an option of {owners}, not of --backend "
                                     f"{args.backend}; drop it, or pass {owners}")
    if args.lease_path is not None and args.lease_name is not None:
        raise ConfigurationError("--lease-path and --lease-name both name the file lease; "
                                 "pass only one of them")


def _lease_name(args: argparse.Namespace) -> str:
    return DEMO_LEASE_NAME if args.lease_name is None else str(args.lease_name)


def _file_lease(args: argparse.Namespace) -> dict[str, Any]:
    """``path`` or ``name`` for a file store: the demo's file when neither is given."""
    if args.lease_name is not None:
        return {"name": args.lease_name}
    return {"path": _demo_path(args.lease_path)}


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
                   retry_period=args.retry_period, liveness_timeout=args.liveness_timeout)
    elector: Elector
    callbacks: dict[str, Any] = dict(on_started_leading=started, on_stopped_leading=stopped,
                                     on_new_leader=new_leader)
    if args.backend == "kubernetes":
        from .backends.kubernetes import KubernetesElector

        elector = KubernetesElector(
            _lease_name(args), namespace=args.namespace, identity=node, **timings, **callbacks)
        where = f"Lease: {elector.store.name} on {elector.store.host}"
    elif args.backend in ("sql", "redis"):
        elector = _url_elector(args, identity=node, **timings, **callbacks)
        where = f"Lease: {elector.store.name}"
    else:
        from .backends.file import FileElector

        elector = FileElector(**_file_lease(args), identity=node, **timings, **callbacks)
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

    server = None
    if args.metrics_port is not None:
        from .observability import start_http_server

        server = start_http_server(args.metrics_port, elector)
    elector.start()
    log(f"✅ [{node}] Leader election started. Press Ctrl+C to stop")
    log(f"[{node}] {where}")
    if server is not None:
        log(f"[{node}] Serving /metrics and /healthz on port {server.port}")
    scheduler = _schedule(elector, warm_cache, args.job_interval)
    if scheduler is None:
        log(f"[{node}] APScheduler is not installed: the job runs from a plain timer "
            '(pip install "singleton_jobs[apscheduler]")')
    next_beat = next_job = time.monotonic()
    while not signals:
        now = time.monotonic()
        elector.heartbeat()  # with --liveness-timeout: this loop proves the replica is alive
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
    if server is not None:
        server.close()
    log(f"👋 [{node}] Stopped")
    return 0


def _require_url(args: argparse.Namespace) -> str:
    if not args.url:
        example = ("postgresql+psycopg://user@host/db" if args.backend == "sql"
                   else "redis://localhost:6379/0")
        raise ConfigurationError(f"--backend {args.backend} needs --url, e.g. --url {example}")
    return str(args.url)


def _url_options(args: argparse.Namespace) -> dict[str, Any]:
    """The URL, lease name and table or key prefix of a SQL or Redis store or elector."""
    options: dict[str, Any] = {}
    if args.table is not None:
        options["table"] = args.table
    if args.key_prefix is not None:
        options["key_prefix"] = args.key_prefix
    return {"name": _lease_name(args), **options}


def _url_elector(args: argparse.Namespace, **options: Any) -> Elector:
    if args.backend == "sql":
        from .backends.sql import SQLElector

        return SQLElector(_require_url(args), **_url_options(args), **options)
    from .backends.redis import RedisElector

    return RedisElector(_require_url(args), **_url_options(args), **options)


def _url_store(args: argparse.Namespace) -> LeaseStore:
    if args.backend == "sql":
        from .backends.sql import SQLLeaseStore

        return SQLLeaseStore(_require_url(args), **_url_options(args))
    from .backends.redis import RedisLeaseStore

    return RedisLeaseStore(_require_url(args), **_url_options(args))


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


def _status_store(args: argparse.Namespace) -> tuple[LeaseStore, str, str]:
    """The store ``status`` reads, the lease's name (a path for a file) and where it lives."""
    store: LeaseStore
    if args.backend == "kubernetes":
        from .backends.kubernetes import KubernetesLeaseStore

        kubernetes = KubernetesLeaseStore(_lease_name(args), namespace=args.namespace)
        return kubernetes, kubernetes.name, f"Lease: {kubernetes.name} on {kubernetes.host}"
    if args.backend in ("sql", "redis"):
        store = _url_store(args)
        return store, _lease_name(args), f"Lease: {store.name}"
    from .backends.file import FileLeaseStore

    file = FileLeaseStore(**_file_lease(args))
    return file, file.path, f"Lease file: {file.path}"


def _utc(seconds: float) -> str | None:
    """ISO 8601 in UTC with microseconds, or None for a time the record does not state (0)."""
    if seconds <= 0:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def lease_status(snapshot: Snapshot | None, now: float) -> dict[str, Any]:
    """What ``status`` reports about ``snapshot`` at wall-clock time ``now``.

    ``state`` is ``absent``, ``unreadable``, ``released``, ``expired`` or ``held`` (for the
    lease of a ``run_once`` key also ``completed`` or ``failed``); only
    ``held`` is ``valid``: a readable record with a holder and ``now < renew_time +
    lease_duration``. That is the writer's clock against ours; an elector never trusts it (it
    times the record's changes on its own clock), but a single read has nothing else. A record
    that states no lease duration (the seed's file format) cannot be judged, and is not valid.
    """
    fields: dict[str, Any] = {
        "holder": None, "fencing_token": None, "acquire_time": None, "renew_time": None,
        "renewed_seconds_ago": None, "lease_duration": None, "expires_in_seconds": None,
        "valid": False, "state": "absent", "judged_by": JUDGED_BY}
    if snapshot is None:
        return fields
    record = snapshot[0]
    if not record.readable:
        fields["state"] = "unreadable"
        return fields
    fields.update(fencing_token=record.transitions, acquire_time=_utc(record.acquire_time),
                  renew_time=_utc(record.renew_time))
    if record.renew_time > 0:
        fields["renewed_seconds_ago"] = round(now - record.renew_time, 3)
    if record.released:
        fields["state"] = "released"
        return fields
    if record.mark:
        fields["state"] = record.holder.strip()  # completed / failed: nobody holds it
        return fields
    fields["holder"] = record.holder
    valid = False
    if record.lease_duration > 0:
        fields["lease_duration"] = record.lease_duration
        if record.renew_time > 0:
            left = record.renew_time + record.lease_duration - now
            fields["expires_in_seconds"] = round(left, 3)
            valid = left > 0
    fields.update(valid=valid, state="held" if valid else "expired")
    return fields


def _status_lines(where: str, record: LeaseRecord | None, fields: dict[str, Any]) -> list[str]:
    state = fields["state"]
    if record is None:
        return [where, "  holder:      nobody (no lease yet)",
                "  lease:       absent: no replica has taken it yet"]
    if state == "unreadable":
        return [where, "  holder:      unreadable content (treated as held by nobody valid)",
                "  lease:       unreadable: a replica takes it over one lease duration after "
                "it saw it"]
    if state == "completed":
        return [where, "  completed:   the job of this key ran to its end "
                f"(fencing token {record.transitions}); run_once() never runs it again"]
    if state == "failed":
        return [where, "  failed:      the last run of this key raised (fencing token "
                f"{record.transitions}); the next call of run_once() runs it again"]
    lines = [where, f"  holder:      {fields['holder'] or 'nobody (released)'}",
             f"  fencing token: {record.transitions}"]
    ago = fields["renewed_seconds_ago"]
    if ago is None:
        lines.append("  renewed:     unknown (the record states no renew time)")
    elif ago >= 0:
        lines.append(f"  renewed:     {ago:.1f}s ago (by the writer's clock)")
    else:
        lines.append(f"  renewed:     {-ago:.1f}s in the future (the writer's clock is ahead of "
                     "this host's)")
    left = fields["expires_in_seconds"]
    skew = "by the writer's clock; clock skew shifts it"
    if state == "released":
        lines.append("  lease:       released: nobody leads; a replica may take it at once")
    elif left is None:
        lines.append("  lease:       not valid: the record states no lease duration or renew "
                     "time, so its expiry cannot be judged")
    elif state == "held":
        lines.append(f"  lease:       valid for {left:.1f}s more ({skew})")
    else:
        lines.append(f"  lease:       expired {-left:.1f}s ago ({skew}): nobody leads until a "
                     "replica takes it over")
    return lines


def run_status(args: argparse.Namespace) -> int:
    """Print the lease's state; 0 if a valid holder exists, else 1.

    :raises SingletonJobsError: the options are unusable or the lease could not be read.
    """
    store, lease, where = _status_store(args)
    if args.once is not None:
        store = store.sibling(args.once)
        lease, where = store.name, f"run_once({args.once!r}) lease: {store.name}"
    try:
        snapshot = store.get(timeout=args.timeout)
    except LeaseStoreError as exc:
        raise LeaseStoreError(f"{exc}; {_READ_FIXES[args.backend]}") from exc
    fields = lease_status(snapshot, time.time())
    if args.json:
        document = {"backend": args.backend, "lease": lease, "location": where, **fields}
        print(json.dumps(document))
    else:
        print("\n".join(_status_lines(where, None if snapshot is None else snapshot[0],
                                       fields)))
    return 0 if fields["valid"] or fields["state"] == "completed" else 1


#: What to check when a lease cannot be read, by backend.
_READ_FIXES = {
    "file": "check that this user can read the lease file",
    "kubernetes": "check that the API server answers from here (--timeout SECONDS waits longer)",
    "sql": "check --url and that the database answers from here (--timeout SECONDS waits "
           "longer)",
    "redis": "check --url and that the Redis server answers from here (--timeout SECONDS waits "
             "longer)",
}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_lease_arguments(args)
        if args.command == "demo":
            return run_demo(args)
        return run_status(args)
    except SingletonJobsError as exc:
        print(f"singleton-jobs: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional dependency; the message names the extra
        print(f"singleton-jobs: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C while status waits for a slow server
        return 130
