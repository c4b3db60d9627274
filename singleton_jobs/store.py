"""The store contract: what the engine needs from a place that keeps a lease.

A store keeps one :class:`~singleton_jobs.lease.LeaseRecord` and offers a compare-and-swap on
it. It knows nothing about elections: the :class:`~singleton_jobs.Elector` owns all timing.
A new backend subclasses :class:`LeaseStore` and fills in :meth:`~LeaseStore.get`,
:meth:`~LeaseStore.create` and :meth:`~LeaseStore.update`.

The layers read top-down: guards (``decorators``, ``apscheduler``) use the engine
(``election``), the engine uses this contract, and the backends (``backends.*``) implement it.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
from collections.abc import Callable, Hashable

from .errors import ConfigurationError
from .lease import LeaseRecord

#: Opaque token naming one stored state of the record (a counter, the file's bytes, a
#: Kubernetes resourceVersion). Only equality between versions is meaningful.
Version = Hashable

Snapshot = tuple[LeaseRecord, Version]


class LeaseStore(abc.ABC):
    """One lease record with an atomic compare-and-swap.

    Losing a race is a normal outcome, reported as ``None``; only a failure to talk to the
    storage raises, and then always :class:`~singleton_jobs.errors.LeaseStoreError` (or
    :class:`~singleton_jobs.errors.ConfigurationError` when the cause is a setting the user
    must change). ``timeout`` bounds how long a call may block, in seconds.
    """

    @abc.abstractmethod
    def get(self, *, timeout: float) -> Snapshot | None:
        """Return the stored record and its version, or None if there is no record.

        Content that cannot be parsed is returned as
        :func:`~singleton_jobs.lease.unreadable_record`, never raised.

        :raises LeaseStoreError: the storage could not be read.
        """

    @abc.abstractmethod
    def create(self, record: LeaseRecord, *, timeout: float) -> Version | None:
        """Store ``record`` if no record exists; return its version, or None if one exists.

        :raises LeaseStoreError: the storage could not be written.
        """

    @abc.abstractmethod
    def update(self, record: LeaseRecord, version: Version, *, timeout: float) -> Version | None:
        """Replace the record if it is still at ``version``; return the new version, or None.

        :raises LeaseStoreError: the storage could not be written.
        """

    def check_lease_duration(self, lease_duration: float) -> None:  # noqa: B027 - optional
        """Reject a lease duration this backend cannot store.

        :raises ConfigurationError: the value cannot be represented.
        """

    def transitions_floor(self, *, timeout: float) -> int | None:
        """The highest ``transitions`` this store ever held, kept apart from the record.

        The elector asks when the record is missing or unreadable, and at every takeover, so
        that fencing tokens keep growing even after the record was destroyed or rewritten.
        ``-1``: this store never held a lease (a fleet's first start). ``None``: it cannot
        tell (it keeps no floor, or the floor cannot be read); a missing record then counts as
        one that may have had a live holder.

        :raises LeaseStoreError: the floor could not be read for a reason that may pass.
        """
        return None

    def inherited(self) -> bool:
        """True in a process that got this store through ``fork()`` from the one that built
        it (stores that keep no per-process state say False)."""
        pid = getattr(self, "_pid", None)
        return pid is not None and pid != os.getpid()

    def after_fork(self) -> None:  # noqa: B027 - optional
        """Drop what this process inherited from its parent (locks, connections).

        Called in a child process when an elector that was created, but never started, in the
        parent starts there; a socket or lock shared with the parent would mix both processes'
        requests.
        """

    def watch(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``callback`` soon after the lease is released, where the storage can say so
        (PostgreSQL ``NOTIFY``, Redis pub/sub); return a function that stops the calls, or None
        when this store cannot notify.

        A notification only wakes a follower early; it never decides anything, and a lost one
        costs at most one ``retry_period`` of polling. ``callback`` must return at once and may
        be called from any thread.
        """
        return None

    def sibling(self, key: str) -> LeaseStore:
        """A store for another lease beside this one, in the same storage: ``run_once`` keeps
        one lease per key there (see :func:`once_name`).

        :raises ConfigurationError: this store cannot keep other leases.
        """
        raise ConfigurationError(f"{type(self).__name__} cannot keep other leases beside its "
                                 "own, which run_once() needs: implement LeaseStore.sibling()")

    @property
    def name(self) -> str:
        """Where the lease lives, for log lines and error messages."""
        return type(self).__name__


def once_name(name: str, key: str, limit: int) -> str:
    """The name of the lease of the ``run_once`` key ``key`` beside the lease ``name``:
    ``<name>-once-<key as lowercase letters, digits and '-'>-<8 hex digits of its hash>``, at
    most ``limit`` characters. It is a valid name on every backend (a DNS subdomain for a
    Kubernetes Lease if ``name`` is one), and distinct keys get distinct names."""
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    suffix = f"-once-{slug}-{digest}" if slug else f"-once-{digest}"
    return name[:max(limit - len(suffix), 1)].rstrip("-.") + suffix
