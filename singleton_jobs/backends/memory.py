"""In-process lease store: the reference backend for engine tests and single-process use.

Guarantees: linearizable compare-and-swap between threads of one process. Nothing is shared
with other processes.
"""

from __future__ import annotations

import itertools
import threading

from ..lease import LeaseRecord
from ..store import LeaseStore, Snapshot, Version, once_name


class MemoryLeaseStore(LeaseStore):
    """A lease held in this process's memory; versions are increasing integers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions = itertools.count(1)
        self._snapshot: Snapshot | None = None
        self._highest = -1
        self._siblings: dict[str, MemoryLeaseStore] = {}

    def get(self, *, timeout: float = 0.0) -> Snapshot | None:
        return self._snapshot

    def create(self, record: LeaseRecord, *, timeout: float = 0.0) -> Version | None:
        with self._lock:
            if self._snapshot is not None:
                return None
            self._snapshot = (record, next(self._versions))
            self._highest = max(self._highest, record.transitions)
            return self._snapshot[1]

    def transitions_floor(self, *, timeout: float = 0.0) -> int | None:
        return self._highest

    def update(self, record: LeaseRecord, version: Version, *,
               timeout: float = 0.0) -> Version | None:
        with self._lock:
            if self._snapshot is None or self._snapshot[1] != version:
                return None
            self._snapshot = (record, next(self._versions))
            self._highest = max(self._highest, record.transitions)
            return self._snapshot[1]

    def sibling(self, key: str) -> MemoryLeaseStore:
        with self._lock:
            return self._siblings.setdefault(once_name("memory", key, 200), MemoryLeaseStore())

    @property
    def name(self) -> str:
        return f"memory:{id(self):#x}"
