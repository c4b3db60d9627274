"""``python -m singleton_jobs``: the ``singleton-jobs`` command."""

import sys

from .cli import main

sys.exit(main())
