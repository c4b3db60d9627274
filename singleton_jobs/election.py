"""The election engine: one background thread campaigns for and renews a lease.

All timing lives here, once, for every backend. The semantics are client-go's
``tools/leaderelection``:

* a follower tries to acquire every ``retry_period`` (with jitter), and judges the current
  holder's lease expired only ``lease_duration`` after *it saw the record change*, measured on
  its own monotonic clock, so wall-clock skew between replicas never decides anything;
* a released record (holder ``""``) is taken at once;
* the leader renews every ``retry_period`` and steps down when no renew succeeded within
  ``renew_deadline``; it then campaigns again as a follower.

On top of that :attr:`Elector.is_leader` is safe on its own: it is a comparison of the monotonic
clock with ``start of the last successful renew + renew_deadline``, so a process that was paused
(SIGSTOP, a long GC, a stuck renew call) reports False the moment it wakes, before any guarded job
body can run. Since a follower can take over no earlier than ``lease_duration`` after that renew,
the two never overlap: ``lease_duration - renew_deadline`` is the safety margin.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import queue
import random
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationError, LeadershipLost, NotLeaderError, SingletonJobsError
from .lease import LeaseRecord, check_identity, default_identity
from .store import LeaseStore, Snapshot, Version
from .terms import Term

logger = logging.getLogger(__name__)

#: client-go's ``JitterFactor``: the renew deadline must exceed this many retry periods.
JITTER_FACTOR = 1.2
#: A follower waits ``retry_period * (1 - uniform(0, ACQUIRE_JITTER))`` between attempts: the
#: jitter spreads contenders apart, and stays *within* one period so that a released lease is
#: taken within one ``retry_period``, as documented. The compare-and-swap decides every race.
ACQUIRE_JITTER = 0.2
#: The longest lease accepted, in a setting or in a stored record (one day). A record that
#: claims more is judged with the observer's own ``lease_duration``: a garbage or hostile value
#: such as 1e308 must not keep a dead holder's lease forever.
MAX_LEASE_DURATION = 86400.0
#: Timings longer than this (one hour) are accepted with a warning: 15000/10000/2000 are
#: milliseconds by mistake far more often than leases of four hours on purpose.
SUSPICIOUS_TIMING = 3600.0
#: A replica whose ``on_started_leading`` raised sits out this many lease durations before it
#: campaigns again, doubling on each further failure up to ``SIT_OUT_MAX`` lease durations.
SIT_OUT_MAX = 16
#: Upper bounds (seconds) of the renew latency histogram's buckets (Prometheus' defaults).
RENEW_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                         7.5, 10.0, math.inf)


def _suspend_aware_clock() -> Callable[[], float]:
    """A monotonic clock that keeps counting while the machine is suspended, where one exists.

    ``CLOCK_MONOTONIC`` stops during suspend on Linux: a leader suspended past its lease would
    wake up still believing it leads. ``CLOCK_BOOTTIME`` counts the suspended time.
    """
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        try:
            time.clock_gettime(boottime)
        except OSError:  # pragma: no cover - a kernel older than Linux 2.6.39
            pass
        else:
            return functools.partial(time.clock_gettime, boottime)
    return time.monotonic  # pragma: no cover - not Linux


#: The clock every election decision uses (``CLOCK_BOOTTIME`` on Linux, else ``monotonic``).
clock: Callable[[], float] = _suspend_aware_clock()

# Every elector of this process, so that a fork() can disarm the copies the child inherits.
_electors: weakref.WeakSet[Elector] = weakref.WeakSet()
_electors_lock = threading.Lock()


def live_electors() -> list[Elector]:
    """Every elector of this process that has not been garbage-collected (a snapshot taken
    under a lock: iterating a WeakSet while another thread adds to it raises)."""
    with _electors_lock:
        return list(_electors)


def _disarm_inherited_electors() -> None:
    global _electors_lock, _retired_lock
    # Locks may have been held by a parent's thread at the moment of the fork.
    _electors_lock = threading.Lock()
    _retired_lock = threading.Lock()
    retired_counts.clear()           # the parent's figures, reported by the parent
    for elector in live_electors():
        elector._after_fork_in_child()


def check_liveness_timeout(liveness_timeout: float | None) -> None:
    """``liveness_timeout`` is None (no application watchdog) or a positive number of seconds.

    :raises ConfigurationError: any other value.
    """
    if liveness_timeout is None:
        return
    if isinstance(liveness_timeout, bool) or not isinstance(liveness_timeout, (int, float)):
        raise ConfigurationError(f"liveness_timeout must be a number of seconds or None, not "
                                 f"{liveness_timeout!r}")
    if not math.isfinite(liveness_timeout) or not 0 < liveness_timeout <= MAX_LEASE_DURATION:
        raise ConfigurationError(
            f"liveness_timeout ({liveness_timeout}) must be a positive number of seconds, at "
            f"most {MAX_LEASE_DURATION:g}: how long the application may go without calling "
            "elector.heartbeat() before this replica stops leading (None turns the watchdog off)")


def check_timing(lease_duration: float, renew_deadline: float, retry_period: float) -> None:
    """Validate the three timings the way client-go does, with messages that name the fields.

    :raises ConfigurationError: a value is not a positive finite number, or
        ``lease_duration > renew_deadline > 1.2 * retry_period`` does not hold.
    """
    for name, value in (("lease_duration", lease_duration), ("renew_deadline", renew_deadline),
                        ("retry_period", retry_period)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise ConfigurationError(f"{name} ({value}) must be a positive number of seconds")
        if value > MAX_LEASE_DURATION:
            raise ConfigurationError(f"{name} ({value}) must be at most {MAX_LEASE_DURATION:g} "
                                     "seconds (one day); did you pass milliseconds?")
    if lease_duration <= renew_deadline:
        raise ConfigurationError(
            f"lease_duration ({lease_duration}) must be greater than renew_deadline "
            f"({renew_deadline}): followers take over after lease_duration, so the leader must "
            "give up before that")
    if renew_deadline <= JITTER_FACTOR * retry_period:
        raise ConfigurationError(
            f"renew_deadline ({renew_deadline}) must be greater than {JITTER_FACTOR} * "
            f"retry_period ({retry_period}) = {JITTER_FACTOR * retry_period:g}, so the leader "
            "gets more than one renew attempt before it steps down")
    long = [f"{name} ({value:g})" for name, value in (
        ("lease_duration", lease_duration), ("renew_deadline", renew_deadline),
        ("retry_period", retry_period)) if value > SUSPICIOUS_TIMING]
    if long:
        warn_caller(f"{', '.join(long)} longer than an hour: timings are seconds; did you pass "
                    "milliseconds? (a crashed leader is replaced only after lease_duration)")


def warn_caller(message: str) -> None:
    """A UserWarning attributed to the first frame outside this package (the user's call)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2  # level 2 is our caller's frame for warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(message, UserWarning, stacklevel=level)


def _positional_parameters(init: Callable[..., Any]) -> list[str]:
    import inspect  # deferred: only a misused constructor needs it

    return [parameter.name for parameter in list(inspect.signature(init).parameters.values())[1:]
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)]


class ElectorCounts:
    """What the metrics report about one elector. Only its election thread writes them (a stop()
    from another thread adds a step-down under the elector's lock), so plain integers suffice;
    a scrape may read them at any time."""

    __slots__ = ("renew_attempts", "renew_failures", "renew_buckets", "renew_seconds",
                 "leader_changes", "step_downs")

    def __init__(self) -> None:
        self.renew_attempts = 0
        self.renew_failures: dict[str, int] = {}   # by reason
        self.renew_buckets = [0] * len(RENEW_SECONDS_BUCKETS)
        self.renew_seconds = 0.0
        self.leader_changes = 0                    # changes of holder this replica saw
        self.step_downs: dict[str, int] = {}       # by reason

    def add(self, other: ElectorCounts) -> None:
        self.renew_attempts += other.renew_attempts
        for reason, count in list(other.renew_failures.items()):
            self.renew_failures[reason] = self.renew_failures.get(reason, 0) + count
        for index, count in enumerate(other.renew_buckets):
            self.renew_buckets[index] += count
        self.renew_seconds += other.renew_seconds
        self.leader_changes += other.leader_changes
        for reason, count in list(other.step_downs.items()):
            self.step_downs[reason] = self.step_downs.get(reason, 0) + count


#: The counts of electors that were garbage-collected, by lease name: the metrics keep adding
#: them, so that a counter never goes down when an elector goes away.
retired_counts: dict[str, ElectorCounts] = {}
_retired_lock = threading.Lock()


def _retire(name: str, counts: ElectorCounts, pid: int) -> None:
    if pid != os.getpid():
        return  # a copy inherited through fork(): its counts are the parent's
    with _retired_lock:
        retired_counts.setdefault(name, ElectorCounts()).add(counts)


#: A queued callback: its name for logs, the callable, its arguments, and the term it belongs to.
_Callback = tuple[str, Callable[..., Any], tuple[Any, ...], int]

# Outcomes of one attempt to acquire or renew.
_LEADING = "leading"      # acquired or renewed: this replica holds the lease
_HELD = "held"            # another replica holds an unexpired lease
_CONFLICT = "conflict"    # lost a compare-and-swap race; read again next time
_ERROR = "error"          # the store failed; retry until the deadline
_DELETED = "deleted"      # the record vanished under this leader: step down and wait


class Elector:
    """Campaigns for a lease in a background thread and tells guards whether to run.

    ``store`` is any :class:`~singleton_jobs.LeaseStore`. Callbacks run on a separate
    thread, in order, so a slow or raising callback never delays a renew:
    ``on_started_leading()``, ``on_stopped_leading()``, ``on_new_leader(identity)``. If
    ``on_started_leading`` raises, the exception is logged, this replica releases the lease (so
    a healthy replica can lead) and sits out at least one lease duration before it campaigns
    again, longer if it keeps failing.

    With ``liveness_timeout`` a leader's application proves it is alive by calling
    :meth:`heartbeat` at least that often (from its main loop or job loop): when heartbeats
    stop, this replica logs an ERROR, steps down and releases the lease so another replica
    leads about one retry period later, and follows until a heartbeat comes. Followers need not
    heartbeat; a new leader gets a whole ``liveness_timeout`` before its first heartbeat is due.
    Without it, a replica whose application is stuck keeps leading as long as its election
    thread renews.

    An elector belongs to the process that started it. A copy inherited through ``fork()``
    (pre-fork servers, process pools) never leads and never writes the parent's lease; starting
    it raises :class:`SingletonJobsError`. An elector created but not yet started before a fork
    can be started in the child, under a fresh default identity.

    :raises ConfigurationError: invalid timing or identity.
    """

    # The clock seam: tests and simulations may replace these on an instance.
    _monotonic: Callable[[], float] = staticmethod(clock)
    _wall: Callable[[], float] = staticmethod(time.time)

    def __new__(cls, *args: Any, **kwargs: Any) -> Elector:
        # Positional timings (FileElector(path, 15, 10, 2)) would be a raw TypeError about
        # positional arguments: say which keywords to use instead.
        names = _positional_parameters(cls.__init__)
        if len(args) > len(names):
            given = ", ".join(names) or "none"
            raise TypeError(
                f"{cls.__name__}() takes {len(names)} positional argument(s) ({given}) but "
                f"{len(args)} were given: pass the others as keywords, e.g. "
                f"{cls.__name__}({', '.join(names)}{', ' if names else ''}lease_duration=15, "
                "renew_deadline=10, retry_period=2)")
        return super().__new__(cls)

    def __init__(
        self,
        store: LeaseStore,
        *,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], Any] | None = None,
        on_stopped_leading: Callable[[], Any] | None = None,
        on_new_leader: Callable[[str], Any] | None = None,
        liveness_timeout: float | None = None,
    ) -> None:
        check_timing(lease_duration, renew_deadline, retry_period)
        check_liveness_timeout(liveness_timeout)
        store.check_lease_duration(lease_duration)
        self.store = store
        self._identity_given = identity is not None
        self.identity: str = default_identity() if identity is None else check_identity(identity)
        self._identity_pid = os.getpid()
        self.lease_duration = float(lease_duration)
        self.renew_deadline = float(renew_deadline)
        self.retry_period = float(retry_period)
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self.liveness_timeout = None if liveness_timeout is None else float(liveness_timeout)

        # is_leader reads only this float (and the pid): monotonic time until which leading is
        # safe, and the process that started this elector.
        self._leading_until = -math.inf
        self._owner_pid: int | None = None
        self._exit_hook_pid: int | None = None      # where a multiprocessing exit hook is set
        # The record this elector last wrote, and its version: a record counts as ours only if
        # it is this term (same identity, acquire time and transitions), whoever else uses the
        # same identity string.
        self._term: LeaseRecord | None = None
        self._attempted: LeaseRecord | None = None  # the record of the last write attempted
        # What this replica last saw in the store, and when (monotonic) it saw it change.
        self._snapshot: Snapshot | None = None
        self._observed_at = -math.inf
        self._term_duration = 0.0                   # longest duration seen in the current term
        self._absent_since: float | None = None     # when the record was first seen missing
        self._absent_floor: int | None = -1         # the store's fencing floor at that moment
        self._highest_transitions = -1
        self._write_started = -math.inf            # when the last store write was sent
        self._duplicate_reported = False
        # The application watchdog: when heartbeat() was last called, and when this replica
        # stepped down because it was not called for liveness_timeout (None: it did not, or
        # a heartbeat came since and the election thread noticed).
        self._heartbeat_at = -math.inf
        self._liveness_lost_at: float | None = None
        # For health and metrics: the start of the last successful write, and of the store
        # interaction under way (None between them).
        self._renewed_at = -math.inf
        self._busy_since: float | None = None
        self.counts = ElectorCounts()
        weakref.finalize(self, _retire, store.name, self.counts, os.getpid()).atexit = False

        self._changed = threading.Condition()       # notified on every leadership change
        self._leading = False                       # the loop's view; guarded by _changed
        self._running = False
        self._stop_requested = False
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._abdicate = threading.Event()
        self._start_failures = 0                    # on_started_leading raised this many times
        self._terms_led = 0                         # tags on_started_leading with its term
        self._term_serial = 0                       # the current Term object's serial
        self._current_term: Term | None = None      # the term led last (see terms.py)
        self._earlier_terms: list[Term] = []        # ended terms whose bodies still ran
        self._stopped_from: int | None = None       # the thread that called stop()
        self._release_on_stop = True
        self._thread: threading.Thread | None = None
        self._callbacks: queue.SimpleQueue[_Callback | None]
        self._callbacks = queue.SimpleQueue()
        self._callback_thread: threading.Thread | None = None
        self._last_error = ""
        self._listeners: list[Callable[[bool], Any]] = []
        with _electors_lock:
            _electors.add(self)

    def __repr__(self) -> str:
        state = "leader" if self.is_leader else "follower"
        return f"<{type(self).__name__} {self.identity!r} on {self.store.name} ({state})>"

    # -- what guards read: memory only ------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True only while this replica holds the lease and its last renew is recent enough.

        Always False in a process that inherited this elector through ``fork()``.
        """
        return self._monotonic() < self._leading_until and self._owner_pid == os.getpid()

    @property
    def fencing_token(self) -> int | None:
        """The lease's transition counter while leading (strictly increasing across leaders)."""
        term = self._term
        return term.transitions if term is not None and self.is_leader else None

    @property
    def current_term(self) -> Term | None:
        """This replica's leadership term while it leads, else None (see
        :class:`~singleton_jobs.Term`: its fencing token, ``check()``, ``lost``)."""
        term = self._current_term
        return term if term is not None and term.active else None

    @property
    def leader(self) -> str | None:
        """Identity of the leader as last seen, or None if nobody is known to lead."""
        if self.is_leader:
            return self.identity
        snapshot = self._snapshot
        if snapshot is None or self._absent_since is not None:
            return None
        record = snapshot[0]
        if not record.readable or record.released or record.mark or self._is_ours(record):
            return None
        return record.holder

    @property
    def running(self) -> bool:
        """True between start() and stop() in the process that started this elector."""
        return self._running and self._owner_pid == os.getpid()

    @property
    def healthy(self) -> bool:
        """False when this replica is stuck: see :attr:`health_problem`. For liveness probes."""
        return self.health_problem is None

    @property
    def health_problem(self) -> str | None:
        """Why this replica is unhealthy, or None. Memory only; for liveness probes.

        Unhealthy means a restart would help:

        * the election thread believes it leads but has not renewed for longer than
          ``lease_duration`` plus a tolerance (client-go's ``HealthzAdaptor`` rule), or a store
          call of the election thread has not returned within that tolerance, leading or not.
          The tolerance, ``retry_period + 4 * renew_deadline``, is the longest one attempt may
          take when each of its store calls (at most four) respects its timeout;
        * the election thread died;
        * with ``liveness_timeout``: this replica leads and the application has not called
          :meth:`heartbeat` for that long, or it stepped down for that reason and no heartbeat
          came since.

        A follower, and an elector that is not running, are healthy.
        """
        if not self.running:
            return None
        now = self._monotonic()
        thread = self._thread
        if (thread is not None and thread.ident is not None and not thread.is_alive()
                and not self._stopping.is_set()):
            return f"{self.identity}: the election thread of lease {self.store.name} exited"
        tolerance = self._stuck_after()
        if self._leading and now - self._renewed_at > self.lease_duration + tolerance:
            return (f"{self.identity}: the election thread believes it leads lease "
                    f"{self.store.name} but has not renewed it for {now - self._renewed_at:.1f}s "
                    f"(lease_duration {self.lease_duration:g}s + tolerance {tolerance:g}s): it "
                    "is stuck")
        busy_since = self._busy_since
        if busy_since is not None and now - busy_since > tolerance:
            return (f"{self.identity}: a call to the store of lease {self.store.name} has not "
                    f"returned for {now - busy_since:.1f}s (tolerance {tolerance:g}s): the "
                    "election thread is stuck")
        if self.liveness_timeout is not None:
            silence = now - self._heartbeat_at
            if self._leading and silence > self.liveness_timeout:
                return (f"{self.identity}: no heartbeat() for {silence:.1f}s while leading, past "
                        f"liveness_timeout ({self.liveness_timeout:g}s): the application looks "
                        "stuck")
            lost_at = self._liveness_lost_at
            if lost_at is not None and self._heartbeat_at <= lost_at:
                return (f"{self.identity}: stepped down from lease {self.store.name} after no "
                        f"heartbeat() for liveness_timeout ({self.liveness_timeout:g}s), and "
                        f"none came since ({silence:.1f}s): the application looks stuck")
        return None

    def heartbeat(self) -> None:
        """Tell the elector that the application is alive (see ``liveness_timeout``).

        Call it from the loop whose progress matters (the main loop, the job loop) at least
        once per ``liveness_timeout`` while this replica leads; calls on followers are allowed
        and cost nothing. Memory only; cheap enough to call on every iteration.
        """
        self._heartbeat_at = self._monotonic()
        if self._liveness_lost_at is not None:
            self._wake.set()  # campaign again now, not a retry period later

    def _stuck_after(self) -> float:
        """The longest one attempt may take: four store calls within their timeouts, and the
        retry period before it."""
        return self.retry_period + 4 * self.renew_deadline

    def log_fields(self) -> dict[str, Any]:
        """What every log line of this elector carries as ``extra`` fields: ``lease`` (where the
        lease lives), ``identity`` and ``fencing_token`` (the token of this replica's term
        while the stored lease is still that term — also in the lines that say it stopped
        leading after a missed deadline; None on followers). JSON log formatters pick them
        up."""
        term, snapshot = self._term, self._snapshot
        ours = (term is not None and snapshot is not None and self._absent_since is None
                and self._is_ours(snapshot[0]))
        return {"lease": self.store.name, "identity": self.identity,
                "fencing_token": term.transitions if ours and term is not None else None}

    def _log(self, level: int, message: str, *args: Any, exc_info: bool = False) -> None:
        if logger.isEnabledFor(level):
            logger.log(level, message, *args, exc_info=exc_info, extra=self.log_fields())

    def add_leadership_listener(self, listener: Callable[[bool], Any]) -> None:
        """Call ``listener(True)`` whenever this replica starts leading, ``listener(False)``
        whenever it stops. Listeners run on the callback thread, after the callbacks given to
        the constructor; integrations (the APScheduler job store) use this."""
        self._listeners = [*self._listeners, listener]

    def remove_leadership_listener(self, listener: Callable[[bool], Any]) -> None:
        self._listeners = [existing for existing in self._listeners if existing != listener]

    # -- processes ----------------------------------------------------------------------------

    def _inherited(self) -> bool:
        """True in a process that got this (started) elector through fork()."""
        return self._owner_pid is not None and self._owner_pid != os.getpid()

    def _inherited_error(self) -> SingletonJobsError:
        return SingletonJobsError(
            f"{self.identity}: this elector was started in process {self._owner_pid} and "
            f"inherited by fork() into process {os.getpid()}, where it never leads. Create and "
            "start the elector in the process that runs the jobs, after the fork: gunicorn's "
            "post_fork hook (or no --preload), uWSGI's @postfork (or lazy-apps = true), Celery's "
            "worker_process_init signal, a multiprocessing Pool initializer, or the 'spawn' "
            "start method (see Deploying in the README)")

    def _after_fork_in_child(self) -> None:
        """Runs in a child right after fork(): no thread of the parent exists here."""
        self._leading_until = -math.inf
        self._leading = False
        # Locks may have been held by the parent's threads at the moment of the fork.
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._abdicate = threading.Event()
        self._callbacks = queue.SimpleQueue()
        self._thread = self._callback_thread = None
        if self._owner_pid is not None:
            self._running = False
            atexit.unregister(self.stop)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Elector:
        """Start campaigning in a background thread. Returns self; a second call does nothing.

        :raises SingletonJobsError: this elector was inherited through ``fork()``, or its
            previous election thread is still finishing a store call.
        """
        if self._inherited():
            raise self._inherited_error()
        with self._changed:
            if self._stop_requested:  # a stop() is under way in another thread: let it end
                self._changed.wait_for(lambda: not self._running, self._stop_budget() + 1)
            if self._running:
                return self
            previous = self._thread
            if previous is not None and previous.is_alive():
                raise SingletonJobsError(f"{self.identity}: the previous election thread is "
                                         "still finishing a store call; try start() again later")
            if self._identity_pid != os.getpid() or self.store.inherited():
                # Created before a fork, started after it: the parent's identity, locks and
                # connections are not this process's.
                self.store.after_fork()
                if self._identity_pid != os.getpid() and not self._identity_given:
                    self.identity = default_identity()
                self._identity_pid = os.getpid()
            self._owner_pid = os.getpid()
            self._running = True
            self._stop_requested = False
            self._stopped_from = None
            self._stopping.clear()
            self._wake.clear()
            self._abdicate.clear()
            self._duplicate_reported = False
            self._heartbeat_at = self._monotonic()  # the application's first period starts now
            self._liveness_lost_at = None
            # A fresh queue per run: an end marker left by an earlier stop() cannot end it.
            callbacks: queue.SimpleQueue[_Callback | None]
            callbacks = self._callbacks = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"singleton_jobs-elector-{self.identity}")
            self._callback_thread = threading.Thread(
                target=self._run_callbacks, args=(callbacks,), daemon=True,
                name=f"singleton_jobs-callbacks-{self.identity}")
            self._callback_thread.start()
            self._thread.start()
        atexit.register(self.stop)
        multiprocessing = sys.modules.get("multiprocessing")
        if (multiprocessing is not None and multiprocessing.parent_process() is not None
                and self._exit_hook_pid != os.getpid()):
            # A multiprocessing child (a Pool worker, a Process) leaves through os._exit(),
            # which skips atexit; its own exit hook releases the lease instead (registered
            # once per process: stop() on a stopped elector does nothing).
            from multiprocessing.util import Finalize

            Finalize(None, self.stop, exitpriority=10)
            self._exit_hook_pid = os.getpid()
        self._log(logging.INFO, "%s: campaigning for lease %s", self.identity, self.store.name)
        return self

    def stop(self, release: bool = True) -> None:
        """Stop campaigning. Guards see ``is_leader`` False before this returns, and
        ``on_stopped_leading`` and the listeners are called if this replica was leading.

        With ``release`` (the default) a held lease is released, so a follower takes over
        within one retry period instead of one lease duration — once the guarded bodies of the
        ending term have returned (asynchronous ones are cancelled; see
        :meth:`Term.running_bodies <singleton_jobs.Term.running_bodies>`), at most until the
        lease would have expired anyway. In a process that inherited
        this elector through ``fork()`` this does nothing: the lease is the parent's.
        """
        atexit.unregister(self.stop)
        if self._inherited():
            return
        with self._changed:
            if not self._running:
                return
            if self._stop_requested:  # another thread is stopping it: wait for that to finish
                self._changed.wait_for(lambda: not self._running, self._stop_budget() + 1)
                return
            self._stop_requested = True
            self._release_on_stop = release
            self._stopped_from = threading.get_ident()
            # Under the lock, so that a renew finishing now cannot extend leadership again.
            self._leading_until = -math.inf
            self._stopping.set()
            thread, callbacks = self._thread, self._callbacks
            callback_thread = self._callback_thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._stop_budget())
            if thread.is_alive():
                self._log(logging.WARNING, "%s: election thread still busy after stop(); it "
                          "will exit when its store call returns", self.identity)
        # A no-op if the loop already did it:
        self._step_down("elector stopped", "stopped", logging.INFO)
        callbacks.put(None)
        if callback_thread is not None and callback_thread is not threading.current_thread():
            callback_thread.join(self.lease_duration)
        with self._changed:
            self._running = False
            self._changed.notify_all()

    def _stop_budget(self) -> float:
        """How long stop() waits for the election thread: an attempt in flight (up to three
        store calls of renew_deadline each), usually much less, then the running job bodies
        (at most until the lease expires) and the release."""
        return 3 * self.renew_deadline + self.retry_period + self.lease_duration

    def __enter__(self) -> Elector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        """Block until this replica leads, the elector stops, or ``timeout`` passes.

        :raises SingletonJobsError: the elector was never started, or was inherited through
            ``fork()``.
        """
        if self._inherited():
            raise self._inherited_error()
        if not self._running:
            raise SingletonJobsError(f"{self!r} is not running; call start() first "
                                     "(or acquire_lease(), which starts it)")
        with self._changed:
            self._changed.wait_for(lambda: self.is_leader or not self._running, timeout)
        return self.is_leader

    # -- the seed's LeaderElector interface -------------------------------------------------

    def acquire_lease(self, timeout: float | None = None) -> bool:
        """Start campaigning if needed and block until this replica leads (or ``timeout``)."""
        self.start()
        return self.wait_for_leadership(timeout)

    def monitor_lease(self, on_shutdown: Callable[[], Any] | None = None) -> None:
        """Block while this replica leads (renewing in the background), then react once.

        When leadership is lost or the elector stops, call ``on_shutdown()`` if given and
        return; without it, raise :class:`LeadershipLost`.

        :raises NotLeaderError: this replica is not leading when called.
        :raises LeadershipLost: leadership ended and no ``on_shutdown`` was given.
        """
        if not self.is_leader:
            raise NotLeaderError(f"{self.identity} is not the leader of {self.store.name}")
        with self._changed:
            while self.is_leader and self._leading:
                self._changed.wait(self.retry_period)
        if on_shutdown is not None:
            on_shutdown()
            return
        raise LeadershipLost(f"{self.identity} lost leadership of {self.store.name}")

    # -- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        unwatch = None
        try:
            try:
                unwatch = self.store.watch(self._store_released)
            except Exception as exc:  # noqa: BLE001 - polling still works without it
                self._log(logging.WARNING, "%s: no release notifications from %s (%s); "
                          "polling only", self.identity, self.store.name, exc)
            while not self._stopping.is_set():
                if self._campaign():
                    self._lead()
        except BaseException:  # pragma: no cover - a bug; never leave a silent dead leader
            self._log(logging.ERROR, "%s: election thread crashed; no longer leading",
                      self.identity, exc_info=True)
            self._step_down("election thread crashed", "crashed")
        finally:
            self._step_down("elector stopped", "stopped", logging.INFO)
            if self._release_on_stop:
                self._release()
            if unwatch is not None:
                unwatch()

    def _store_released(self) -> None:
        """The store says the lease was released: a follower tries at once, not a period later."""
        if not self._leading:
            self._wake.set()

    def _campaign(self) -> bool:
        """Try to acquire until it works (True) or the elector stops (False)."""
        while not self._stopping.is_set():
            if self._sitting_out_for_liveness():
                self._watch_only()
                self._sleep(self.retry_period)
                continue
            outcome = self._attempt()
            if outcome is _LEADING:
                if self._become_leader(self._write_started):
                    return True
                return False  # stopped meanwhile: _run releases what we just acquired
            wait = self.retry_period * (1 - random.uniform(0, ACQUIRE_JITTER))
            if outcome is _HELD:
                # Wake right when the holder's lease would expire rather than up to one
                # period later: failover stays close to lease_duration.
                expires_in = self._expires_at() - self._monotonic()
                wait = min(wait, max(expires_in, 0.0) + random.uniform(0, 0.05) * self.retry_period)
            self._sleep(wait)
        return False

    def _lead(self) -> None:
        """Renew every retry_period until a renew deadline is missed or the lease is lost."""
        last_attempt = self._monotonic()
        while not self._stopping.is_set():
            self._sleep(last_attempt + self.retry_period - self._monotonic())
            if self._stopping.is_set():
                return  # _run steps down and releases; guards already see is_leader False
            if self._abdicate.is_set():
                self._abdicate.clear()
                self._step_down("on_started_leading raised", "start_failed")
                self._release()
                self._sit_out()
                return
            if self._application_stuck():
                if not self._stopping.is_set():  # stop(release=False) leaves it to _run
                    self._release()  # hand over at once
                return
            last_attempt = self._monotonic()
            # Each attempt may take the whole renew deadline, even past _leading_until: guards
            # already see is_leader False then, and a slow API server still gets through.
            outcome = self._attempt()
            self._count_renew(outcome, self._monotonic() - last_attempt)
            if outcome is _LEADING:
                ended = None
                with self._changed:  # stop() may have ended leadership while we renewed
                    if not self._stopping.is_set() and self._leading:
                        self._renewed_at = self._write_started
                        if self._monotonic() >= self._leading_until:
                            # The renew landed after the deadline: guards saw leadership end
                            # and the term's bodies were told. It does not come back to life;
                            # leading goes on (no callbacks) in a new term.
                            ended = self._open_term()
                        self._leading_until = self._write_started + self.renew_deadline
                if ended is not None:
                    ended._end()
                    self._log(logging.WARNING, "%s: a renew of %s landed %.3gs after the renew "
                              "deadline: leadership lapsed meanwhile; leading on in a new term",
                              self.identity, self.store.name,
                              self._monotonic() - (self._renewed_at + self.renew_deadline))
            elif outcome is _HELD:
                holder = self._snapshot[0].holder if self._snapshot else "?"
                self._step_down(f"lease taken by {holder}", "taken")
                return
            elif outcome is _DELETED:
                self._step_down("lease deleted", "deleted")
                return
            elif self._monotonic() >= self._leading_until:
                self._step_down(self._missed_deadline(), "deadline")
                return

    def _application_stuck(self) -> bool:
        """The application watchdog, checked by a leader before every renew: True (and this
        replica stepped down; the caller releases) when heartbeats are overdue."""
        timeout = self.liveness_timeout
        if timeout is None:
            return False
        now = self._monotonic()
        silence = now - self._heartbeat_at
        if silence <= timeout:
            return False
        self._liveness_lost_at = now
        self._log(logging.ERROR, "%s: no heartbeat() for %.3gs, past liveness_timeout (%gs): the "
                  "application looks stuck; stepping down and releasing lease %s, and not "
                  "campaigning again until heartbeats resume", self.identity, silence, timeout,
                  self.store.name)
        self._step_down(f"liveness_timeout ({timeout:g}s) passed without a heartbeat()",
                        "liveness", logging.ERROR)
        return True

    def _sitting_out_for_liveness(self) -> bool:
        """After a liveness step-down: True until the application calls heartbeat() again."""
        lost_at = self._liveness_lost_at
        if lost_at is None:
            return False
        if self._heartbeat_at <= lost_at:
            return True
        self._liveness_lost_at = None
        self._log(logging.WARNING, "%s: heartbeats resumed; campaigning for lease %s again",
                  self.identity, self.store.name)
        return False

    def _watch_only(self) -> None:
        """Read the lease without competing for it, so that ``leader`` stays current."""
        self._busy_since = self._monotonic()
        try:
            snapshot = self.store.get(timeout=self._call_timeout())
        except Exception:  # noqa: BLE001 - only informational; the next read may work
            return
        finally:
            self._busy_since = None
        if snapshot is not None:
            self._observe(*snapshot)

    def _count_renew(self, outcome: str, seconds: float) -> None:
        """Record one renew attempt for the metrics (election thread only)."""
        counts = self.counts
        counts.renew_attempts += 1
        counts.renew_seconds += seconds
        for index, bound in enumerate(RENEW_SECONDS_BUCKETS):  # pragma: no branch - inf ends it
            if seconds <= bound:
                counts.renew_buckets[index] += 1
                break
        if outcome is not _LEADING:
            reason = "taken" if outcome is _HELD else outcome  # held by another replica
            counts.renew_failures[reason] = counts.renew_failures.get(reason, 0) + 1

    def _sit_out(self) -> None:
        """After on_started_leading raised: let a healthy replica lead before trying again."""
        failures = max(self._start_failures, 1)
        seconds = self.lease_duration * min(2 ** (failures - 1), SIT_OUT_MAX)
        self._log(logging.WARNING, "%s: on_started_leading raised (%d time(s) in a row); not "
                  "campaigning for %.3gs so that another replica can lead", self.identity,
                  failures, seconds)
        deadline = self._monotonic() + seconds
        while not self._stopping.is_set() and self._monotonic() < deadline:
            self._sleep(deadline - self._monotonic())

    def _missed_deadline(self) -> str:
        return f"no renew succeeded within renew_deadline ({self.renew_deadline}s)"

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._wake.wait(seconds):
            self._wake.clear()

    def _judged_duration(self) -> float:
        """How long the current holder may lead after a change we saw: the longest of our own
        lease_duration and any duration written in this term, so that a record rewritten with
        a shorter duration never makes us take over early."""
        duration = self._term_duration
        if not 0 < duration <= MAX_LEASE_DURATION:
            duration = 0.0
        return max(duration, self.lease_duration)

    def _expires_at(self) -> float:
        if self._absent_since is not None:
            # The record vanished: whoever held it may believe it leads until its renew
            # deadline, which ends before one lease duration from now.
            return self._absent_since + self._judged_duration()
        if self._snapshot is None:
            return -math.inf
        return self._observed_at + self._judged_duration()

    def _is_ours(self, record: LeaseRecord) -> bool:
        """True if ``record`` is a term this elector wrote, not merely its identity string: its
        current term, or the one its last write attempted (a write the store applied although
        the call failed). Leadership still counts only from a write that succeeded."""
        return record.holder == self.identity and (
            _same_term(record, self._term) or _same_term(record, self._attempted))

    def _attempt(self) -> str:
        """One attempt, timed for the health check."""
        self._busy_since = self._monotonic()
        try:
            return self._try_acquire_or_renew()
        finally:
            self._busy_since = None

    def _try_acquire_or_renew(self) -> str:
        """One attempt; on success ``_write_started`` is when the winning write was sent.

        Leading is safe until ``_write_started + renew_deadline``: no follower can have seen
        the written record before it was sent, and each waits ``lease_duration`` from then.
        Every store call may take up to ``renew_deadline``.
        """
        # Microseconds, the precision every backend stores: _is_ours compares acquire times.
        now = round(self._wall(), 6)
        left = self._call_timeout
        try:
            if self._leading:
                # Fast path, as in client-go: a leader assumes the record is still the one it
                # wrote and renews with one write. A conflict means something changed: read it.
                cached, term = self._snapshot, self._term
                if cached is not None and term is not None and self._is_ours(cached[0]) \
                        and self._absent_since is None:
                    record = term._replace(lease_duration=self.lease_duration, renew_time=now)
                    self._write_started = self._monotonic()
                    self._attempted = record
                    new_version = self.store.update(record, cached[1], timeout=left())
                    if new_version is not None:
                        self._last_error = ""
                        self._observe(record, new_version, written=True)
                        return _LEADING
            term = self._term
            snapshot = self.store.get(timeout=left())
            # After the read, which may have been slow: the garbage repair below is safe only
            # while our own lease still runs at this moment.
            leading = self.is_leader
            if snapshot is None:
                return self._create_missing(now, leading, left)
            current, version = snapshot
            self._observe(current, version)
            if self._is_ours(current):
                record = current._replace(lease_duration=self.lease_duration, renew_time=now)
            elif leading and term is not None and not current.readable:
                # Garbage written over our lease while we lead: nobody else can have taken it
                # (they would have to wait out our lease and write a readable record), so
                # writing our record back over it is safe and keeps the fleet led.
                record = term._replace(lease_duration=self.lease_duration, renew_time=now)
            elif current.released or self._monotonic() >= self._expires_at():
                # The record's counter may have been lost or lowered by hand: the store's
                # floor keeps the new token above every token used before.
                floor = self.store.transitions_floor(timeout=left())
                highest = max(current.transitions, self._highest_transitions,
                              -1 if floor is None else floor)
                record = LeaseRecord(self.identity, self.lease_duration, now, now, highest + 1)
            else:
                return _HELD
            self._write_started = self._monotonic()
            self._attempted = record
            new_version = self.store.update(record, version, timeout=left())
        except Exception as exc:  # noqa: BLE001 - any store failure is a failed attempt
            message = f"{type(exc).__name__}: {exc}"
            level = logging.WARNING if message != self._last_error else logging.DEBUG
            self._log(level, "%s: lease %s unavailable: %s", self.identity, self.store.name,
                      message)
            self._last_error = message
            return _ERROR
        self._last_error = ""
        if new_version is None:
            return _CONFLICT
        self._observe(record, new_version, written=True)
        return _LEADING

    def _create_missing(self, now: float, leading: bool, left: Callable[[], float]) -> str:
        """The store holds no record: create one, unless a holder may still believe it leads.

        A store that remembers a lease (its fencing floor survived) or a record we saw means
        that somebody may have led until a moment ago, and may believe it leads until its renew
        deadline: wait one lease duration from the moment we saw it gone. Only a store that
        never held a lease is taken at once (a fleet's very first start). A leader whose lease
        is deleted steps down and waits like everyone else: putting its record back could not
        be told apart by a follower that missed it from nobody leading.
        """
        floor = self.store.transitions_floor(timeout=left())
        if self._absent_since is None or floor != self._absent_floor:
            # First sight of the absence, or the floor moved since: a lease was created (and
            # perhaps deleted again) meanwhile, so its holder may lead now: wait again.
            if self._absent_since is None and (self._snapshot is not None or leading):
                self._log(logging.WARNING, "%s: lease %s vanished (deleted by hand?)%s; a new "
                          "leader is elected one lease duration from now", self.identity,
                          self.store.name, ": stepping down" if leading else "")
            self._absent_since = self._monotonic()
            self._absent_floor = floor
        if leading:
            return _DELETED
        # A floor the store cannot read (None) counts as a lease that may have had a holder.
        existed = floor is None or floor >= 0 or self._snapshot is not None
        if existed and self._monotonic() < self._expires_at():
            return _HELD
        # The store refuses this create if its floor reached the new token meanwhile.
        record = LeaseRecord(self.identity, self.lease_duration, now, now,
                             max(self._highest_transitions, -1 if floor is None else floor) + 1)
        self._write_started = self._monotonic()
        self._attempted = record
        version = self.store.create(record, timeout=left())
        if version is None:
            return _CONFLICT
        self._observe(record, version, written=True)
        return _LEADING

    def _call_timeout(self) -> float:
        """Every store call is bounded by the renew deadline (DESIGN: backend I/O is bounded)."""
        return self.renew_deadline

    def _observe(self, record: LeaseRecord, version: Version, *, written: bool = False) -> None:
        """Remember what the store holds; restart the expiry clock if it changed.

        ``written``: this elector just wrote ``record``, which makes it our term.
        """
        if written:
            self._term = record
        previous = self._snapshot
        was_absent = self._absent_since is not None
        self._absent_since = None
        if previous is not None and previous[1] == version and not was_absent:
            return
        self._snapshot = (record, version)
        self._observed_at = self._monotonic()
        self._highest_transitions = max(self._highest_transitions, record.transitions)
        same_term = previous is not None and _same_term(previous[0], record)
        self._term_duration = (max(self._term_duration, record.lease_duration) if same_term
                               else record.lease_duration)
        if not written and record.holder == self.identity and not self._is_ours(record):
            self._report_same_identity(changed=same_term and not was_absent)
        new_holder = record.holder if record.readable and not record.mark else ""
        if new_holder and (previous is None or not same_term):
            self.counts.leader_changes += 1
            self._log(logging.INFO, "%s: new leader of %s is %s", self.identity, self.store.name,
                      new_holder)
            self._notify("on_new_leader", self.on_new_leader, new_holder)

    def _report_same_identity(self, changed: bool) -> None:
        """A record names our identity but this elector did not write it."""
        if changed:
            # It is being renewed under our name by someone else: a duplicate identity.
            if not self._duplicate_reported:
                self._duplicate_reported = True
                self._log(logging.ERROR, "%s: another process is holding lease %s under the "
                          "same identity %r; this replica waits and never leads with it. "
                          "Identities must be unique per process: leave identity unset (the "
                          "default is unique) or give each process its own", self.identity,
                          self.store.name, self.identity)
        else:
            self._log(logging.WARNING, "%s: lease %s names this replica's identity but was not "
                      "written by this elector (an earlier run of this process, or another "
                      "process with the same identity): waiting for it to expire", self.identity,
                      self.store.name)

    def _become_leader(self, started: float) -> bool:
        with self._changed:
            if self._stopping.is_set():
                return False
            self._terms_led += 1
            self._open_term()  # the term first, the deadline second: Term.active relies on it
            self._leading_until = started + self.renew_deadline
            self._renewed_at = started
            # A new leader gets a whole liveness_timeout: followers need not heartbeat.
            self._heartbeat_at = max(self._heartbeat_at, started)
            self._leading = True
            self._abdicate.clear()  # a late failure of an earlier term must not end this one
            self._changed.notify_all()
        self._log(logging.INFO, "%s: became leader of %s (fencing token %s)", self.identity,
                  self.store.name, self._term.transitions if self._term else "?")
        if self.on_started_leading is not None:
            self._callbacks.put(("on_started_leading", self.on_started_leading, (),
                                 self._terms_led))
        for listener in self._listeners:
            self._notify("leadership listener", listener, True)
        return True

    def _open_term(self) -> Term | None:
        """Start a new term object (under ``_changed``); return the previous one, which the
        caller ends unless it ended already."""
        previous = self._current_term
        self._earlier_terms = [term for term in (*self._earlier_terms, previous)
                               if term is not None and term._threads_of_bodies()]
        self._term_serial += 1
        record = self._term
        self._current_term = Term(self, self._term_serial,
                                  record.transitions if record else -1,
                                  record.acquire_time if record else self._wall())
        return previous

    def _step_down(self, reason: str, kind: str, level: int = logging.WARNING) -> None:
        """Stop leading; ``kind`` names the reason in the step-down metric."""
        with self._changed:
            was_leading = self._leading
            self._leading_until = -math.inf
            self._leading = False
            if was_leading:
                self.counts.step_downs[kind] = self.counts.step_downs.get(kind, 0) + 1
            self._changed.notify_all()
        term = self._current_term
        if term is not None:
            term._end()  # cancels asynchronous bodies, wakes the ones waiting on term.lost
        if was_leading:
            self._log(level, "%s: stopped leading %s: %s", self.identity, self.store.name, reason)
            self._notify("on_stopped_leading", self.on_stopped_leading)
            for listener in self._listeners:
                self._notify("leadership listener", listener, False)

    def _release(self) -> None:
        """Give the lease up if the store still holds our term, so a follower takes over at once."""
        self._busy_since = self._monotonic()
        try:
            self._release_if_ours()
        finally:
            self._busy_since = None

    def _release_if_ours(self) -> None:
        if self._leading:
            self._step_down("elector stopped", "stopped", logging.INFO)
        snapshot = self._snapshot
        if snapshot is None or self._absent_since is not None or not self._is_ours(snapshot[0]):
            return
        if not self._wait_for_bodies():
            return
        snapshot = self._snapshot
        if snapshot is None or self._absent_since is not None or not self._is_ours(snapshot[0]):
            return
        now = round(self._wall(), 6)
        released = snapshot[0]._replace(holder="", lease_duration=1.0, renew_time=now,
                                        acquire_time=now)
        left = self._call_timeout
        try:
            version = self.store.update(released, snapshot[1], timeout=left())
            if version is None:  # our cached version is stale (an ambiguous write): re-read
                fresh = self.store.get(timeout=left())
                if fresh is None or not self._is_ours(fresh[0]):
                    return
                version = self.store.update(released, fresh[1], timeout=left())
        except Exception as exc:  # noqa: BLE001 - release is best effort; the lease expires
            self._log(logging.WARNING, "%s: could not release %s (it will expire instead): %s",
                      self.identity, self.store.name, exc)
            return
        if version is not None:
            self._observe(released, version)
            self._log(logging.INFO, "%s: released %s", self.identity, self.store.name)

    def _wait_for_bodies(self) -> bool:
        """Before a release: let the guarded bodies of this elector's terms finish, so the
        next leader never starts while one still runs. Bounded by the moment the lease would
        expire anyway. Bodies on the thread that called stop() cannot finish while it waits
        (a body that called stop(), or an event loop blocked in stop()): then no release
        (False), the lease expires instead."""
        exempt = self._stopped_from if self._stopping.is_set() else None
        deadline = self._renewed_at + self.lease_duration
        waited = False
        while True:
            terms = [term for term in (*self._earlier_terms, self._current_term)
                     if term is not None]
            running = [ident for term in terms for ident in term._threads_of_bodies()]
            if exempt is not None and exempt in running:
                self._log(logging.INFO, "%s: not releasing %s: job bodies still run on the "
                          "thread that stopped this elector; the lease expires instead",
                          self.identity, self.store.name)
                return False
            if not running:
                return True
            if self._monotonic() >= deadline:
                self._log(logging.WARNING, "%s: job bodies still run when lease %s expires; "
                          "releasing it", self.identity, self.store.name)
                return True
            if not waited:
                waited = True
                self._log(logging.INFO, "%s: waiting for %d running job bod%s to end before "
                          "releasing %s", self.identity, len(running),
                          "y" if len(running) == 1 else "ies", self.store.name)
            time.sleep(min(0.01, max(deadline - self._monotonic(), 0.0)))

    # -- callbacks ----------------------------------------------------------------------------

    def _notify(self, name: str, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is not None:
            self._callbacks.put((name, callback, args, self._terms_led))

    def _run_callbacks(self, callbacks: queue.SimpleQueue[_Callback | None]) -> None:
        while True:
            item = callbacks.get()
            if item is None:
                return
            name, callback, args, term = item
            try:
                callback(*args)
            except Exception:
                self._log(logging.ERROR, "%s: %s raised", self.identity, name, exc_info=True)
                if name == "on_started_leading" and self._leading and term == self._terms_led:
                    # The replica failed to take up its duties: let another one lead.
                    self._start_failures += 1
                    self._abdicate.set()
                    self._wake.set()
            else:
                if name == "on_started_leading":
                    self._start_failures = 0


def _same_term(a: LeaseRecord, b: LeaseRecord | None) -> bool:
    """Whether two records are one holder's term (a renewal), not a change of hands."""
    return (b is not None and a.readable and b.readable and a.holder == b.holder and a.holder != ""
            and a.transitions == b.transitions and abs(a.acquire_time - b.acquire_time) < 1e-5)


@runtime_checkable
class LeaderElector(Protocol):
    """The seed's interface, kept: what code that only needs to lead depends on."""

    @property
    def identity(self) -> str: ...

    @property
    def is_leader(self) -> bool: ...

    def acquire_lease(self, timeout: float | None = None) -> bool: ...

    def monitor_lease(self, on_shutdown: Callable[[], Any] | None = None) -> None: ...


def exit_on_sigterm() -> None:
    """Make SIGTERM end the process the way Ctrl+C does, so running electors release.

    Python's default SIGTERM action kills the process at once: no ``finally`` blocks, no
    ``atexit``, so a leader's lease is not released and followers wait a whole
    ``lease_duration``. Kubernetes and systemd stop processes with SIGTERM. Call this once from
    the main thread at start-up; it raises ``SystemExit(143)`` on SIGTERM, which unwinds the main
    thread and runs ``stop(release=True)`` on every elector still running. A handler that is
    already installed is left alone.
    """
    import signal

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_disarm_inherited_electors)
