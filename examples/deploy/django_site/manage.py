#!/usr/bin/env python
"""Django's manage.py for a one-app site: ``python manage.py runserver`` (see reports.py)."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # jobs.py lives one directory up, shared with the other examples.
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
