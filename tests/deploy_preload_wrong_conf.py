"""gunicorn settings for tests/deploy_preload_wrong.py: each worker schedules with the
elector it inherited from the master (the mistake the engine must make harmless)."""

from __future__ import annotations

from typing import Any


def post_fork(server: Any, worker: Any) -> None:
    import deploy_preload_wrong  # already imported in the master by --preload

    deploy_preload_wrong.schedule()
