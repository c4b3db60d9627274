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
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .backends import LeaseStore, Snapshot, Version
from .errors import ConfigurationError, LeadershipLost, NotLeaderError, SingletonJobsError
from .lease import LeaseRecord, check_identity, default_identity

logger = logging.getLogger(__name__)

#: client-go's ``JitterFactor``: the renew deadline must exceed this many retry periods.
JITTER_FACTOR = 1.2
#: A follower waits ``retry_period * (1 + uniform(0, ACQUIRE_JITTER))`` between attempts. Less
#: jitter than client-go's 1.2 keeps failover close to ``lease_duration``; it still spreads
#: contenders apart, and the compare-and-swap decides every race anyway.
ACQUIRE_JITTER = 0.2


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


# Outcomes of one attempt to acquire or renew.
_LEADING = "leading"      # acquired or renewed: this replica holds the lease
_HELD = "held"            # another replica holds an unexpired lease
_CONFLICT = "conflict"    # lost a compare-and-swap race; read again next time
_ERROR = "error"          # the store failed; retry until the deadline


class Elector:
    """Campaigns for a lease in a background thread and tells guards whether to run.

    ``store`` is any :class:`~singleton_jobs.backends.LeaseStore`. Callbacks run on a separate
    thread, in order, so a slow or raising callback never delays a renew:
    ``on_started_leading()``, ``on_stopped_leading()``, ``on_new_leader(identity)``. If
    ``on_started_leading`` raises, the exception is logged and this replica releases the lease
    (another replica can lead) and keeps campaigning.

    :raises ConfigurationError: invalid timing or identity.
    """

    # The clock seam: tests and simulations may replace these on an instance.
    _monotonic: Callable[[], float] = staticmethod(time.monotonic)
    _wall: Callable[[], float] = staticmethod(time.time)

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
    ) -> None:
        check_timing(lease_duration, renew_deadline, retry_period)
        store.check_lease_duration(lease_duration)
        self.store = store
        self.identity: str = default_identity() if identity is None else check_identity(identity)
        self.lease_duration = float(lease_duration)
        self.renew_deadline = float(renew_deadline)
        self.retry_period = float(retry_period)
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader

        # is_leader reads only this float: monotonic time until which leading is safe.
        self._leading_until = -math.inf
        self._term: LeaseRecord | None = None       # the record we wrote, while leading
        # What this replica last saw in the store, and when (monotonic) it saw it change.
        self._snapshot: Snapshot | None = None
        self._observed_at = -math.inf
        self._highest_transitions = -1

        self._changed = threading.Condition()       # notified on every leadership change
        self._leading = False                       # the loop's view; guarded by _changed
        self._running = False
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._abdicate = threading.Event()
        self._release_on_stop = True
        self._thread: threading.Thread | None = None
        self._callbacks: queue.SimpleQueue[tuple[str, Callable[..., Any], tuple[Any, ...]] | None]
        self._callbacks = queue.SimpleQueue()
        self._callback_thread: threading.Thread | None = None
        self._last_error = ""
        self._listeners: list[Callable[[bool], Any]] = []

    def __repr__(self) -> str:
        state = "leader" if self.is_leader else "follower"
        return f"<{type(self).__name__} {self.identity!r} on {self.store.name} ({state})>"

    # -- what guards read: memory only ------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True only while this replica holds the lease and its last renew is recent enough."""
        return self._monotonic() < self._leading_until

    @property
    def fencing_token(self) -> int | None:
        """The lease's transition counter while leading (strictly increasing across leaders)."""
        term = self._term
        return term.transitions if term is not None and self.is_leader else None

    @property
    def leader(self) -> str | None:
        """Identity of the leader as last seen, or None if nobody is known to lead."""
        if self.is_leader:
            return self.identity
        snapshot = self._snapshot
        if snapshot is None:
            return None
        holder = snapshot[0].holder
        if not snapshot[0].readable or holder in ("", self.identity):
            return None
        return holder

    @property
    def running(self) -> bool:
        return self._running

    def add_leadership_listener(self, listener: Callable[[bool], Any]) -> None:
        """Call ``listener(True)`` whenever this replica starts leading, ``listener(False)``
        whenever it stops. Listeners run on the callback thread, after the callbacks given to
        the constructor; integrations (the APScheduler job store) use this."""
        self._listeners = [*self._listeners, listener]

    def remove_leadership_listener(self, listener: Callable[[bool], Any]) -> None:
        self._listeners = [existing for existing in self._listeners if existing != listener]

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Elector:
        """Start campaigning in a background thread. Returns self; a second call does nothing."""
        with self._changed:
            if self._running:
                return self
            previous = self._thread
            if previous is not None and previous.is_alive():
                raise SingletonJobsError(f"{self.identity}: the previous election thread is "
                                         "still finishing a store call; try start() again later")
            self._running = True
        self._stopping.clear()
        self._wake.clear()
        self._abdicate.clear()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"singleton_jobs-elector-{self.identity}")
        self._callback_thread = threading.Thread(target=self._run_callbacks, daemon=True,
                                                 name=f"singleton_jobs-callbacks-{self.identity}")
        self._callback_thread.start()
        self._thread.start()
        atexit.register(self.stop)
        logger.info("%s: campaigning for lease %s", self.identity, self.store.name)
        return self

    def stop(self, release: bool = True) -> None:
        """Stop campaigning. Guards see ``is_leader`` False before this returns.

        With ``release`` (the default) a held lease is released, so a follower takes over
        within one retry period instead of one lease duration.
        """
        atexit.unregister(self.stop)
        with self._changed:
            if not self._running:
                return
            self._leading_until = -math.inf
        self._release_on_stop = release
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # The loop's store calls are bounded by renew_deadline; allow one more period.
            thread.join(self.renew_deadline + self.retry_period)
            if thread.is_alive():
                logger.warning("%s: election thread still busy after stop(); it will exit when "
                               "its store call returns", self.identity)
        self._callbacks.put(None)
        callback_thread = self._callback_thread
        if callback_thread is not None and callback_thread is not threading.current_thread():
            callback_thread.join(self.lease_duration)
        with self._changed:
            self._running = False
            self._changed.notify_all()

    def __enter__(self) -> Elector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        """Block until this replica leads, the elector stops, or ``timeout`` passes.

        :raises SingletonJobsError: the elector was never started.
        """
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
        try:
            while not self._stopping.is_set():
                if self._campaign():
                    self._lead()
        except BaseException:  # pragma: no cover - a bug; never leave a silent dead leader
            logger.exception("%s: election thread crashed; no longer leading", self.identity)
            self._step_down("election thread crashed")
        finally:
            if self._release_on_stop:
                self._release()

    def _campaign(self) -> bool:
        """Try to acquire until it works (True) or the elector stops (False)."""
        while not self._stopping.is_set():
            started = self._monotonic()
            outcome = self._try_acquire_or_renew(timeout=self.renew_deadline)
            if outcome is _LEADING:
                self._become_leader(started)
                return True
            wait = self.retry_period * (1 + random.uniform(0, ACQUIRE_JITTER))
            if outcome is _HELD:
                # Wake right when the holder's lease would expire rather than up to one
                # jittered period later: failover stays close to lease_duration.
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
                return  # _run releases; guards already see is_leader False
            if self._abdicate.is_set():
                self._abdicate.clear()
                self._step_down("on_started_leading raised")
                self._release()
                return
            last_attempt = self._monotonic()
            remaining = self._leading_until - last_attempt
            if remaining <= 0:
                self._step_down(self._missed_deadline())
                return
            outcome = self._try_acquire_or_renew(timeout=remaining)
            if outcome is _LEADING:
                with self._changed:  # stop() may have ended leadership while we renewed
                    if not self._stopping.is_set():
                        self._leading_until = max(self._leading_until,
                                                  last_attempt + self.renew_deadline)
            elif outcome is _HELD:
                holder = self._snapshot[0].holder if self._snapshot else "?"
                self._step_down(f"lease taken by {holder}")
                return
            elif self._monotonic() >= self._leading_until:
                self._step_down(self._missed_deadline())
                return

    def _missed_deadline(self) -> str:
        return f"no renew succeeded within renew_deadline ({self.renew_deadline}s)"

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._wake.wait(seconds):
            self._wake.clear()

    def _expires_at(self) -> float:
        snapshot = self._snapshot
        if snapshot is None:
            return -math.inf
        duration = snapshot[0].lease_duration
        return self._observed_at + (duration if duration > 0 else self.lease_duration)

    def _try_acquire_or_renew(self, timeout: float) -> str:
        now = self._wall()
        left = self._time_left(timeout)
        try:
            if self._leading:
                # Fast path, as in client-go: a leader assumes the record is still the one it
                # wrote and renews with one write. A conflict means something changed: read it.
                cached = self._snapshot
                if cached is not None and cached[0].holder == self.identity:
                    record = cached[0]._replace(lease_duration=self.lease_duration,
                                                renew_time=now)
                    new_version = self.store.update(record, cached[1], timeout=left())
                    if new_version is not None:
                        self._last_error = ""
                        self._observe(record, new_version)
                        return _LEADING
            leading = self.is_leader
            term = self._term
            snapshot = self.store.get(timeout=left())
            if snapshot is None:
                last_holder = self._snapshot[0].holder if self._snapshot is not None else ""
                if not leading and last_holder not in ("", self.identity) and \
                        self._monotonic() < self._expires_at():
                    # The record vanished (deleted by hand?) while its holder's lease still
                    # runs: creating one now could make two leaders. Wait for the expiry.
                    return _HELD
                floor = self.store.transitions_floor(timeout=left())
                record = LeaseRecord(self.identity, self.lease_duration, now, now,
                                     max(self._highest_transitions, floor) + 1)
                version = self.store.create(record, timeout=left())
                if version is None:
                    return _CONFLICT
                self._observe(record, version)
                return _LEADING
            current, version = snapshot
            self._observe(current, version)
            if current.holder == self.identity:
                record = current._replace(lease_duration=self.lease_duration,
                                          renew_time=now)
            elif leading and term is not None and not current.readable:
                # Garbage written over our lease while we lead: nobody else can have taken it
                # (they would have to wait out our lease and write a readable record), so
                # writing our record back over it is safe and keeps the fleet led.
                record = term._replace(lease_duration=self.lease_duration, renew_time=now)
            elif current.released or self._monotonic() >= self._expires_at():
                highest = max(current.transitions, self._highest_transitions)
                if not current.readable:  # its counter is lost: ask the store for a floor
                    highest = max(highest, self.store.transitions_floor(timeout=left()))
                record = LeaseRecord(self.identity, self.lease_duration, now, now, highest + 1)
            else:
                return _HELD
            new_version = self.store.update(record, version, timeout=left())
        except Exception as exc:  # noqa: BLE001 - any store failure is a failed attempt
            message = f"{type(exc).__name__}: {exc}"
            level = logging.WARNING if message != self._last_error else logging.DEBUG
            logger.log(level, "%s: lease %s unavailable: %s", self.identity, self.store.name,
                       message)
            self._last_error = message
            return _ERROR
        self._last_error = ""
        if new_version is None:
            return _CONFLICT
        self._observe(record, new_version)
        return _LEADING

    def _time_left(self, timeout: float) -> Callable[[], float]:
        """Split one ``timeout`` across the several store calls of one attempt."""
        deadline = self._monotonic() + timeout
        return lambda: max(deadline - self._monotonic(), 0.001)

    def _observe(self, record: LeaseRecord, version: Version) -> None:
        """Remember what the store holds; restart the expiry clock if it changed."""
        previous = self._snapshot
        if previous is not None and previous[1] == version:
            return
        self._snapshot = (record, version)
        self._observed_at = self._monotonic()
        self._highest_transitions = max(self._highest_transitions, record.transitions)
        if record.holder == self.identity:
            self._term = record
        new_holder = record.holder if record.readable else ""
        if new_holder and (previous is None or previous[0].holder != new_holder):
            logger.info("%s: new leader of %s is %s", self.identity, self.store.name, new_holder)
            self._notify("on_new_leader", self.on_new_leader, new_holder)

    def _become_leader(self, started: float) -> None:
        with self._changed:
            if self._stopping.is_set():
                return  # _run releases what we just acquired
            self._leading_until = started + self.renew_deadline
            self._leading = True
            self._changed.notify_all()
        logger.info("%s: became leader of %s (fencing token %s)", self.identity,
                    self.store.name, self._term.transitions if self._term else "?")
        self._notify("on_started_leading", self.on_started_leading)
        for listener in self._listeners:
            self._notify("leadership listener", listener, True)

    def _step_down(self, reason: str, level: int = logging.WARNING) -> None:
        with self._changed:
            was_leading = self._leading
            self._leading_until = -math.inf
            self._leading = False
            self._changed.notify_all()
        if was_leading:
            logger.log(level, "%s: stopped leading %s: %s", self.identity, self.store.name, reason)
            self._notify("on_stopped_leading", self.on_stopped_leading)
            for listener in self._listeners:
                self._notify("leadership listener", listener, False)

    def _release(self) -> None:
        """Give the lease up if the store still names us, so a follower takes over at once."""
        if self._leading:
            self._step_down("elector stopped", logging.INFO)
        snapshot = self._snapshot
        if snapshot is None or snapshot[0].holder != self.identity:
            return
        now = self._wall()
        released = snapshot[0]._replace(holder="", lease_duration=1.0, renew_time=now,
                                        acquire_time=now)
        left = self._time_left(self.renew_deadline)
        try:
            version = self.store.update(released, snapshot[1], timeout=left())
            if version is None:  # our cached version is stale (an ambiguous write): re-read
                fresh = self.store.get(timeout=left())
                if fresh is None or fresh[0].holder != self.identity:
                    return
                version = self.store.update(released, fresh[1], timeout=left())
        except Exception as exc:  # noqa: BLE001 - release is best effort; the lease expires
            logger.warning("%s: could not release %s (it will expire instead): %s",
                           self.identity, self.store.name, exc)
            return
        if version is not None:
            self._snapshot = (released, version)
            self._observed_at = self._monotonic()
            logger.info("%s: released %s", self.identity, self.store.name)

    # -- callbacks ----------------------------------------------------------------------------

    def _notify(self, name: str, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is not None:
            self._callbacks.put((name, callback, args))

    def _run_callbacks(self) -> None:
        while True:
            item = self._callbacks.get()
            if item is None:
                return
            name, callback, args = item
            try:
                callback(*args)
            except Exception:
                logger.exception("%s: %s raised", self.identity, name)
                if name == "on_started_leading" and self._leading:
                    # The replica failed to take up its duties: let another one lead.
                    self._abdicate.set()
                    self._wake.set()


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
