"""APScheduler 3.x integration: a job store whose jobs run only on the leader.

``LeaderOnlyJobStore(elector, jobstore)`` wraps any APScheduler 3 job store. Every replica runs
the same scheduler; jobs in the wrapped store run only on the replica that leads, while jobs in
the scheduler's other stores run everywhere. The scheduler asks its stores two questions —
"which jobs are due?" and "when is the next one?" — and the wrapper answers them according to
``elector.is_leader`` (memory only, no I/O).

Two kinds of wrapped store behave differently on followers:

* **per-replica** (``MemoryJobStore``, the default): each replica has its own copy of the
  schedule. A follower advances its copy at each due time as if it had run the job, without
  running it, so a new leader continues the schedule instead of replaying a backlog.
* **shared** (``SQLAlchemyJobStore``, ``RedisJobStore``, ``MongoDBJobStore``, …: every other
  store): one schedule for the whole fleet. Followers neither read nor write it on their own
  and sleep until they lead. The leader advances a job's ``next_run_time`` in the store
  *before* handing the run to an executor, so a leader killed mid-way loses at most that run
  and never makes its successor repeat it. Runs that fell due during a failover are handled by
  the job's ``misfire_grace_time`` and ``coalesce`` exactly as in a single scheduler. The leader
  looks at the store at least once per ``retry_period``, so jobs added by any replica are
  picked up within one retry period.

When this replica becomes leader the scheduler is woken at once. When it loses leadership, no
new run starts; a run already executing is not interrupted (pass ``elector.fencing_token`` to
downstream systems if that matters).

Requires ``pip install "singleton_jobs[apscheduler]"``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

try:
    from apscheduler.events import JobEvent, SchedulerEvent
    from apscheduler.jobstores.base import BaseJobStore, JobLookupError
    from apscheduler.jobstores.memory import MemoryJobStore
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('singleton_jobs.apscheduler needs APScheduler 3.x: '
                      'pip install "singleton_jobs[apscheduler]"') from exc

from .election import Elector
from .errors import ConfigurationError

logger = logging.getLogger(__name__)

#: Dispatched when a due run is skipped because this replica is not the leader (per-replica
#: stores only: followers of a shared store do not look at it). Event: :class:`JobSkippedEvent`.
EVENT_JOB_SKIPPED_NOT_LEADER = 2**20
#: Dispatched when this replica starts leading. Event class :class:`LeadershipEvent`.
EVENT_LEADERSHIP_GAINED = 2**21
#: Dispatched when this replica stops leading. Event class :class:`LeadershipEvent`.
EVENT_LEADERSHIP_LOST = 2**22
#: All of the above, for ``scheduler.add_listener(callback, EVENT_LEADERSHIP_ALL)``.
EVENT_LEADERSHIP_ALL = (EVENT_JOB_SKIPPED_NOT_LEADER | EVENT_LEADERSHIP_GAINED
                        | EVENT_LEADERSHIP_LOST)


class JobSkippedEvent(JobEvent):  # type: ignore[misc]
    """A run of ``job_id`` at ``scheduled_run_times`` was skipped: this replica is a follower."""

    def __init__(self, job_id: str, jobstore: str, scheduled_run_times: list[datetime],
                 identity: str) -> None:
        super().__init__(EVENT_JOB_SKIPPED_NOT_LEADER, job_id, jobstore)
        self.scheduled_run_times = scheduled_run_times
        self.identity = identity


class LeadershipEvent(SchedulerEvent):  # type: ignore[misc]
    """This replica (``identity``) started or stopped leading the job store ``alias``."""

    def __init__(self, code: int, alias: str | None, identity: str,
                 fencing_token: int | None) -> None:
        super().__init__(code, alias)
        self.identity = identity
        self.fencing_token = fencing_token


class LeaderOnlyJobStore(BaseJobStore):  # type: ignore[misc]
    """A job store whose jobs run only while ``elector`` leads.

    :param elector: decides who leads; started with the scheduler if it is not running yet (and
        then stopped with it).
    :param jobstore: the store to wrap (default: a new ``MemoryJobStore``).
    :param shared: whether every replica uses the same underlying store. Default: False for a
        ``MemoryJobStore``, True for any other store.
    """

    def __init__(self, elector: Elector, jobstore: BaseJobStore | None = None, *,
                 shared: bool | None = None) -> None:
        super().__init__()
        if not isinstance(elector, Elector):
            raise ConfigurationError(f"LeaderOnlyJobStore needs an Elector, not {elector!r}")
        if jobstore is None:
            jobstore = MemoryJobStore()
        if not isinstance(jobstore, BaseJobStore):
            raise ConfigurationError(f"LeaderOnlyJobStore wraps an APScheduler 3 job store, not "
                                     f"{jobstore!r}")
        if isinstance(jobstore, LeaderOnlyJobStore):
            raise ConfigurationError("LeaderOnlyJobStore cannot wrap another LeaderOnlyJobStore")
        self.elector = elector
        self.jobstore = jobstore
        self.shared = not isinstance(jobstore, MemoryJobStore) if shared is None else shared
        self._started_elector = False

    def __repr__(self) -> str:
        kind = "shared" if self.shared else "per-replica"
        return f"<{type(self).__name__} {kind} {self.jobstore!r} led by {self.elector.identity!r}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self.jobstore.start(scheduler, alias)
        self.elector.add_leadership_listener(self._leadership_changed)
        if not self.elector.running:
            self.elector.start()
            self._started_elector = True

    def shutdown(self) -> None:
        self.elector.remove_leadership_listener(self._leadership_changed)
        if self._started_elector:
            self.elector.stop()
            self._started_elector = False
        self.jobstore.shutdown()

    def _leadership_changed(self, leading: bool) -> None:
        scheduler, identity = self._scheduler, self.elector.identity
        if scheduler is None:
            return
        if leading:
            logger.info("%s: leading job store %r; waking the scheduler", identity, self._alias)
            code = EVENT_LEADERSHIP_GAINED
        else:
            logger.info("%s: no longer leading job store %r; its jobs stop here (a run already "
                        "executing finishes)", identity, self._alias)
            code = EVENT_LEADERSHIP_LOST
        scheduler._dispatch_event(LeadershipEvent(code, self._alias, identity,
                                                  self.elector.fencing_token))
        if leading:
            scheduler.wakeup()

    # -- what the scheduler asks on every pass ------------------------------------------------

    def get_due_jobs(self, now: datetime) -> list[Any]:
        if self.elector.is_leader:
            due = self.jobstore.get_due_jobs(now)
            return self._claim(due, now) if self.shared else due
        if not self.shared:
            self._skip(self.jobstore.get_due_jobs(now), now)
        return []

    def get_next_run_time(self) -> datetime | None:
        if self.elector.is_leader:
            next_run: datetime | None = self.jobstore.get_next_run_time()
            if not self.shared:
                return next_run
            # Look again within one retry period: another replica may add a job to the
            # shared store, and nobody wakes this scheduler when it does.
            poll = datetime.now(self._timezone()) + timedelta(seconds=self.elector.retry_period)
            return poll if next_run is None or next_run > poll else next_run
        if self.shared:
            return None  # sleep until woken: the leader owns the shared schedule
        own: datetime | None = self.jobstore.get_next_run_time()
        return own

    def _timezone(self) -> Any:
        return getattr(self._scheduler, "timezone", None)

    def _claim(self, due: list[Any], now: datetime) -> list[Any]:
        """Advance each due job in the shared store before it runs: at most once, never twice."""
        claimed = []
        for job in due:
            run_times = job._get_run_times(now)
            if not run_times:
                continue
            # The same next fire time the scheduler computes after submitting the run(s).
            following = job.trigger.get_next_fire_time(run_times[-1], now)
            scheduled = job.next_run_time
            # Without a next fire time the scheduler removes the job after submitting it;
            # pausing it first means a leader killed in between leaves it paused, not re-run.
            job.next_run_time = following
            try:
                self.jobstore.update_job(job)
            except JobLookupError:
                continue  # removed by another replica in the meantime
            finally:
                job.next_run_time = scheduled
            claimed.append(job)
        return claimed

    def _skip(self, due: list[Any], now: datetime) -> None:
        """On a follower with a per-replica store: move the schedule on without running."""
        identity = self.elector.identity
        for job in due:
            run_times = job._get_run_times(now)
            if not run_times:
                continue
            logger.info("%s: skipped job %r (scheduled at %s): not the leader", identity,
                        job.id, run_times[-1])
            following = job.trigger.get_next_fire_time(run_times[-1], now)
            if following is None:
                self.jobstore.remove_job(job.id)
            else:
                job._modify(next_run_time=following)
                self.jobstore.update_job(job)
            if self._scheduler is not None:
                self._scheduler._dispatch_event(
                    JobSkippedEvent(job.id, self._alias, run_times, identity))

    # -- everything else is the wrapped store's business ---------------------------------------

    def lookup_job(self, job_id: str) -> Any:
        return self.jobstore.lookup_job(job_id)

    def get_all_jobs(self) -> list[Any]:
        return self.jobstore.get_all_jobs()  # type: ignore[no-any-return]

    def add_job(self, job: Any) -> None:
        self.jobstore.add_job(job)

    def update_job(self, job: Any) -> None:
        self.jobstore.update_job(job)

    def remove_job(self, job_id: str) -> None:
        self.jobstore.remove_job(job_id)

    def remove_all_jobs(self) -> None:
        self.jobstore.remove_all_jobs()
