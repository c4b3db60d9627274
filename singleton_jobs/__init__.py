"""Run scheduled work on exactly one replica, with failover: leader election on a shared lease.

``import singleton_jobs`` loads no backend dependency: ``filelock`` is imported when a file
lease is constructed; ``kubernetes``, ``sqlalchemy``, ``redis`` and ``apscheduler`` only by the
modules that need them, on first use of their names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backends.file import FileElector, FileLeaseStore, default_lease_dir, default_lease_path
from .backends.memory import MemoryLeaseStore
from .decorators import get_default_elector, leader_only, set_default_elector
from .election import Elector, LeaderElector, check_timing, exit_on_sigterm
from .errors import (
    ConfigurationError,
    LeadershipLost,
    LeaseStoreError,
    NotLeaderError,
    SingletonJobsError,
)
from .lease import LeaseRecord
from .once import RunOnceError, RunOnceFailed, RunOnceTimeout, run_once
from .store import LeaseStore
from .terms import Term, TermLost, current_term

if TYPE_CHECKING:
    from .backends.kubernetes import KubernetesElector, KubernetesLeaseStore
    from .backends.redis import RedisElector, RedisLeaseStore
    from .backends.sql import SQLElector, SQLLeaseStore

__version__ = "0.2.0"

__all__ = [
    "ConfigurationError",
    "Elector",
    "FileElector",
    "FileLeaseStore",
    "KubernetesElector",
    "KubernetesLeaseStore",
    "LeaderElector",
    "LeadershipLost",
    "LeaseRecord",
    "LeaseStore",
    "LeaseStoreError",
    "MemoryLeaseStore",
    "NotLeaderError",
    "RedisElector",
    "RedisLeaseStore",
    "RunOnceError",
    "RunOnceFailed",
    "RunOnceTimeout",
    "SQLElector",
    "SQLLeaseStore",
    "SingletonJobsError",
    "Term",
    "TermLost",
    "__version__",
    "check_timing",
    "current_term",
    "default_lease_dir",
    "default_lease_path",
    "exit_on_sigterm",
    "get_default_elector",
    "leader_only",
    "run_once",
    "set_default_elector",
]


def __getattr__(name: str) -> Any:
    # The Kubernetes backend module is loaded on first use; the kubernetes package itself only
    # when a store is constructed.
    if name in ("KubernetesElector", "KubernetesLeaseStore"):
        from .backends import kubernetes

        return getattr(kubernetes, name)
    if name in ("SQLElector", "SQLLeaseStore"):
        from .backends import sql

        return getattr(sql, name)
    if name in ("RedisElector", "RedisLeaseStore"):
        from .backends import redis

        return getattr(redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
