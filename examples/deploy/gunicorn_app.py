"""A WSGI app served by gunicorn sync workers; gunicorn.conf.py gives each worker its elector.

    cd examples/deploy
    gunicorn -w 3 gunicorn_app:app              # gunicorn reads ./gunicorn.conf.py
    gunicorn -w 3 --preload gunicorn_app:app    # the same: nothing here campaigns at import

Every worker serves requests and runs the scheduler; only the worker whose elector leads runs
``nightly_report``. Importing this module creates no elector, so ``--preload`` (which imports
it once in the master, before the fork) changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from singleton_jobs import get_default_elector


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    elector = get_default_elector()  # this worker's, set in post_fork
    leader = elector.leader if elector is not None else None
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"worker {os.getpid()}, leader {leader}\n".encode()]
