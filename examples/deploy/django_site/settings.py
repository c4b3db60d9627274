"""The smallest settings runserver accepts: one app (reports.py), one URL, no database."""

from __future__ import annotations

SECRET_KEY = "example-only"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["reports.ReportsConfig"]
ROOT_URLCONF = "reports"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
