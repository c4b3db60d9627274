"""``@leader_only``: run a function's body only on the leader, checked in memory per call."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from threading import get_ident
from typing import Any, TypeVar, overload

if sys.version_info >= (3, 10):
    from typing import ParamSpec  # novm: only on 3.10+, typing_extensions before
else:  # pragma: no cover
    from typing_extensions import ParamSpec

from .election import Elector
from .errors import ConfigurationError, LeadershipLost, NotLeaderError
from .terms import _current, _sync_bodies, run_async_in_term, run_in_term

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_default_elector: Elector | None = None


def set_default_elector(elector: Elector | None) -> None:
    """Make ``elector`` the one that bare ``@leader_only`` functions consult on each call."""
    if elector is not None and not isinstance(elector, Elector):
        raise ConfigurationError(f"set_default_elector() needs an Elector, not {elector!r}")
    global _default_elector
    _default_elector = elector


def get_default_elector() -> Elector | None:
    """The elector bare ``@leader_only`` functions consult, or None if none was set."""
    return _default_elector


def _no_default() -> ConfigurationError:
    return ConfigurationError("@leader_only without an elector needs a default one: call "
                              "set_default_elector(elector) at start-up, or write "
                              "@leader_only(elector)")


@overload
def leader_only(elector: Callable[P, R], /) -> Callable[P, R | None]: ...


@overload
def leader_only(
    elector: Elector | None = None, *, default: Any = None,
    on_skip: Callable[[], Any] | None = None, raise_on_skip: bool = False,
    cancel_on_loss: bool = True,
) -> Callable[[Callable[P, R]], Callable[P, R | Any]]: ...


def leader_only(
    elector: Any = None, *, default: Any = None,
    on_skip: Callable[[], Any] | None = None, raise_on_skip: bool = False,
    cancel_on_loss: bool = True,
) -> Any:
    """Run the decorated function only while this replica leads; otherwise skip it.

    ``@leader_only`` consults the default elector (:func:`set_default_elector`) at each call;
    ``@leader_only(elector)`` (or ``@leader_only(elector=elector)``) a given one. A skipped
    call returns ``default``, calls ``on_skip()`` if given, and logs at DEBUG; with
    ``raise_on_skip=True`` it raises :class:`NotLeaderError` instead. ``async def`` functions
    stay coroutine functions. The check reads the elector's memory only: no I/O, no lock.

    The body runs inside the leadership term that was current when it started:
    :func:`~singleton_jobs.current_term` returns it (its fencing token, ``check()``, ``lost``).
    When that term ends while an ``async def`` body runs, the body is cancelled (unless
    ``cancel_on_loss=False``) — at the latest when the last successful renew is
    ``renew_deadline`` old, before any other replica can lead. A body that ends with
    :class:`LeadershipLost` (cancelled, or from ``current_term().check()``) is logged as a
    WARNING and returns ``default`` (raises, with ``raise_on_skip=True``). A release of the
    lease (at ``stop()``) waits for running bodies first, so the next leader never starts
    while one still runs. The
    elector is exposed as ``wrapper.elector`` (None when the default is looked up per call),
    the counts of calls that ran and were skipped as ``wrapper.calls["run"]`` and
    ``wrapper.calls["skipped"]`` (exported as metrics by
    :func:`singleton_jobs.observability.register_metrics`).

    :raises NotLeaderError: on a skipped call with ``raise_on_skip=True``.
    :raises ConfigurationError: a bare ``@leader_only`` function was called before
        :func:`set_default_elector`.
    """
    if callable(elector) and not isinstance(elector, Elector):
        return _decorate(elector, None, default, on_skip, raise_on_skip,  # bare @leader_only
                         cancel_on_loss)
    if elector is not None and not isinstance(elector, Elector):
        raise ConfigurationError(f"@leader_only() needs an Elector, not {elector!r}")

    def decorator(func: Callable[P, R]) -> Callable[P, Any]:
        return _decorate(func, elector, default, on_skip, raise_on_skip, cancel_on_loss)

    return decorator


def _decorate(func: Callable[..., Any], elector: Elector | None, default: Any,
              on_skip: Callable[[], Any] | None, raise_on_skip: bool,
              cancel_on_loss: bool) -> Callable[..., Any]:
    import inspect  # deferred: costs milliseconds at import, nothing per call

    from .observability import GuardCounts

    name = getattr(func, "__qualname__", repr(func))
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        # A generator's body runs when it is iterated, long after the call that was checked.
        raise ConfigurationError(
            f"@leader_only cannot guard the generator function {name}: its body runs when the "
            "generator is iterated, after the leadership check. Guard the function that "
            "consumes it, or check elector.is_leader inside the loop")
    warned = False
    calls = GuardCounts("function", (f"{getattr(func, '__module__', None) or '?'}.{name}",))
    # Bound once: counting a call is one C call, no attribute lookup, no lock.
    ran, skipped = calls.tallies["run"].counter, calls.tallies["skipped"].counter

    def skip(chosen: Elector) -> Any:
        nonlocal warned
        if not warned and not chosen._running:  # a plain read: followers skip on every call
            warned = True  # once per function: a follower's skips are normal and silent
            inherited = chosen._inherited()
            logger.warning(
                "%s: skipped %s: its elector %s, so it will never run here; %s", chosen.identity,
                name, "was inherited through fork()" if inherited else "is not running",
                "create and start an elector in this process after the fork" if inherited
                else "call elector.start() (or use it as a context manager) at start-up",
                extra=chosen.log_fields())
        next(skipped)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: skipped %s: not the leader", chosen.identity, name,
                         extra=chosen.log_fields())
        if raise_on_skip:
            raise NotLeaderError(f"{chosen.identity} is not the leader; {name} did not run")
        if on_skip is not None:
            on_skip()
        return default

    def lost(chosen: Elector, exc: LeadershipLost) -> Any:
        logger.warning("%s: %s stopped: %s", chosen.identity, name, exc,
                       extra=chosen.log_fields())
        if raise_on_skip:
            raise exc
        return default

    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            chosen = elector or _default_elector
            if chosen is None:
                raise _no_default()
            # The term after the check: a term that starts meanwhile is the current one.
            term = chosen._current_term if chosen.is_leader else None
            if term is not None:
                next(ran)
                try:
                    return await run_async_in_term(term, func, args, kwargs,
                                                   cancel=cancel_on_loss)
                except LeadershipLost as exc:
                    return lost(chosen, exc)
            return skip(chosen)

        async_wrapper.elector = elector  # type: ignore[attr-defined]
        async_wrapper.calls = calls  # type: ignore[attr-defined]
        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        chosen = elector or _default_elector
        if chosen is None:
            raise _no_default()
        term = chosen._current_term if chosen.is_leader else None
        if term is not None:
            next(ran)
            try:
                if _current.get() is not None:  # inside an asynchronous body
                    return run_in_term(term, func, args, kwargs)
                # run_in_term's usual case, inlined: this is the leader's per-call cost.
                entry = (get_ident(), term)
                _sync_bodies.append(entry)
                try:
                    return func(*args, **kwargs)
                finally:
                    _sync_bodies.remove(entry)
            except LeadershipLost as exc:
                return lost(chosen, exc)
        return skip(chosen)

    wrapper.elector = elector  # type: ignore[attr-defined]
    wrapper.calls = calls  # type: ignore[attr-defined]
    return wrapper

