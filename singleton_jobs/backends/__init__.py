"""Lease storage backends, one module each: ``file``, ``kubernetes``, ``sql``, ``redis`` and
``memory`` (tests). Each implements :class:`~singleton_jobs.store.LeaseStore`.

``LeaseStore``, ``Snapshot`` and ``Version`` are importable from here too, as before.
"""

from __future__ import annotations

from ..store import LeaseStore, Snapshot, Version

__all__ = ["LeaseStore", "Snapshot", "Version"]
