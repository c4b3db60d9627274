"""The lease record every backend stores, and identity rules shared by all of them."""

from __future__ import annotations

import os
import unicodedata
from typing import NamedTuple

from .errors import ConfigurationError

#: Holder of a record that exists but cannot be read (corrupt file, garbage from a server).
#: It contains a control character, so no valid identity can ever equal it.
UNKNOWN_HOLDER = "\x00unknown"

MAX_IDENTITY_LENGTH = 253

#: Holders of records that are marks, not leases: the lease of a ``run_once`` key whose job has
#: completed, or whose last run failed. They start with a space, so no valid identity (and no
#: replica) can ever equal them; every backend stores them as it stores an identity.
COMPLETED_MARK = " completed"
FAILED_MARK = " failed"
MARKS = (COMPLETED_MARK, FAILED_MARK)


class LeaseRecord(NamedTuple):
    """One lease: who holds it, for how long, and how often it changed hands.

    Times are UTC wall-clock Unix seconds and only informational: expiry is judged on the
    observer's own monotonic clock (see :class:`~singleton_jobs.Elector`).
    """

    holder: str
    """Identity of the leader; ``""`` once released, :data:`UNKNOWN_HOLDER` if unreadable."""
    lease_duration: float
    """Seconds the holder may be trusted after a follower last saw the record change.
    ``0`` means unknown: the observer then uses its own ``lease_duration``."""
    acquire_time: float
    """When the current holder acquired the lease (the writer's wall clock; informational)."""
    renew_time: float
    """When the holder last renewed it (the writer's wall clock; informational)."""
    transitions: int
    """Incremented every time the holder changes: the fencing token."""

    @property
    def released(self) -> bool:
        """True when the last holder gave the lease up; it may be taken at once."""
        return self.holder == ""

    @property
    def mark(self) -> bool:
        """True for a record that marks a ``run_once`` key completed or failed: nobody holds
        it (see :data:`COMPLETED_MARK`)."""
        return self.holder in MARKS

    @property
    def readable(self) -> bool:
        """False for content the backend could not parse (held by nobody valid)."""
        return self.holder != UNKNOWN_HOLDER


def unreadable_record(transitions: int = 0) -> LeaseRecord:
    """The record a backend returns for content it cannot parse: held by nobody valid."""
    return LeaseRecord(UNKNOWN_HOLDER, 0.0, 0.0, 0.0, transitions)


def identity_problem(identity: object) -> str | None:
    """Why ``identity`` cannot be used as a holder identity, or None when it can."""
    if not isinstance(identity, str):
        return f"must be a string, not {type(identity).__name__}"
    if not identity:
        return "must not be empty"
    if len(identity) > MAX_IDENTITY_LENGTH:
        return f"is {len(identity)} characters long; at most {MAX_IDENTITY_LENGTH} are allowed"
    if "\n" in identity or "\r" in identity:
        return "contains a newline"
    if any(unicodedata.category(ch) == "Cc" for ch in identity):
        return "contains a control character"
    if identity != identity.strip():
        return "has leading or trailing whitespace"
    return None


def holder_problem(holder: object) -> str | None:
    """Why ``holder`` cannot be stored as a record's holder: an identity, ``""`` (released) or
    a mark are allowed."""
    if holder == "" or holder in MARKS:
        return None
    return identity_problem(holder)


def check_identity(identity: object) -> str:
    """Return ``identity`` if valid, else raise :class:`ConfigurationError` saying why."""
    problem = identity_problem(identity)
    if problem is not None:
        raise ConfigurationError(f"identity {identity!r} {problem}; pass identity='...' with a "
                                 "printable name unique to this replica")
    assert isinstance(identity, str)
    return identity


def default_identity() -> str:
    """``<POD_NAME or hostname>_<pid>_<random>``: readable, and unique to this process.

    Every worker process of a pod (gunicorn, uvicorn, Celery, uWSGI) shares ``POD_NAME`` and the
    host name, so neither may be an identity on its own: two processes with one identity would
    both believe they hold the lease.
    """
    import socket  # deferred: only needed when no identity is given

    node = os.environ.get("POD_NAME", "").strip() or socket.gethostname() or "host"
    suffix = f"_{os.getpid()}_{os.urandom(3).hex()}"
    node = node[:MAX_IDENTITY_LENGTH - len(suffix)]
    identity = node + suffix
    return identity if identity_problem(identity) is None else f"replica{suffix}"
