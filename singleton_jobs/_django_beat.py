"""The leader-only version of django-celery-beat's ``DatabaseScheduler``: see
:mod:`singleton_jobs.celery`. Imported only when ``LeaderDatabaseScheduler`` is named."""

from __future__ import annotations

import logging
from typing import Any

try:
    from django_celery_beat.schedulers import DatabaseScheduler
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("LeaderDatabaseScheduler needs django-celery-beat: "
                      "pip install django-celery-beat") from exc

from .celery import LeaderOnlyBeatMixin, _release_on_sigterm

logger = logging.getLogger("singleton_jobs.celery")


class LeaderDatabaseScheduler(LeaderOnlyBeatMixin, DatabaseScheduler):  # type: ignore[misc]
    """django-celery-beat's ``DatabaseScheduler`` run by the leader only: followers neither
    read nor write the schedule in the database; a replica that starts leading reads it afresh
    (so what fell due during a failover is sent once), and the leader writes an entry's
    ``last_run_at`` right after sending it."""

    _leading = False

    def setup_schedule(self) -> None:
        # The schedule is read (and the configured entries written) when this beat leads.
        _release_on_sigterm()
        self._start_elector()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        elector = self._start_elector()
        if not elector.is_leader:
            if self._leading:
                self._leading = False
                logger.info("%s: no longer leading beat; not reading the schedule",
                            elector.identity)
            self._dirty.clear()  # what this beat did not send is not its to write
            # Look again within one retry period.
            return float(min(elector.retry_period, self.max_interval))
        if not self._leading:
            self._leading = True
            logger.info("%s: leading beat; reading the schedule from the database",
                        elector.identity)
            self._initial_read = True
            self._heap = None
            self._dirty.clear()
            DatabaseScheduler.setup_schedule(self)
        interval: float = super().tick(*args, **kwargs)
        # A follower (or a new leader) looks at leadership within one retry period.
        return min(interval, elector.retry_period)

    def _send(self, entry: Any, producer: Any) -> None:
        super()._send(entry, producer)
        self.sync()  # last_run_at in the database now: a new leader does not send it again

    def sync(self) -> None:
        if self.elector is not None and self.elector.is_leader:
            super().sync()
