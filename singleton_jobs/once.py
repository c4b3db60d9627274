"""``run_once``: one-off jobs, such as a schema migration at deploy time, run once per fleet.

Each key has a lease of its own beside the elector's (same storage, same timings: see
:meth:`LeaseStore.sibling <singleton_jobs.LeaseStore.sibling>`). Every caller campaigns for
the key's lease, whoever leads the elector's own lease, so a rolling deploy whose leader is
still the old version never hangs the new replicas. The caller that wins runs the function in
that lease's term; the others wait. When the function returns, the runner replaces its own
term's record with a *completed* mark by a compare-and-swap: it succeeds only if nobody took
the key over meanwhile. The mark never expires and no replica can take it, so the key never
runs again, across restarts. A runner that dies leaves a lease that expires like any other,
and the next caller runs the function again.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .election import Elector
from .errors import ConfigurationError, LeadershipLost, LeaseStoreError, SingletonJobsError
from .lease import COMPLETED_MARK, FAILED_MARK, LeaseRecord, default_identity
from .store import LeaseStore
from .terms import run_in_term

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RunOnceError(SingletonJobsError):
    """``run_once`` could not see its key completed: see the subclasses."""


class RunOnceFailed(RunOnceError):
    """The function raised in the replica that ran it while this one waited."""


class RunOnceTimeout(RunOnceError, TimeoutError):
    """The key was not completed within the ``timeout`` given to ``run_once``."""


class _KeyElector(Elector):
    """The elector of one key's lease: never takes over a mark, except a failed mark that its
    very first attempt found and that was written before the call began (a later call
    retries a failed run; callers that were already waiting for that run do not)."""

    def __init__(self, store: LeaseStore, **options: Any) -> None:
        super().__init__(store, **options)
        self.observed = threading.Event()      # set at every read of the store
        self.retry_failed: int | None = None   # transitions of the failed mark found at first
        self.reads = 0                         # reads (or writes) that told what is stored
        self._first_read = True
        self._called_at = time.time()          # failed marks written later are not retried

    def _attempt(self) -> str:
        try:
            return super()._attempt()
        finally:
            self._first_read = False  # whatever came of it: later failed marks are not ours

    def _observe(self, record: LeaseRecord, version: Any, *, written: bool = False) -> None:
        # Retried: a failure found by the very first attempt and written before this call
        # began (by the writer's clock), i.e. the failure of an earlier call. A failure of
        # the run that concurrent callers were waiting for is theirs to report, not to retry.
        if (self._first_read and record.holder == FAILED_MARK
                and record.renew_time < self._called_at):
            self.retry_failed = record.transitions
        super()._observe(record, version, written=written)
        self.reads += 1
        self.observed.set()

    def _expires_at(self) -> float:
        record = self.mark()
        if record is not None:
            if record.holder == FAILED_MARK and record.transitions == self.retry_failed:
                return -math.inf  # a failed run found at the start: take it now and retry
            return math.inf       # completed, or failed while this call waited: never taken
        return super()._expires_at()

    def mark(self) -> LeaseRecord | None:
        """The mark the store held at the last read, or None."""
        snapshot = self._snapshot
        if snapshot is None or self._absent_since is not None or not snapshot[0].mark:
            return None
        return snapshot[0]


def run_once(elector: Elector, key: str, func: Callable[..., T], *args: Any,
             timeout: float | None = None, **kwargs: Any) -> bool:
    """Run ``func(*args, **kwargs)`` on exactly one replica for ``key``, once for good.

    Every replica calls it with the same ``key`` (for example ``"migrate:0042"``); one of them
    runs ``func`` and the others block until it has completed; then all return. A replica that
    calls it later returns at once. Returns True in the replica whose run completed the key,
    False in the others.

    * The runner is whichever caller wins the key's own lease (beside ``elector``'s lease, in
      the same storage, with its identity and timings), not the leader of ``elector``'s lease:
      a leader that never calls ``run_once`` for the key (the old version, during a rolling
      deploy) does not hold it up. ``elector`` need not be running.
    * If the runner dies or loses the key's lease before ``func`` returns, another caller runs
      it again (after one lease duration): ``func`` must be idempotent or transactional. Inside
      it :func:`~singleton_jobs.current_term` gives the key lease's term: ``check()`` stops
      a runner that lost it; its ``fencing_token`` orders the runs.
    * The completed mark is written by a compare-and-swap on the runner's own record: a runner
      that lost the key to another replica (and finished anyway) does not mark it; it waits for
      the other run like everybody else.
    * If ``func`` raises, the runner marks the key failed and re-raises; every replica waiting
      for that run raises :class:`RunOnceFailed` (no retry storm); the next call of
      ``run_once`` for the key (a restart, the next deploy) runs it again.

    ``timeout`` (seconds) bounds the wait for another replica's run (:class:`RunOnceTimeout`);
    the runner's own ``func`` is never interrupted by it. A ``func`` keyword argument named
    ``timeout`` must be bound with :func:`functools.partial`.

    :raises RunOnceFailed: the run this replica waited for raised in the replica that ran it.
    :raises RunOnceTimeout: ``timeout`` passed before the key was completed.
    :raises ConfigurationError: ``key`` is empty, ``elector`` is not an Elector, or its store
        cannot keep other leases.
    """
    if not isinstance(elector, Elector):
        raise ConfigurationError(f"run_once() needs an Elector, not {elector!r}")
    if not isinstance(key, str) or not key.strip():
        raise ConfigurationError(f"run_once() needs a non-empty key string naming the job, "
                                 f"e.g. 'migrate:0042', not {key!r}")
    if timeout is not None and not timeout >= 0:
        raise ConfigurationError(f"timeout ({timeout!r}) must be a number of seconds >= 0")
    if elector._inherited():
        raise elector._inherited_error()
    store = elector.store.sibling(key)
    # An elector created before a fork and not started since still has its parent's default
    # identity: this process needs its own.
    identity = (elector.identity if elector._identity_given or elector._identity_pid == os.getpid()
                else default_identity())
    keeper = _KeyElector(store, identity=identity,
                         lease_duration=elector.lease_duration,
                         renew_deadline=elector.renew_deadline,
                         retry_period=elector.retry_period)
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    keeper.start()
    try:
        return _run(keeper, key, func, args, kwargs, deadline, timeout)
    finally:
        keeper.stop()


def _run(keeper: _KeyElector, key: str, func: Callable[..., Any], args: tuple[Any, ...],
         kwargs: dict[str, Any], deadline: float, timeout: float | None) -> bool:
    identity = keeper.identity
    waiting_logged = False
    while True:
        mark = keeper.mark()
        if mark is not None and mark.holder == COMPLETED_MARK:
            logger.info("%s: %s %s (lease %s)", identity, key, "completed by another replica"
                        if waiting_logged else "already completed", keeper.store.name)
            return False
        if mark is not None and mark.transitions != keeper.retry_failed:
            raise RunOnceFailed(
                f"{key} failed in the replica that ran it (see that replica's log); the next "
                f"call of run_once() for {key!r} runs it again")
        term = keeper.current_term
        if term is not None:
            if _run_as_runner(keeper, key, func, args, kwargs, term, deadline):
                return True
            continue  # lost the key to another replica meanwhile: wait for its run
        if keeper.leader is not None and not waiting_logged:
            waiting_logged = True
            logger.info("%s: waiting for %s, which %s is running", identity, key,
                        keeper.leader)
        remaining = deadline - time.monotonic()
        # Not before the store was read once (within its call timeouts): what it holds decides.
        if remaining <= 0 and (keeper.reads or -remaining > 2 * keeper.renew_deadline):
            runner = keeper.leader
            raise RunOnceTimeout(
                f"{key} was not completed within the timeout ({timeout:g}s); "
                + (f"{runner} is running it" if runner else "nobody is running it (the "
                   f"lease {keeper.store.name} could not be read or taken)"))
        keeper.observed.wait(max(min(remaining, keeper.retry_period), 0.01))
        keeper.observed.clear()


def _run_as_runner(keeper: _KeyElector, key: str, func: Callable[..., Any],
                   args: tuple[Any, ...], kwargs: dict[str, Any], term: Any,
                   deadline: float) -> bool:
    """Run ``func`` in ``term`` and mark the key; False if the key was lost to another
    replica before the mark could be written."""
    identity = keeper.identity
    record = keeper._term  # the record of the term func runs in: only it may be marked
    logger.info("%s: running %s (fencing token %s)", identity, key, term.fencing_token)
    started = time.monotonic()
    try:
        run_in_term(term, func, args, kwargs)
    except LeadershipLost as exc:
        if term.active:  # not this key's term (another elector's, inside func): a failure
            if _mark(keeper, record, FAILED_MARK):
                logger.error("%s: %s raised %s: marked failed", identity, key,
                             type(exc).__name__)
            raise
        # From current_term().check(): the run stopped half-way, the key's lease was lost.
        logger.warning("%s: %s stopped: %s; it runs again wherever the key's lease goes next",
                       identity, key, exc)
        keeper.stop(release=True)
        _restart(keeper, deadline)
        return False
    except Exception as exc:
        if _mark(keeper, record, FAILED_MARK):
            logger.error("%s: %s raised %s: marked failed; the replicas waiting for it raise "
                         "RunOnceFailed, the next call of run_once() runs it again", identity,
                         key, type(exc).__name__)
        raise
    if _mark(keeper, record, COMPLETED_MARK):
        logger.info("%s: %s completed in %.3gs", identity, key, time.monotonic() - started)
        return True
    logger.warning("%s: %s finished here, but another replica took it over meanwhile (this "
                   "replica lost the lease %s): not marking it completed; waiting for that "
                   "run", identity, key, keeper.store.name)
    _restart(keeper, deadline)  # campaign and observe again, as a waiter
    return False


def _restart(keeper: _KeyElector, deadline: float) -> None:
    """Start the keeper again (its thread may still be finishing a store call)."""
    while True:
        try:
            keeper.start()
            return
        except SingletonJobsError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(keeper.retry_period)


def _mark(keeper: _KeyElector, record: LeaseRecord | None, holder: str) -> bool:
    """Replace ``record`` — the record of the term the run was made in — by the mark
    ``holder``; False if the store holds anything else (somebody took the key over, perhaps
    this replica again in a later term). Store failures are retried while the lease may still
    be this term's: after that another replica may have taken it, and the run is left to it."""
    keeper.stop(release=False)  # no renew may race the mark
    if record is None:
        return False
    mark = record._replace(holder=holder, renew_time=round(time.time(), 6))
    give_up = keeper._renewed_at + keeper.lease_duration
    timeout = keeper._call_timeout()
    snapshot = keeper._snapshot
    while True:
        try:
            if snapshot is not None and _same_record(snapshot[0], record) and \
                    keeper.store.update(mark, snapshot[1], timeout=timeout) is not None:
                return True
            snapshot = keeper.store.get(timeout=timeout)
        except LeaseStoreError as exc:
            if keeper._monotonic() >= give_up:
                logger.warning("%s: could not mark %s %s before its lease could expire (%s); "
                               "the next caller runs it again", keeper.identity,
                               keeper.store.name, holder.strip(), exc)
                return False
            logger.warning("%s: could not mark %s %s yet: %s", keeper.identity,
                           keeper.store.name, holder.strip(), exc)
            time.sleep(keeper.retry_period)
            snapshot = None
            continue
        if snapshot is None:
            return False
        if _same_record(snapshot[0], mark) and snapshot[0].holder == holder:
            return True  # an earlier write went through although its call failed
        if not _same_record(snapshot[0], record):
            return False


def _same_record(stored: LeaseRecord, record: LeaseRecord) -> bool:
    """Whether ``stored`` is ``record``'s term: same holder, token and acquire time."""
    return (stored.holder == record.holder and stored.transitions == record.transitions
            and abs(stored.acquire_time - record.acquire_time) < 1e-5)
