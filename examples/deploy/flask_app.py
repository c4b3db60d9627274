"""A Flask app under ``flask run --debug``: only the serving child campaigns, never the watcher.

    cd examples/deploy
    flask --app flask_app run --debug

With the reloader, ``flask run`` imports this module twice: in the watcher process, which only
restarts the server when a file changes, and in the serving child it starts with
``WERKZEUG_RUN_MAIN=true``. The scheduler starts in the child only. Each reload ends the child
(its elector releases the lease at exit) and starts a new one, which campaigns again. Under a
production server, start the scheduler in its post-fork hook instead (see gunicorn.conf.py).
"""

from __future__ import annotations

import os

from flask import Flask
from jobs import make_elector, start_scheduler
from werkzeug.serving import is_running_from_reloader

from singleton_jobs import get_default_elector

app = Flask(__name__)

if is_running_from_reloader() or not app.debug:  # the serving child, or no reloader at all
    start_scheduler(make_elector())  # the elector releases the lease at interpreter exit


@app.get("/")
def status() -> str:
    elector = get_default_elector()
    return f"process {os.getpid()}, leader {elector.leader if elector else None}\n"
