"""gunicorn settings: each worker creates and starts its own elector right after the fork.

The master never campaigns: it forks (and re-forks) the workers, and an elector started in it
would be dead in every worker. ``worker_exit`` releases the lease when a worker stops, so
another worker takes over within one retry period.
"""

from __future__ import annotations

from typing import Any

from jobs import make_elector, start_scheduler


def post_fork(server: Any, worker: Any) -> None:
    worker.stop_scheduler = start_scheduler(make_elector())


def worker_exit(server: Any, worker: Any) -> None:
    stop = getattr(worker, "stop_scheduler", None)
    if stop is not None:
        stop()
