"""Celery beat on every replica: only the leader sends due periodic tasks.

Name the scheduler when starting beat (or set ``beat_scheduler``)::

    celery -A proj beat -S singleton_jobs.celery:LeaderScheduler
    celery -A proj worker -B --scheduler singleton_jobs.celery:LeaderScheduler
    celery -A proj beat -S singleton_jobs.celery:LeaderDatabaseScheduler   # django-celery-beat

Every replica runs beat on the same schedule; an elector (any backend) decides which one sends.

* ``LeaderScheduler`` (Celery's default ``PersistentScheduler``, one schedule file per replica):
  a follower moves every entry on at its due time exactly as the leader does, without sending
  it, so a new leader continues the schedule instead of replaying a backlog. The leadership
  check is made in memory right before each send; a send is made inside the leader's term, and
  carries its fencing token in the task's headers (``singleton_jobs_fencing_token``).
* ``LeaderDatabaseScheduler`` (django-celery-beat's ``DatabaseScheduler``: one schedule in the
  database for the fleet): followers neither read nor write the schedule. A replica that starts
  leading reads it afresh, so the entries that fell due during a failover are sent once, and
  the leader writes an entry's ``last_run_at`` right after sending it.

A new leader sends due entries within one retry period (followers of the database scheduler
look at leadership once per retry period); a paused leader that wakes up after its lease sends
nothing; a beat stopped by SIGTERM or Ctrl+C releases the lease, so the next one takes over
within one retry period.

Configuration, from the Celery app's configuration (``app.conf``):

==================================  =========================================================
``singleton_jobs_backend``          ``"redis"``, ``"sql"``, ``"file"`` or ``"kubernetes"``;
                                    default ``"redis"`` with a Redis broker, else required
``singleton_jobs_url``              redis/sql: the server or database URL (redis: default the
                                    broker URL)
``singleton_jobs_lease_name``       the lease's name (default ``"celery-beat"``); file: the
                                    file ``<name>.lease`` in the per-user lease directory
``singleton_jobs_lease_path``       file: an explicit lease file path instead
``singleton_jobs_namespace``        kubernetes: the Lease's namespace (default: the pod's)
``singleton_jobs_table``            sql: the leases table (default ``singleton_jobs_leases``)
``singleton_jobs_key_prefix``       redis: the keys' prefix (default ``singleton_jobs:``)
``singleton_jobs_identity``         this replica's identity (default: unique per process)
``singleton_jobs_lease_duration``   seconds (default 15)
``singleton_jobs_renew_deadline``   seconds (default 10)
``singleton_jobs_retry_period``     seconds (default 2)
==================================  =========================================================

A key that starts with ``singleton_jobs_`` and is not one of these is refused, naming the
known ones (a typo would otherwise be ignored).

Requires ``pip install "singleton_jobs[celery]"`` (and the extra of the backend).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime
from typing import Any

try:
    from celery.beat import PersistentScheduler
    from celery.schedules import schedule as interval_schedule
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('singleton_jobs.celery needs Celery 5: pip install "singleton_jobs[celery]"'
                      ) from exc

from .election import Elector, exit_on_sigterm
from .errors import ConfigurationError

logger = logging.getLogger(__name__)

PREFIX = "singleton_jobs_"
#: The configuration keys read from ``app.conf``, and their defaults.
DEFAULTS: dict[str, Any] = {
    "backend": None, "url": None, "lease_name": "celery-beat", "lease_path": None,
    "namespace": None, "table": None, "key_prefix": None, "identity": None,
    "lease_duration": 15.0, "renew_deadline": 10.0, "retry_period": 2.0,
}
BACKENDS = ("redis", "sql", "file", "kubernetes")
#: The header that carries the sending leader's fencing token.
FENCING_HEADER = "singleton_jobs_fencing_token"


def _settings(conf: Any) -> dict[str, Any]:
    """The ``singleton_jobs_*`` keys of a Celery configuration, with defaults; unknown keys
    are refused."""
    given = {key[len(PREFIX):]: conf[key] for key in list(conf.keys())
             if isinstance(key, str) and key.lower().startswith(PREFIX)}
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        known = ", ".join(PREFIX + key for key in DEFAULTS)
        names = ", ".join(PREFIX + key for key in unknown)
        raise ConfigurationError(f"unknown Celery setting(s) {names}; the settings of "
                                 f"singleton_jobs.celery are {known}")
    return {**DEFAULTS, **{key: value for key, value in given.items() if value is not None}}


def elector_from_config(app: Any) -> Elector:
    """The elector the beat schedulers use, built from ``app.conf`` (see the module
    documentation for the keys).

    :raises ConfigurationError: a setting is missing, unknown or invalid.
    """
    settings = _settings(app.conf)
    backend = settings["backend"]
    broker = str(app.conf.broker_url or "")
    if backend is None:
        if not broker.startswith(("redis://", "rediss://")):
            raise ConfigurationError(
                f"set {PREFIX}backend to one of {', '.join(BACKENDS)} in the Celery "
                "configuration: beat needs to know where to keep its lease (the default, "
                f"redis on the broker's server, needs a Redis broker, not {broker or 'none'!r})")
        backend = "redis"
    if backend not in BACKENDS:
        raise ConfigurationError(f"{PREFIX}backend ({backend!r}) must be one of "
                                 f"{', '.join(BACKENDS)}")
    options = {key: settings[key] for key in ("identity", "lease_duration", "renew_deadline",
                                               "retry_period")}
    name = settings["lease_name"]
    if backend == "redis":
        from .backends.redis import DEFAULT_KEY_PREFIX, RedisElector

        url = settings["url"] or broker
        if not url:
            raise ConfigurationError(f"set {PREFIX}url to the Redis server's URL")
        return RedisElector(url, name, key_prefix=settings["key_prefix"] or DEFAULT_KEY_PREFIX,
                            **options)
    if backend == "sql":
        from .backends.sql import DEFAULT_TABLE, SQLElector

        if not settings["url"]:
            raise ConfigurationError(f"set {PREFIX}url to a SQLAlchemy database URL, e.g. "
                                     "'postgresql+psycopg://app@db/app'")
        return SQLElector(settings["url"], name, table=settings["table"] or DEFAULT_TABLE,
                          **options)
    if backend == "kubernetes":
        from .backends.kubernetes import KubernetesElector

        return KubernetesElector(name, namespace=settings["namespace"], **options)
    from .backends.file import FileElector

    if settings["lease_path"]:
        return FileElector(settings["lease_path"], **options)
    return FileElector(name=name, **options)


def _release_on_sigterm() -> None:
    """Where SIGTERM is left at its default action (which kills at once, without releasing the
    lease), unwind instead, as ``celery beat`` does: beat then closes its scheduler, which
    releases. A handler already installed (``celery beat``'s, the one a ``worker -B`` beat
    process inherits) is left alone."""
    import threading

    if threading.current_thread() is threading.main_thread():
        exit_on_sigterm()


class LeaderOnlyBeatMixin:
    """What both schedulers share: the elector, the check before each send, the release at
    close. Mixed in before a Celery ``Scheduler`` class."""

    app: Any
    elector: Elector | None = None

    def _start_elector(self) -> Elector:
        if self.elector is None:
            self.elector = elector_from_config(self.app)
        if not self.elector.running:
            self.elector.start()
        return self.elector

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        elector = self.elector
        term = None if elector is None else elector.current_term
        if term is None:
            logger.info("Scheduler: not sending due task %s (%s): this beat is not the leader",
                        entry.name, entry.task)
            return
        # Not counted as a body of the term: beat's SIGTERM handler stops the elector on the
        # thread that sends, which would then leave the lease to expire instead of releasing
        # it. A send interrupted by that handler either went out before the release or never.
        self._send(_with_token(entry, term.fencing_token), producer)

    def _send(self, entry: Any, producer: Any) -> None:
        super().apply_entry(entry, producer=producer)  # type: ignore[misc]

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]  # syncs the schedule first
        finally:
            if self.elector is not None:
                self.elector.stop()  # releases: the next beat takes over at once


def _with_token(entry: Any, token: int) -> Any:
    """A copy of ``entry`` whose messages carry the fencing token in their headers."""
    sent = object.__new__(type(entry))  # not copy.copy: entries pickle by their constructor
    sent.__dict__.update(entry.__dict__)
    options = dict(entry.options or {})
    options["headers"] = {**(options.get("headers") or {}), FENCING_HEADER: token}
    sent.options = options
    return sent


def _align(entry: Any) -> Any:
    """Put an interval entry's ``last_run_at`` on the grid of its interval (from the epoch),
    so that every replica's copy falls due at the same moments."""
    every = getattr(entry.schedule, "run_every", None)
    last = entry.last_run_at
    if (isinstance(entry.schedule, interval_schedule) and every is not None and last is not None
            and every.total_seconds() > 0):
        seconds = every.total_seconds()
        aligned = math.floor(last.timestamp() / seconds) * seconds
        # A naive time is local time, as datetime.timestamp() read it.
        entry.last_run_at = datetime.fromtimestamp(aligned, last.tzinfo)
    return entry


def _due_at(entry: Any) -> float | None:
    """When ``entry`` (not yet moved on) fell due, as Unix seconds; None if unknown."""
    try:
        remaining = entry.schedule.remaining_estimate(entry.last_run_at)
        now = entry.default_now()
        return float((now + remaining).timestamp())
    except Exception:  # noqa: BLE001 - a schedule we cannot judge: send as Celery would
        return None


class LeaderScheduler(LeaderOnlyBeatMixin, PersistentScheduler):  # type: ignore[misc]
    """Celery's ``PersistentScheduler`` whose due entries are sent by the leader only
    (see the module documentation).

    Every replica keeps its own copy of the schedule, so the copies must agree on *when* an
    entry is due: interval entries (``timedelta`` / ``schedule``) fall due on a grid of their
    interval counted from the Unix epoch, on every replica, rather than one interval after the
    moment each replica happened to send or skip them (crontab entries are on the clock
    already). A due time that came while this beat was following belongs to the leader of that
    moment, so a beat that has just started leading does not send it again; entries that were
    already overdue when this beat started (a restart after downtime) are sent as usual.
    """

    _following_since = float("inf")

    def setup_schedule(self) -> None:
        super().setup_schedule()
        for entry in self.schedule.values():
            _align(entry)
        self._following_since = time.time()
        _release_on_sigterm()
        self._start_elector()

    def reserve(self, entry: Any) -> Any:
        return _align(super().reserve(entry))

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        elector = self.elector
        term = None if elector is None else elector.current_term
        if term is not None:
            due = _due_at(entry)
            if due is not None and self._following_since <= due < term.acquire_time:
                logger.info("Scheduler: not sending due task %s (%s): it fell due before this "
                            "beat started leading, when another beat led", entry.name,
                            entry.task)
                return
        super().apply_entry(entry, producer)

    @property
    def info(self) -> str:
        elector = self.elector
        lease = "" if elector is None else f", lease {elector.store.name}"
        return f"{super().info}{lease} (leader-only sends)"


def __getattr__(name: str) -> Any:
    # django-celery-beat (and Django) are imported only when its scheduler is named.
    if name == "LeaderDatabaseScheduler":
        from ._django_beat import LeaderDatabaseScheduler

        return LeaderDatabaseScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
