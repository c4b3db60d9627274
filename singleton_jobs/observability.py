"""Health checks and Prometheus metrics: who leads, and whether the leader does its job.

* :func:`health_problems` (and ``elector.healthy``) answers a liveness probe: a replica whose
  election thread is stuck while it believes it leads, or whose application stopped calling
  ``elector.heartbeat()`` within ``liveness_timeout``, should be restarted.
* :func:`register_metrics` adds one collector to a ``prometheus_client`` registry. It reports
  every running elector of the process (labelled by lease), every ``@leader_only`` function
  and every ``LeaderOnlyJobStore`` job. Nothing is registered anywhere until it is called.
* :func:`make_wsgi_app` and :func:`make_asgi_app` serve ``/metrics`` and ``/healthz`` from an
  existing web application; :func:`start_http_server` serves them on a port of their own for a
  process that has no web server.

The guards count their calls at C speed (``next()`` on an :func:`itertools.count`, atomic under
the GIL, no lock) and the elector keeps plain integers that only its own thread writes; the
collector turns them into metric families when it is scraped. Counters never go down: the counts
of electors and guards that are garbage-collected are kept and still added, and a process forked
from another starts from zero (its parent reports its own). So the hot path costs the same
whether metrics are exported or not, and ``prometheus_client`` (extra ``metrics``) is imported
only by the functions that export them.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import election
from .election import RENEW_SECONDS_BUCKETS, Elector, ElectorCounts, live_electors
from .errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

logger = logging.getLogger(__name__)

__all__ = [
    "GuardCounts",
    "MetricsCollector",
    "Tally",
    "health_problems",
    "make_asgi_app",
    "make_wsgi_app",
    "register_metrics",
    "start_http_server",
]

#: The reasons a renew attempt fails, as the ``reason`` label of the failures counter.
RENEW_FAILURE_REASONS = ("conflict", "error", "taken", "deleted")
#: Why a leader stopped leading, as the ``reason`` label of the step-down counter.
STEP_DOWN_REASONS = ("deadline", "taken", "deleted", "liveness", "start_failed", "stopped",
                     "crashed")


class Tally:
    """A counter that any thread increments with ``next(tally.counter)``: atomic under the GIL,
    no lock.

    Reading goes through the same iterator (it has no other way to tell its position), so
    reads are counted and subtracted, under a lock that only readers take.
    """

    __slots__ = ("counter", "_reads", "_lock")

    def __init__(self) -> None:
        self.counter = itertools.count()
        self._reads = 0
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        with self._lock:
            value = next(self.counter) - self._reads
            self._reads += 1
        return value

    def _restart_after_fork(self) -> None:
        """In a forked child: a lock a parent's thread held is never released here, and the
        parent's counts are the parent's to report."""
        self._lock = threading.Lock()
        counted = self.value  # (a separate statement: reading moves _reads on)
        self._reads += counted


# Every GuardCounts alive in this process, and the totals of those garbage-collected (by kind,
# labels and outcome); the collector reads both when scraped.
_guards: weakref.WeakSet[GuardCounts] = weakref.WeakSet()
_guards_lock = threading.Lock()
_retired_guards: dict[tuple[str, tuple[str, ...], str], int] = {}
_retired_lock = threading.Lock()


def _retire_guard(kind: str, labels: tuple[str, ...], tallies: dict[str, Tally],
                  pid: int) -> None:
    if pid != os.getpid():
        return
    with _retired_lock:
        for outcome, tally in tallies.items():
            key = (kind, labels, outcome)
            _retired_guards[key] = _retired_guards.get(key, 0) + tally.value


def _live_guards() -> list[GuardCounts]:
    with _guards_lock:  # iterating a WeakSet while another thread adds to it raises
        return list(_guards)


class GuardCounts:
    """Runs and skips of one guarded function or scheduled job; exported when scraped.

    ``kind`` is ``"function"`` (``@leader_only``) or ``"job"`` (``LeaderOnlyJobStore``);
    ``labels`` are the metric's label values (the function's qualified name; the job store's
    alias and the job id). ``outcomes`` names the counters, each a :class:`Tally`. Counts of
    one label set from several objects (a decorator applied in a factory) are added up, also
    after an object is garbage-collected; :meth:`discard` drops them instead.
    """

    __slots__ = ("kind", "labels", "tallies", "_finalizer", "__weakref__")

    def __init__(self, kind: str, labels: tuple[str, ...],
                 outcomes: Iterable[str] = ("run", "skipped")) -> None:
        self.kind = kind
        self.labels = labels
        self.tallies = {outcome: Tally() for outcome in outcomes}
        self._finalizer = weakref.finalize(self, _retire_guard, kind, labels, self.tallies,
                                           os.getpid())
        self._finalizer.atexit = False
        with _guards_lock:
            _guards.add(self)

    def __getitem__(self, outcome: str) -> int:
        """How many calls had this outcome so far."""
        return self.tallies[outcome].value

    def discard(self) -> None:
        """Stop exporting these counts (a removed job): its series end instead of staying."""
        self._finalizer.detach()
        with _guards_lock:
            _guards.discard(self)

    def __repr__(self) -> str:
        counts = ", ".join(f"{outcome}={tally.value}" for outcome, tally in self.tallies.items())
        return f"<GuardCounts {self.kind} {'/'.join(self.labels)}: {counts}>"


def _restart_counts_after_fork() -> None:
    global _guards_lock, _retired_lock, _register_lock
    _guards_lock = threading.Lock()
    _retired_lock = threading.Lock()
    _register_lock = threading.Lock()
    _retired_guards.clear()
    for guard in _live_guards():
        for tally in guard.tallies.values():
            tally._restart_after_fork()


# -- health -------------------------------------------------------------------------------------


def _chosen(electors: Iterable[Elector]) -> list[Elector]:
    """The given electors, or every elector running in this process."""
    chosen = list(electors)
    for elector in chosen:
        if not isinstance(elector, Elector):
            raise ConfigurationError(f"expected Elector objects, not {elector!r}")
    return chosen or [elector for elector in live_electors() if elector.running]


def health_problems(*electors: Elector) -> list[str]:
    """Why these electors (default: every elector running in this process) are unhealthy;
    empty when all are healthy. Memory only. See ``Elector.health_problem``."""
    return [problem for elector in _chosen(electors)
            if (problem := elector.health_problem) is not None]


def _healthz(electors: tuple[Elector, ...]) -> tuple[int, bytes]:
    problems = health_problems(*electors)
    if problems:
        return 500, ("\n".join(problems) + "\n").encode()
    return 200, b"ok\n"


# -- metrics ------------------------------------------------------------------------------------


def _import_prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
        import prometheus_client.exposition
    except ImportError as exc:
        raise ImportError('singleton_jobs metrics need prometheus_client: '
                          'pip install "singleton_jobs[metrics]"') from exc
    return prometheus_client


class MetricsCollector:
    """A ``prometheus_client`` collector of every elector and guard in this process.

    Electors are labelled ``name`` (where the lease lives, ``elector.store.name``); electors of
    one lease in one process are reported as one (counters summed, including those of electors
    already garbage-collected; status the highest). An elector counts from its first start in
    this process on, running or stopped. Exported families, all computed when scraped:

    * ``leader_election_master_status`` — 1 while this replica leads (client-go's name and
      meaning);
    * ``singleton_jobs_leader_changes_total`` — changes of the lease's holder this replica saw;
    * ``singleton_jobs_renew_attempts_total``, ``singleton_jobs_renew_failures_total{reason}``
      (``conflict``, ``error``, ``taken``, ``deleted``) and the histogram
      ``singleton_jobs_renew_duration_seconds``;
    * ``singleton_jobs_seconds_since_last_renew`` — since this replica's last successful
      acquire or renew (absent until it first leads);
    * ``singleton_jobs_fencing_token`` — the lease's transition counter, only while leading;
    * ``singleton_jobs_step_downs_total{reason}`` — ``deadline``, ``taken``, ``deleted``,
      ``liveness``, ``start_failed``, ``stopped``, ``crashed``;
    * ``singleton_jobs_healthy`` — 1 unless ``elector.health_problem`` names one;
    * ``singleton_jobs_seconds_since_heartbeat`` — with ``liveness_timeout`` only;
    * ``singleton_jobs_guarded_calls_total{function,outcome}`` — ``@leader_only`` calls that
      ran or were skipped;
    * ``singleton_jobs_scheduled_runs_total{jobstore,job,outcome}`` — ``LeaderOnlyJobStore``
      runs handed to an executor by this replica (``run``), skipped on a follower
      (``skipped``), or not run because the leadership term ended while they were claimed
      (``not_claimed``). A removed job's series end.
    """

    def describe(self) -> list[Metric]:
        """The families' names, so that a registry refuses names that are already taken."""
        return list(self._families(_import_prometheus().core).values())

    @staticmethod
    def _families(core: Any) -> dict[str, Any]:
        name = ["name"]
        return {
            "status": core.GaugeMetricFamily(
                "leader_election_master_status", "1 while this replica leads the lease, else 0",
                labels=name),
            "changes": core.CounterMetricFamily(
                "singleton_jobs_leader_changes",
                "Changes of the lease's holder this replica saw", labels=name),
            "attempts": core.CounterMetricFamily(
                "singleton_jobs_renew_attempts", "Renew attempts while leading", labels=name),
            "failures": core.CounterMetricFamily(
                "singleton_jobs_renew_failures", "Renew attempts that failed, by reason",
                labels=[*name, "reason"]),
            "durations": core.HistogramMetricFamily(
                "singleton_jobs_renew_duration_seconds", "Time taken by renew attempts",
                labels=name),
            "since_renew": core.GaugeMetricFamily(
                "singleton_jobs_seconds_since_last_renew",
                "Seconds since this replica last acquired or renewed the lease", labels=name),
            "token": core.GaugeMetricFamily(
                "singleton_jobs_fencing_token",
                "The lease's transition counter while this replica leads", labels=name),
            "step_downs": core.CounterMetricFamily(
                "singleton_jobs_step_downs", "Times this replica stopped leading, by reason",
                labels=[*name, "reason"]),
            "healthy": core.GaugeMetricFamily(
                "singleton_jobs_healthy",
                "1 unless the election thread or the application is stuck", labels=name),
            "since_heartbeat": core.GaugeMetricFamily(
                "singleton_jobs_seconds_since_heartbeat",
                "Seconds since the application last called elector.heartbeat()", labels=name),
            "calls": core.CounterMetricFamily(
                "singleton_jobs_guarded_calls",
                "Calls of @leader_only functions, by whether the body ran or was skipped",
                labels=["function", "outcome"]),
            "runs": core.CounterMetricFamily(
                "singleton_jobs_scheduled_runs",
                "Due runs of LeaderOnlyJobStore jobs: run, skipped (follower) or not_claimed",
                labels=["jobstore", "job", "outcome"]),
        }

    def collect(self) -> Iterator[Metric]:
        families = self._families(_import_prometheus().core)
        pid = os.getpid()
        by_name: dict[str, list[Elector]] = {}
        for elector in live_electors():
            if elector._owner_pid == pid:  # started in this process
                by_name.setdefault(elector.store.name, []).append(elector)
        with election._retired_lock:
            retired = {name: counts for name, counts in election.retired_counts.items()}
        for name in sorted(set(by_name) | set(retired)):
            self._add_lease(families, name, by_name.get(name, []), retired.get(name))
        self._add_guards(families)
        return iter(families.values())

    @staticmethod
    def _add_lease(families: dict[str, Any], name: str, group: list[Elector],
                   retired: ElectorCounts | None) -> None:
        value = [name]
        totals = ElectorCounts()
        for counts in [elector.counts for elector in group] + ([retired] if retired else []):
            totals.add(counts)
        now = election.clock()
        leading = [elector for elector in group if elector.is_leader]
        families["status"].add_metric(value, 1.0 if leading else 0.0)
        families["changes"].add_metric(value, totals.leader_changes)
        families["attempts"].add_metric(value, totals.renew_attempts)
        for reason in RENEW_FAILURE_REASONS:
            families["failures"].add_metric([name, reason], totals.renew_failures.get(reason, 0))
        cumulative, buckets = 0, []
        for bound, count in zip(RENEW_SECONDS_BUCKETS, totals.renew_buckets):
            cumulative += count
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), cumulative))
        families["durations"].add_metric(value, buckets, totals.renew_seconds)
        for reason in STEP_DOWN_REASONS:
            families["step_downs"].add_metric([name, reason], totals.step_downs.get(reason, 0))
        renewed_at = max((elector._renewed_at for elector in group), default=-math.inf)
        if renewed_at > -math.inf:
            families["since_renew"].add_metric(value, max(now - renewed_at, 0.0))
        tokens = [token for elector in leading if (token := elector.fencing_token) is not None]
        if tokens:
            families["token"].add_metric(value, float(max(tokens)))
        families["healthy"].add_metric(value, 1.0 if all(e.healthy for e in group) else 0.0)
        heartbeats = [elector._heartbeat_at for elector in group
                      if elector.running and elector.liveness_timeout is not None]
        if heartbeats:
            families["since_heartbeat"].add_metric(value, max(now - min(heartbeats), 0.0))

    @staticmethod
    def _add_guards(families: dict[str, Any]) -> None:
        with _retired_lock:
            totals = dict(_retired_guards)
        for guard in _live_guards():
            for outcome, tally in guard.tallies.items():
                key = (guard.kind, guard.labels, outcome)
                totals[key] = totals.get(key, 0) + tally.value
        for (kind, labels, outcome), count in sorted(totals.items()):
            family = families["calls"] if kind == "function" else families["runs"]
            family.add_metric([*labels, outcome], count)


# One collector per registry: registering twice would report everything twice.
_registered: weakref.WeakKeyDictionary[Any, MetricsCollector] = weakref.WeakKeyDictionary()
_register_lock = threading.Lock()


def register_metrics(registry: CollectorRegistry | None = None) -> MetricsCollector:
    """Export this process's electors and guards through ``registry`` (default: the
    ``prometheus_client.REGISTRY`` that ``prometheus_client.start_http_server`` serves).

    Calling it again for the same registry returns the collector already registered.

    :raises ImportError: prometheus_client is not installed (extra ``metrics``).
    """
    prometheus_client = _import_prometheus()
    if registry is None:
        registry = prometheus_client.REGISTRY
    with _register_lock:
        collector = _registered.get(registry)
        if collector is None:
            collector = _registered[registry] = MetricsCollector()
            registry.register(collector)
    return collector


def _metrics_page(registry: Any, accept: str | None) -> tuple[bytes, str]:
    exposition = _import_prometheus().exposition
    encoder, content_type = exposition.choose_encoder(accept or "")
    return encoder(registry), content_type


# -- serving ------------------------------------------------------------------------------------

_TEXT = "text/plain; charset=utf-8"


class _Pages:
    """What ``/metrics`` and ``/healthz`` answer, shared by the WSGI and ASGI apps."""

    def __init__(self, electors: tuple[Elector, ...], registry: CollectorRegistry | None,
                 metrics: bool) -> None:
        _chosen(electors)  # validates them
        self.electors = electors
        self.registry: Any = None
        if metrics:
            self.registry = registry if registry is not None else \
                _import_prometheus().REGISTRY
            register_metrics(self.registry)

    def answer(self, path: str, accept: str | None) -> tuple[int, str, bytes]:
        """Route by the last path segment: the same answer wherever the app is mounted."""
        page = path.rstrip("/").rsplit("/", 1)[-1]
        try:
            if page == "healthz":
                code, body = _healthz(self.electors)
                return code, _TEXT, body
            if page == "metrics" and self.registry is not None:
                body, content_type = _metrics_page(self.registry, accept)
                return 200, content_type, body
        except Exception as exc:  # noqa: BLE001 - one line for the scraper, the rest logged
            logger.exception("singleton_jobs: answering %s failed", path)
            return 500, _TEXT, f"{page} failed: {type(exc).__name__}: {exc}\n".encode()
        return 404, _TEXT, b"not found: try /healthz" + (b" or /metrics\n" if self.registry
                                                            is not None else b"\n")


_REASONS = {200: "200 OK", 404: "404 Not Found", 500: "500 Internal Server Error"}


def make_wsgi_app(*electors: Elector, registry: CollectorRegistry | None = None,
                  metrics: bool = True) -> Callable[..., Iterable[bytes]]:
    """A WSGI app answering ``/healthz`` (200, or 500 naming each problem) and ``/metrics``.

    ``electors``: the ones ``/healthz`` checks (default: every elector running in the process
    when asked). ``registry``: what ``/metrics`` serves (default ``prometheus_client.REGISTRY``),
    with this process's electors and guards registered in it. ``metrics=False`` serves
    ``/healthz`` only and needs no prometheus_client. Mount it under a prefix of an existing
    app, e.g. with ``werkzeug.middleware.dispatcher.DispatcherMiddleware``.
    """
    pages = _Pages(electors, registry, metrics)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        code, content_type, body = pages.answer(environ.get("PATH_INFO") or "/",
                                                environ.get("HTTP_ACCEPT"))
        start_response(_REASONS[code], [("Content-Type", content_type),
                                        ("Content-Length", str(len(body)))])
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

    return app


def make_asgi_app(*electors: Elector, registry: CollectorRegistry | None = None,
                  metrics: bool = True) -> Callable[..., Any]:
    """The ASGI twin of :func:`make_wsgi_app`, e.g. ``app.mount("/ops", make_asgi_app())`` in
    Starlette or FastAPI. Both route by the last path segment (``…/healthz``, ``…/metrics``),
    so a mount prefix or a proxy's ``root_path`` never matters."""
    pages = _Pages(electors, registry, metrics)

    async def app(scope: dict[str, Any], receive: Callable[..., Any],
                  send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        accept = next((value.decode("latin-1") for key, value in scope.get("headers", [])
                       if key == b"accept"), None)
        code, content_type, body = pages.answer(path, accept)
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body",
                    "body": body if scope.get("method") != "HEAD" else b""})

    return app


class MetricsServer:
    """The HTTP server :func:`start_http_server` runs in a daemon thread."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self.thread = thread
        self._pid = os.getpid()

    @property
    def port(self) -> int:
        """The port it listens on (useful with port 0)."""
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving and close the socket."""
        if os.getpid() == self._pid:
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_http_server(port: int, *electors: Elector, addr: str = "0.0.0.0",
                      registry: CollectorRegistry | None = None,
                      metrics: bool = True) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` from a daemon thread.

    For a process that has no web server (a worker, a scheduler). Arguments as for
    :func:`make_wsgi_app`. Returns the server; ``close()`` stops it.

    :raises ConfigurationError: the port is not a valid number or cannot be bound.
    """
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be a number from 0 to 65535, not {port!r}")
    app = make_wsgi_app(*electors, registry=registry, metrics=metrics)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            pass  # one line per probe and scrape on stderr would drown the application's logs

    try:
        server = make_server(addr, port, app, Server, QuietHandler)
    except OSError as exc:
        fix = ("choose a free port" if exc.errno == errno.EADDRINUSE else
               "a port below 1024 needs privileges: choose a higher one"
               if exc.errno == errno.EACCES else "check addr (an IPv4 address or host name of "
               "this machine) and port")
        raise ConfigurationError(f"cannot serve /metrics and /healthz on {addr}:{port}: {exc}; "
                                 f"{fix}") from exc
    thread = threading.Thread(target=server.serve_forever, daemon=True,
                              name=f"singleton_jobs-metrics-{server.server_port}")
    thread.start()
    return MetricsServer(server, thread)


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_restart_counts_after_fork)
