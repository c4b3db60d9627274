"""A Django app that starts the scheduler in the process serving ``manage.py runserver``.

    cd examples/deploy/django_site
    python manage.py runserver

``AppConfig.ready()`` runs in every process that sets Django up: runserver's autoreloader
watcher (which serves nothing and restarts its child when a file changes), the child it starts
with ``RUN_MAIN=true`` (which serves), and every other management command (``migrate``,
``shell``). Only the serving process may campaign. Under gunicorn or uWSGI start the scheduler
in the server's post-fork hook instead (see ../gunicorn.conf.py): ``ready()`` runs in the master
with ``--preload``.
"""

from __future__ import annotations

import os
import sys

from django.apps import AppConfig
from django.http import HttpRequest, HttpResponse
from django.urls import path

from singleton_jobs import get_default_elector


def serves_runserver() -> bool:
    """True in the process that serves ``runserver``: the reloader's child, or the only one."""
    if sys.argv[1:2] != ["runserver"]:
        return False
    return os.environ.get("RUN_MAIN") == "true" or "--noreload" in sys.argv


class ReportsConfig(AppConfig):
    name = "reports"

    def ready(self) -> None:
        if serves_runserver():
            from jobs import make_elector, start_scheduler

            start_scheduler(make_elector())  # the elector releases the lease at exit


def status(request: HttpRequest) -> HttpResponse:
    elector = get_default_elector()
    return HttpResponse(f"process {os.getpid()}, leader {elector.leader if elector else None}\n",
                        content_type="text/plain")


urlpatterns = [path("", status)]
