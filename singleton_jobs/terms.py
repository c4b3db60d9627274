"""Leadership terms: what a job body that may outlive its leadership can hold on to.

A *term* runs from the write that won the lease to the moment this replica stops leading. A
guarded body (``@leader_only``, a job run by ``LeaderOnlyJobStore``, ``run_once``) runs inside
the term that was current when it started, and finds it with :func:`current_term`: its fencing
token to pass downstream, ``check()`` to stop between batches, ``lost`` to wait on.

The end of a term is judged by the clock, exactly as :attr:`Elector.is_leader
<singleton_jobs.Elector.is_leader>` is: a term ends when no renew succeeded for
``renew_deadline``, whatever the election thread is doing, so it has ended before any other
replica can lead (no follower takes over before ``lease_duration``). A step-down the election
thread sees earlier (the lease taken, deleted, the elector stopped) ends it at once.
"""

from __future__ import annotations

import contextvars
import logging
import math
import sys
import threading
from collections.abc import Awaitable, Callable
from threading import get_ident
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import LeadershipLost, SingletonJobsError

if TYPE_CHECKING:
    import asyncio

    from .election import Elector

logger = logging.getLogger(__name__)

T = TypeVar("T")

_current: contextvars.ContextVar[Term | None] = contextvars.ContextVar(
    "singleton_jobs_term", default=None)
# Synchronous guarded bodies started outside any term context, as (thread, term) in the order
# they started: current_term() finds the innermost one of its thread, a release the ones of
# its term. Cheaper per call than a context variable (the leader's cost of @leader_only);
# appended and removed without a lock (single list operations are atomic).
_sync_bodies: list[tuple[int, Term]] = []
# The task whose body a watch cancels when the term ends (tasks the body creates copy the
# context, but are not that task: a guard in one of them watches it itself).
_watched: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "singleton_jobs_term_watched", default=None)


class TermLost:
    """An event-like view of a term's end: ``is_set()`` and ``wait(timeout)`` as on a
    :class:`threading.Event`, judged by the clock as well as by the election thread."""

    __slots__ = ("_term",)

    def __init__(self, term: Term) -> None:
        self._term = term

    def is_set(self) -> bool:
        """True once the term has ended."""
        return not self._term.active

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the term ends (True) or ``timeout`` seconds pass (False).

        ``while not term.lost.wait(5): ...`` is a loop that works every five seconds and stops
        as soon as leadership ends.
        """
        term = self._term
        clock = term.elector._monotonic
        deadline = math.inf if timeout is None else clock() + timeout
        while True:
            if not term.active:
                return True
            now = clock()
            if now >= deadline:
                return False
            # Wakes at a step-down, or at the term's current deadline (a renew moves it on).
            term._ended.wait(min(deadline, now + max(term.remaining(), 0.001)) - now)

    def __repr__(self) -> str:
        return f"<TermLost {'set' if self.is_set() else 'unset'}>"


class Term:
    """One leadership term of one elector (see the module documentation).

    ``fencing_token`` is the lease's transition counter for this term: higher than that of
    every earlier term of another replica (a replica that leads again with nobody in between
    keeps its token, in a new term). ``active`` is True while the term lasts;
    ``check()`` raises :class:`~singleton_jobs.LeadershipLost` once it has ended; ``lost``
    is an event-like object that is set when it ends. All of them read memory only.
    """

    __slots__ = ("_bodies", "_ended", "_hooks", "_lock", "acquire_time", "elector",
                 "fencing_token", "lost", "serial")

    def __init__(self, elector: Elector, serial: int, fencing_token: int,
                 acquire_time: float = 0.0) -> None:
        self.elector = elector
        self.serial = serial
        self.fencing_token = fencing_token
        #: When this replica acquired the lease (its own wall clock, Unix seconds).
        self.acquire_time = acquire_time
        self.lost = TermLost(self)
        self._ended = threading.Event()
        # Reentrant: stop() may run in a signal handler on a thread that holds it.
        self._lock = threading.RLock()
        self._hooks: list[Callable[[], Any]] = []
        # One entry per guarded body running in this term: the thread it runs on. Appended and
        # removed without a lock (single list operations are atomic).
        self._bodies: list[int] = []

    @property
    def active(self) -> bool:
        """True while this replica still leads in this term (memory only)."""
        elector = self.elector
        # The serial is read on both sides of is_leader: a later term of the same elector
        # sets its serial before it extends the deadline, so a read that straddles a new term
        # sees the serial change and does not count the new term's deadline for this one.
        return (elector._term_serial == self.serial and elector.is_leader
                and elector._term_serial == self.serial)

    def remaining(self) -> float:
        """Seconds this term is sure to last without another renew (0 once it has ended)."""
        if not self.active:
            return 0.0
        elector = self.elector
        return max(elector._leading_until - elector._monotonic(), 0.0)

    def check(self) -> None:
        """Return if this term still lasts; raise :class:`~singleton_jobs.LeadershipLost` if not.

        Call it between the batches of a long body: a body that stops here has stopped before
        another replica can lead.
        """
        if not self.active:
            elector = self.elector
            raise LeadershipLost(
                f"{elector.identity}: leadership of {elector.store.name} (fencing token "
                f"{self.fencing_token}) ended; stop here, the next leader does the work")

    def running_bodies(self) -> int:
        """How many guarded bodies of this term are running now.

        Before it releases the lease (at stop(), or when it steps down for a failed start or
        a missed heartbeat) the elector waits for them to end — asynchronous ones are
        cancelled, synchronous ones see :meth:`check` fail — so that the next leader never
        starts while one still runs; at most until the lease would have expired anyway.
        """
        return len(self._threads_of_bodies())

    def _threads_of_bodies(self) -> list[int]:
        return [*self._bodies, *(ident for ident, term in list(_sync_bodies) if term is self)]

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return (f"<Term {self.fencing_token} of {self.elector.identity!r} on "
                f"{self.elector.store.name} ({state})>")

    # -- for the elector and the guards ---------------------------------------------------------

    def _end(self) -> None:
        """The elector stepped down: wake every waiter and run the end hooks (which return at
        once). Called from the election thread or from stop()."""
        with self._lock:
            if self._ended.is_set():
                return
            self._ended.set()
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:  # pragma: no cover - hooks only schedule work on a loop
                logger.exception("a hook of %r raised", self)

    def _on_end(self, hook: Callable[[], Any]) -> Callable[[], None]:
        """Call ``hook()`` when the election thread ends this term (at once if it has);
        return a function that forgets it. The clock-driven end calls no hook: callers that
        need it arm a timer on :meth:`remaining`."""
        with self._lock:
            ended = self._ended.is_set()
            if not ended:
                self._hooks.append(hook)
        if ended:
            hook()

        def forget() -> None:
            with self._lock:
                if hook in self._hooks:
                    self._hooks.remove(hook)

        return forget


def current_term() -> Term:
    """The leadership term of the guarded body running in this context.

    Inside a ``@leader_only`` function, a job run by ``LeaderOnlyJobStore`` or a ``run_once``
    function, this is the term that was current when the body started: its
    ``fencing_token`` to pass to downstream systems, ``check()`` to call between batches,
    ``lost`` to wait on. Threads started by the body do not inherit it (contexts are per
    thread): pass the term to them.

    :raises SingletonJobsError: called outside a guarded body.
    """
    term = _current.get()
    if term is not None:
        return term
    ident = get_ident()
    for body_ident, body_term in reversed(list(_sync_bodies)):
        if body_ident == ident:
            return body_term
    raise SingletonJobsError(
            "current_term() is only available inside a guarded body: a @leader_only function, "
            "a job run by LeaderOnlyJobStore or a run_once() function (threads started by the "
            "body do not inherit it: pass them the term). Elsewhere use elector.current_term")


def run_in_term(term: Term, func: Callable[..., T], args: tuple[Any, ...] = (),
                kwargs: dict[str, Any] | None = None) -> T:
    """Run ``func`` with ``term`` as :func:`current_term`, counted as one of its running
    bodies (a release waits for them: see :meth:`Term.running_bodies`)."""
    if _current.get() is None:
        entry = (get_ident(), term)
        _sync_bodies.append(entry)
        try:
            return func(*args, **(kwargs or {}))
        finally:
            _sync_bodies.remove(entry)
    token = _current.set(term)
    ident = get_ident()
    bodies = term._bodies
    bodies.append(ident)
    try:
        return func(*args, **(kwargs or {}))
    finally:
        bodies.remove(ident)
        _current.reset(token)


async def run_async_in_term(term: Term, func: Callable[..., Awaitable[T]],
                            args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *,
                            cancel: bool = True) -> T:
    """Await ``func(*args, **kwargs)`` with ``term`` as :func:`current_term`; with ``cancel``,
    cancel it when the term ends (by the clock or by a step-down) and raise
    :class:`~singleton_jobs.LeadershipLost` then.

    The cancellation is delivered to the task running this coroutine, as ``asyncio.timeout``
    does; a cancellation that comes from elsewhere propagates unchanged. A body nested in
    another one of the same term, in the same task, is watched by the outer one only.
    """
    import asyncio  # deferred: import singleton_jobs stays fast

    kwargs = kwargs or {}
    task = asyncio.current_task()
    nested = task is not None and _current.get() is term and _watched.get() is task
    token = _current.set(term)
    watched = _watched.set(task if cancel or nested else None)
    ident = get_ident()
    bodies = term._bodies
    bodies.append(ident)
    try:
        if nested or not cancel:
            return await func(*args, **kwargs)
        return await _watch(term, func, args, kwargs)
    finally:
        bodies.remove(ident)
        _watched.reset(watched)
        _current.reset(token)


async def _watch(term: Term, func: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> T:
    import asyncio  # deferred: import singleton_jobs stays fast

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always a task under asyncio.run and schedulers
        return await func(*args, **kwargs)
    cancelled = finished = False
    timer: asyncio.TimerHandle | None = None

    def judge() -> None:
        """On the loop: cancel the body if the term has ended, else look again at its
        deadline (a renew moves it on). A call queued by the election thread may come after
        the body returned: then the task runs other code, which is not ours to cancel."""
        nonlocal cancelled, timer
        timer = None
        if cancelled or finished or task.done():
            return
        if not term.active:
            cancelled = True
            task.cancel()
            return
        timer = loop.call_later(max(term.remaining(), 0.001), judge)

    def ended_by_elector() -> None:  # election thread: hand over to the loop
        try:
            loop.call_soon_threadsafe(judge)
        except RuntimeError:  # the loop closed: nothing left to cancel
            pass

    if not term.active:
        raise LeadershipLost(f"{term.elector.identity}: leadership of {term.elector.store.name} "
                             f"(fencing token {term.fencing_token}) ended before the body started")
    entered = _cancelling(task)
    judge()
    forget = term._on_end(ended_by_elector)
    try:
        result = await func(*args, **kwargs)
    except asyncio.CancelledError:
        # Ours only if no other cancellation is pending (as asyncio.timeout judges it).
        if cancelled and _uncancel(task) <= entered:
            raise LeadershipLost(
                f"{term.elector.identity}: cancelled the body: leadership of "
                f"{term.elector.store.name} (fencing token {term.fencing_token}) ended"
            ) from None
        raise
    else:
        if cancelled:  # the body swallowed the cancellation and returned
            _uncancel(task)
        return result
    finally:
        finished = True
        forget()
        if timer is not None:
            timer.cancel()


def _cancelling(task: asyncio.Task[Any]) -> int:
    return task.cancelling() if sys.version_info >= (3, 11) else 0


def _uncancel(task: asyncio.Task[Any]) -> int:
    return task.uncancel() if sys.version_info >= (3, 11) else 0
