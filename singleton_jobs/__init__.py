"""Run scheduled work on exactly one replica, with failover: leader election on a shared lease.

``import singleton_jobs`` loads no backend dependency: ``filelock`` is imported when a file
lease is constructed, ``kubernetes`` and ``apscheduler`` only by the modules that need them.
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
from .store import LeaseStore

if TYPE_CHECKING:
    from .backends.kubernetes import KubernetesElector, KubernetesLeaseStore

__version__ = "0.1.0"

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
    "SingletonJobsError",
    "__version__",
    "check_timing",
    "default_lease_dir",
    "default_lease_path",
    "exit_on_sigterm",
    "get_default_elector",
    "leader_only",
    "set_default_elector",
]


def __getattr__(name: str) -> Any:
    # The Kubernetes backend module is loaded on first use; the kubernetes package itself only
    # when a store is constructed.
    if name in ("KubernetesElector", "KubernetesLeaseStore"):
        from .backends import kubernetes

        return getattr(kubernetes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
