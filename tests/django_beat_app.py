"""A Django project in one module, with django-celery-beat, for tests/test_celery.py: the
schedule lives in the database (``DatabaseScheduler``), the lease in Redis.

DJANGO_DATABASE (a ``postgresql+psycopg://user@host:port/name`` URL), BEAT_BROKER, BEAT_QUEUE,
BEAT_LEASE, BEAT_JOURNAL, BEAT_LEASE_DURATION / BEAT_RENEW_DEADLINE / BEAT_RETRY_PERIOD.
``python -c "import django_beat_app; django_beat_app.prepare()"`` creates the tables and one
periodic task, ``tick``, every second; the worker appends ``<fencing token> <received_at>`` to
BEAT_JOURNAL for every message it receives.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

import django
from django.conf import settings

_url = urlsplit(os.environ["DJANGO_DATABASE"])
settings.configure(
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql", "NAME": _url.path.lstrip("/"),
        "USER": _url.username or "postgres", "HOST": _url.hostname or "127.0.0.1",
        "PORT": str(_url.port or 5432)}},
    INSTALLED_APPS=["django_celery_beat"], USE_TZ=True, TIME_ZONE="UTC",
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
)
django.setup()

from celery import Celery  # noqa: E402 - Django first

app = Celery("django_beat_app", broker=os.environ.get("BEAT_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=os.environ.get("BEAT_QUEUE", "django-beat-test"),
    broker_connection_retry_on_startup=True,
    timezone="UTC",
    singleton_jobs_lease_name=os.environ.get("BEAT_LEASE", "django-beat-test"),
    singleton_jobs_lease_duration=float(os.environ.get("BEAT_LEASE_DURATION", "2")),
    singleton_jobs_renew_deadline=float(os.environ.get("BEAT_RENEW_DEADLINE", "1")),
    singleton_jobs_retry_period=float(os.environ.get("BEAT_RETRY_PERIOD", "0.2")),
)


@app.task(bind=True, name="django_beat_app.tick")
def tick(self) -> None:  # type: ignore[no-untyped-def]
    headers = self.request.headers or {}
    token = headers.get("singleton_jobs_fencing_token",
                        getattr(self.request, "singleton_jobs_fencing_token", None))
    journal = os.open(os.environ["BEAT_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(journal, f"{token} {time.time():.6f}\n".encode())
    finally:
        os.close(journal)


def prepare() -> None:
    from django.core.management import call_command
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    call_command("migrate", verbosity=0)
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1,
                                                             period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.update_or_create(name="tick", defaults={
        "task": "django_beat_app.tick", "interval": every_second})
