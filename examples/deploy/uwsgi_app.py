"""A WSGI app under uWSGI: each worker starts its elector after the fork.

    cd examples/deploy
    uwsgi --master --processes 3 --enable-threads --http-socket :8000 -w uwsgi_app:app
    uwsgi --master --processes 3 --enable-threads --lazy-apps --http-socket :8000 -w uwsgi_app:app

Without ``--lazy-apps`` uWSGI imports this module once in the master and forks the workers from
it: ``postfork`` runs ``start_in_worker`` in each worker after the fork. With ``--lazy-apps``
each worker imports the module itself, after the fork, when ``postfork`` hooks have already run:
then the module starts it at import. Pass ``--enable-threads``: the elector runs a thread,
and uWSGI's documentation says threads an app starts do not run without it.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from typing import Any

import uwsgi  # importable only inside uWSGI
from jobs import make_elector, start_scheduler
from uwsgidecorators import postfork

from singleton_jobs import get_default_elector


def start_in_worker() -> None:
    atexit.register(start_scheduler(make_elector()))  # uWSGI runs atexit when a worker stops


if uwsgi.worker_id() == 0:  # imported in the master: the workers are forked from it later
    postfork(start_in_worker)
else:                       # --lazy-apps: imported in a worker, after its fork
    start_in_worker()


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    elector = get_default_elector()
    leader = elector.leader if elector is not None else None
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"worker {os.getpid()}, leader {leader}\n".encode()]
