"""APScheduler 3.x integration: a job store whose jobs run only on the leader.

``LeaderOnlyJobStore(elector, jobstore)`` wraps any APScheduler 3 job store. Every replica runs
the same scheduler; jobs in the wrapped store run only on the replica that leads, while jobs in
the scheduler's other stores run everywhere. The scheduler asks its stores two questions —
"which jobs are due?" and "when is the next one?" — and the wrapper answers them according to
``elector.is_leader`` (memory only, no I/O).

Two kinds of wrapped store behave differently on followers:

* **per-replica** (``MemoryJobStore``, the default): each replica has its own copy of the
  schedule. A follower advances its copy at each due time as if it had run the job, without
  running it, so a new leader continues the schedule instead of replaying a backlog. Leadership
  is checked *after* the due jobs are read, so a replica that stopped leading during the read
  skips them.
* **shared** (``SQLAlchemyJobStore``, ``RedisJobStore``, ``MongoDBJobStore``, …: every other
  store): one schedule for the fleet. Followers neither read nor write it on their own and
  sleep until they lead. The leader *claims* each due run before handing it to an executor: it
  moves the job's ``next_run_time`` on in the store, so a leader killed mid-way loses at most
  that run and never makes its successor repeat it. Runs that fell due during a failover are
  handled by the job's ``misfire_grace_time`` and ``coalesce`` exactly as in a single
  scheduler. The leader looks at the store at least once per ``retry_period``, so jobs added by
  any replica are picked up within one retry period.

How a claim is made safe against a leader that stops leading while it talks to the store (a
slow read, a paused process): the leadership *term* (``elector.fencing_token``) is noted before
the read, and is checked again right before each claim write and right after it; a term that
ended or changed means the jobs read are left alone, and a claim that succeeded while the term
ended is not run (that run is lost rather than duplicated: at most once). The claim itself is a
compare-and-set on the stored ``next_run_time`` where the store offers one — a conditional
``UPDATE`` for ``SQLAlchemyJobStore``, ``WATCH``/``MULTI`` for ``RedisJobStore``, a filtered
``update_one`` for ``MongoDBJobStore`` — so a stale read can never set a schedule back that
another replica moved on. Other stores are claimed with their ``update_job`` between the two
leadership checks. After submitting a claimed run, APScheduler itself writes the job's next run
time back (``update_job``) or removes a finished job (``remove_job``); the wrapper absorbs that
write, since the claim already stored the same schedule, and removes a finished job only if the
store still holds what the claim wrote (or, without a compare-and-set, while the same term
lasts) — so the scheduler's bookkeeping can never overwrite a newer schedule either.

When this replica becomes leader the scheduler is woken at once. When it loses leadership, no
new run starts. Each run handed to an executor is bound to the leadership term it was handed over
in: it does not start if that term ended while it waited for a worker; inside it
:func:`~singleton_jobs.current_term` gives the term (fencing token, ``check()``, ``lost``); a
coroutine job (``AsyncIOExecutor``) is cancelled when the term ends, before another replica can
lead, and a synchronous one can stop at ``current_term().check()``. Either way the run ends with
a WARNING, not an error. The elector waits for running jobs before it releases the lease.

Requires ``pip install "singleton_jobs[apscheduler]"``.
"""

from __future__ import annotations

import abc
import logging
import pickle
import sys
from datetime import datetime, timedelta
from typing import Any, NamedTuple

try:
    from apscheduler.events import JobEvent, SchedulerEvent
    from apscheduler.job import Job
    from apscheduler.jobstores.base import BaseJobStore, JobLookupError
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.util import datetime_to_utc_timestamp, iscoroutinefunction_partial
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('singleton_jobs.apscheduler needs APScheduler 3.x: '
                      'pip install "singleton_jobs[apscheduler]"') from exc

from .election import Elector
from .errors import ConfigurationError, LeadershipLost
from .observability import GuardCounts
from .terms import Term, run_async_in_term, run_in_term

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


# -- compare-and-set on a job's stored next_run_time, per kind of store ---------------------------


def _timestamp(when: datetime | None) -> float | None:
    """The value the APScheduler stores keep in their ``next_run_time`` column/score/field."""
    result: float | None = datetime_to_utc_timestamp(when)
    return result


class _CompareAndSet(abc.ABC):
    """Writes to a job store that succeed only while a job's stored ``next_run_time`` is still
    ``expected``: what a claim needs so that a stale read can never set a schedule back.

    Each subclass uses the wrapped store's own connection, table or keys, and its pickling of
    job state exactly as the store's ``update_job`` does, so the store reads back what it wrote.
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    @abc.abstractmethod
    def replace(self, job: Any, expected: datetime | None) -> bool:
        """Store ``job``'s state if its stored ``next_run_time`` is ``expected``; False if the
        stored value differs or the job is gone."""

    @abc.abstractmethod
    def remove(self, job_id: str, expected: datetime | None) -> bool:
        """Delete the job if its stored ``next_run_time`` is ``expected``."""

    def _state(self, job: Any) -> bytes:
        return pickle.dumps(job.__getstate__(), self.store.pickle_protocol)


class _SQLAlchemyCompareAndSet(_CompareAndSet):
    """``UPDATE/DELETE ... WHERE id = :id AND next_run_time = :expected`` on the store's table."""

    def _same(self, job_id: str, expected: datetime | None) -> Any:
        from sqlalchemy import and_

        column = self.store.jobs_t.c.next_run_time
        timestamp = _timestamp(expected)
        # The column holds datetime_to_utc_timestamp() of the very datetime pickled in the job
        # state (both written by one statement), so comparing the floats for equality is exact.
        kept = column.is_(None) if timestamp is None else column == timestamp
        return and_(self.store.jobs_t.c.id == job_id, kept)

    def replace(self, job: Any, expected: datetime | None) -> bool:
        table = self.store.jobs_t
        update = table.update().values(next_run_time=_timestamp(job.next_run_time),
                                       job_state=self._state(job)).where(
            self._same(job.id, expected))
        with self.store.engine.begin() as connection:
            # Always a real change (next_run_time differs from expected), so even MySQL's
            # "changed rows" count is 1 exactly when the row matched.
            return bool(connection.execute(update).rowcount == 1)

    def remove(self, job_id: str, expected: datetime | None) -> bool:
        delete = self.store.jobs_t.delete().where(self._same(job_id, expected))
        with self.store.engine.begin() as connection:
            return bool(connection.execute(delete).rowcount == 1)


class _RedisCompareAndSet(_CompareAndSet):
    """``WATCH`` the jobs hash and run-times sorted set, compare the job's score, ``MULTI``."""

    #: A WATCH fails when *any* job in the two keys changed; look again this many times.
    ATTEMPTS = 5

    def _apply(self, job_id: str, expected: datetime | None, write: Any) -> bool:
        from redis.exceptions import WatchError

        store = self.store
        timestamp = _timestamp(expected)
        for _ in range(self.ATTEMPTS):
            with store.redis.pipeline() as pipe:
                try:
                    pipe.watch(store.jobs_key, store.run_times_key)
                    if not pipe.hexists(store.jobs_key, job_id):
                        return False
                    score = pipe.zscore(store.run_times_key, job_id)
                    if (score is None) != (timestamp is None) or (
                            score is not None and float(score) != timestamp):
                        return False
                    pipe.multi()
                    write(pipe)
                    pipe.execute()
                    return True
                except WatchError:
                    continue  # some job changed meanwhile (maybe another one): compare again
        return False

    def replace(self, job: Any, expected: datetime | None) -> bool:
        store, state = self.store, self._state(job)
        following = _timestamp(job.next_run_time)

        def write(pipe: Any) -> None:  # what RedisJobStore.update_job writes
            pipe.hset(store.jobs_key, job.id, state)
            if following is None:
                pipe.zrem(store.run_times_key, job.id)
            else:
                pipe.zadd(store.run_times_key, {job.id: following})

        return self._apply(job.id, expected, write)

    def remove(self, job_id: str, expected: datetime | None) -> bool:
        store = self.store

        def write(pipe: Any) -> None:  # what RedisJobStore.remove_job writes
            pipe.hdel(store.jobs_key, job_id)
            pipe.zrem(store.run_times_key, job_id)

        return self._apply(job_id, expected, write)


class _MongoDBCompareAndSet(_CompareAndSet):
    """``update_one``/``delete_one`` with the expected ``next_run_time`` in the filter."""

    def replace(self, job: Any, expected: datetime | None) -> bool:
        from bson.binary import Binary  # type: ignore[import-not-found, unused-ignore]

        changes = {"next_run_time": _timestamp(job.next_run_time),
                   "job_state": Binary(self._state(job))}
        result = self.store.collection.update_one(
            {"_id": job.id, "next_run_time": _timestamp(expected)}, {"$set": changes})
        # An unacknowledged write (w=0) cannot say whether it matched: treated as done.
        return not result.acknowledged or bool(result.matched_count == 1)

    def remove(self, job_id: str, expected: datetime | None) -> bool:
        result = self.store.collection.delete_one(
            {"_id": job_id, "next_run_time": _timestamp(expected)})
        return not result.acknowledged or bool(result.deleted_count == 1)


#: (module, class, compare-and-set) for the stores that can be claimed atomically.
_COMPARE_AND_SET = (
    ("apscheduler.jobstores.sqlalchemy", "SQLAlchemyJobStore", _SQLAlchemyCompareAndSet),
    ("apscheduler.jobstores.redis", "RedisJobStore", _RedisCompareAndSet),
    ("apscheduler.jobstores.mongodb", "MongoDBJobStore", _MongoDBCompareAndSet),
)


def _compare_and_set_for(store: Any) -> _CompareAndSet | None:
    """The compare-and-set for ``store`` (or a subclass), None for stores without one."""
    for module_name, class_name, kind in _COMPARE_AND_SET:
        # A store of that class exists only if its module was imported: never import it here
        # (it would import sqlalchemy, redis or pymongo for nothing).
        module = sys.modules.get(module_name)
        if module is not None and isinstance(store, getattr(module, class_name)):
            return kind(store)
    return None


def _job_label(job: Any) -> str:
    """``'name' (id abc123…)``: a job's name says what it is, its id (often a uuid) which."""
    name = getattr(job, "name", None)
    return f"{name!r} (id {job.id})" if name and name != job.id else repr(job.id)


def _copy(job: Any, func: Any) -> Any:
    """A copy of ``job`` that runs ``func`` (the stored job keeps its own function)."""
    copy = Job.__new__(Job)
    for slot in Job.__slots__:
        if slot != "__weakref__" and hasattr(job, slot):
            setattr(copy, slot, getattr(job, slot))
    copy.func = func
    return copy


def _bind(job: Any, term: Term) -> Any:
    """A copy of ``job`` whose runs belong to ``term``: not started once it has ended,
    :func:`~singleton_jobs.current_term` inside, coroutines cancelled when it ends."""
    func = job.func
    label = _job_label(job)
    identity = term.elector.identity

    def ended(exc: LeadershipLost | None) -> None:
        if exc is None:
            logger.warning("%s: job %s not started: leadership (fencing token %s) ended after "
                           "it was handed to the executor", identity, label, term.fencing_token,
                           extra=term.elector.log_fields())
        else:
            logger.warning("%s: job %s stopped: %s", identity, label, exc,
                           extra=term.elector.log_fields())

    if iscoroutinefunction_partial(func):
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            if not term.active:
                return ended(None)
            try:
                return await run_async_in_term(term, func, args, kwargs)
            except LeadershipLost as exc:
                return ended(exc)

        run: Any = run_async
    else:
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            if not term.active:
                return ended(None)
            try:
                return run_in_term(term, func, args, kwargs)
            except LeadershipLost as exc:
                return ended(exc)

        run = run_sync
    run.__singleton_jobs_func__ = func
    return _copy(job, run)


def _unbind(job: Any) -> Any:
    """The job as it is stored: with its own function, not the run bound to a term."""
    func = getattr(job.func, "__singleton_jobs_func__", None)
    return job if func is None else _copy(job, func)


class _Claim(NamedTuple):
    """A run this replica claimed in the current pass of the scheduler."""

    job: Any                    # the Job object handed to the scheduler
    stored: datetime | None     # the next_run_time the claim wrote
    term: int                   # the leadership term it was claimed in


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
        self._compare_and_set = _compare_and_set_for(jobstore) if self.shared else None
        # Runs claimed in the scheduler's current pass, by job id, and the finished ones the
        # scheduler asked to remove. Only the scheduler's thread touches them, under its
        # job store lock.
        self._claims: dict[str, _Claim] = {}
        self._removals: list[_Claim] = []
        # Due runs by job id and outcome, for the metrics (see observability).
        self.runs: dict[str, GuardCounts] = {}

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
            logger.info("%s: leading job store %r; waking the scheduler", identity, self._alias,
                        extra=self.elector.log_fields())
            code = EVENT_LEADERSHIP_GAINED
        else:
            logger.info("%s: no longer leading job store %r; its jobs stop here (running "
                        "coroutine jobs are cancelled)", identity, self._alias,
                        extra=self.elector.log_fields())
            code = EVENT_LEADERSHIP_LOST
        scheduler._dispatch_event(LeadershipEvent(code, self._alias, identity,
                                                  self.elector.fencing_token))
        if leading:
            scheduler.wakeup()

    # -- what the scheduler asks on every pass ------------------------------------------------

    def get_due_jobs(self, now: datetime) -> list[Any]:
        if not self.shared:
            due = self.jobstore.get_due_jobs(now)
            # Checked after the read, not before: leadership may end while it runs.
            current = self.elector.current_term
            if current is not None:
                self._count(due, "run")
                return [_bind(job, current) for job in due]
            self._skip(due, now)
            return []
        self._finish_pass()
        current = self.elector.current_term
        term = self._term()
        if term is None or current is None or current.fencing_token != term:
            return []
        due = self.jobstore.get_due_jobs(now)  # may be slow: the term may end meanwhile
        claimed = self._claim(due, now, current)
        self._count(claimed, "run")
        return claimed

    def _count(self, jobs: list[Any], outcome: str) -> None:
        for job in jobs:
            counts = self.runs.get(job.id)
            if counts is None:
                counts = self.runs[job.id] = GuardCounts(
                    "job", (self._alias or "?", job.id), ("run", "skipped", "not_claimed"))
            next(counts.tallies[outcome].counter)

    def get_next_run_time(self) -> datetime | None:
        if self.shared:
            # APScheduler asks this right after it handed this store's due runs over: the
            # moment to do the removals it asked for during that pass.
            self._finish_pass()
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

    def _term(self) -> int | None:
        """The current leadership term (the fencing token), or None when not leading.

        Two checks that see the same term bracket a time in which no other replica led: every
        change of holder raises the token. Memory only, no I/O.
        """
        if not self.elector.is_leader:
            return None
        return self.elector.fencing_token

    def _claim(self, due: list[Any], now: datetime, current: Term) -> list[Any]:
        """Move each due job on in the shared store before it runs: at most once, never twice.

        Every store write happens inside the leadership ``term`` the jobs were read in,
        checked before and after it; nothing but memory work separates the last check from
        the moment the scheduler hands the runs to its executors.
        """
        identity = self.elector.identity
        term = current.fencing_token
        claims: list[_Claim] = []
        for index, job in enumerate(due):
            run_times = job._get_run_times(now)
            if not run_times:
                continue
            # The same next fire time the scheduler computes after submitting the run(s).
            # Without one the claim pauses the job (None): a leader killed before the scheduler
            # removes it leaves it paused, not re-run.
            following = job.trigger.get_next_fire_time(run_times[-1], now)
            scheduled = job.next_run_time
            if self._term() != term:
                logger.warning("%s: leadership ended while reading job store %r; its due runs "
                               "(%s first) are left to the next leader", identity, self._alias,
                               job.id, extra=self.elector.log_fields())
                self._count_not_claimed(claims, due[index:], now)
                return []
            job.next_run_time = following
            try:
                claimed = self._write_claim(job, scheduled)
            except JobLookupError:
                claimed = False  # removed by another replica in the meantime
            except Exception as exc:  # noqa: BLE001 - unknown outcome: do not run it
                logger.warning("%s: could not claim job %r (scheduled at %s), not running it: "
                               "%s: %s", identity, job.id, scheduled, type(exc).__name__, exc,
                               extra=self.elector.log_fields())
                claimed = False
            finally:
                job.next_run_time = scheduled
            if self._term() != term:
                logger.warning("%s: leadership ended while claiming job %r (scheduled at %s) "
                               "in job store %r: not running it (at most once)", identity,
                               job.id, scheduled, self._alias, extra=self.elector.log_fields())
                self._count_not_claimed(claims, due[index:], now)
                return []
            if not claimed:
                logger.info("%s: job %r changed in job store %r since it was read; not "
                            "running the run scheduled at %s", identity, job.id, self._alias,
                            scheduled, extra=self.elector.log_fields())
                self._count([job], "not_claimed")
                continue
            claims.append(_Claim(_bind(job, current), following, term))
        self._claims = {claim.job.id: claim for claim in claims}
        return [claim.job for claim in claims]

    def _count_not_claimed(self, claims: list[_Claim], unclaimed: list[Any],
                           now: datetime) -> None:
        """The term ended during a pass: the runs claimed so far are dropped (lost, not run
        twice) and the due ones not yet claimed are left to the next leader."""
        self._count([claim.job for claim in claims], "not_claimed")
        self._count([job for job in unclaimed if job._get_run_times(now)], "not_claimed")

    def _forget(self, job_id: str) -> None:
        """A removed job's counts stop being exported (job ids may be one-off uuids)."""
        counts = self.runs.pop(job_id, None)
        if counts is not None:
            counts.discard()

    def _write_claim(self, job: Any, scheduled: datetime) -> bool:
        if self._compare_and_set is not None:
            return self._compare_and_set.replace(job, scheduled)
        # No compare-and-set: the leadership checks around this write are the only guard.
        self.jobstore.update_job(job)
        return True

    def _finish_pass(self) -> None:
        """Forget this pass's claims; remove the finished jobs the scheduler asked to remove."""
        self._claims = {}
        removals, self._removals = self._removals, []
        for claim in removals:
            job_id = claim.job.id
            try:
                if self._compare_and_set is not None:
                    # Only if the store still holds what the claim wrote: nobody changed it.
                    removed = self._compare_and_set.remove(job_id, claim.stored)
                elif self._term() == claim.term:
                    self.jobstore.remove_job(job_id)
                    removed = True
                else:
                    removed = False
            except JobLookupError:
                removed = True
            except Exception as exc:  # noqa: BLE001 - the job stays paused; nothing runs twice
                logger.warning("%s: could not remove finished job %r from job store %r: %s: %s",
                               self.elector.identity, job_id, self._alias,
                               type(exc).__name__, exc, extra=self.elector.log_fields())
                continue
            if removed:
                self._forget(job_id)
            else:
                logger.info("%s: finished job %r changed in job store %r after its last run "
                            "was claimed; left in place", self.elector.identity, job_id,
                            self._alias, extra=self.elector.log_fields())

    def _skip(self, due: list[Any], now: datetime) -> None:
        """On a follower with a per-replica store: move the schedule on without running."""
        identity = self.elector.identity
        for job in due:
            run_times = job._get_run_times(now)
            if not run_times:
                continue
            logger.info("%s: skipped job %s (scheduled at %s): not the leader", identity,
                        _job_label(job), run_times[-1], extra=self.elector.log_fields())
            self._count([job], "skipped")
            following = job.trigger.get_next_fire_time(run_times[-1], now)
            if following is None:
                self.jobstore.remove_job(job.id)
                self._forget(job.id)
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
        claim = self._claims.pop(job.id, None)
        if claim is not None and claim.job is job:
            # APScheduler's own write after submitting a claimed run: the claim already stored
            # this schedule. Writing it again could set back a newer schedule written by
            # another replica since (if this one stopped leading meanwhile). A trigger with
            # jitter computes a different time on each call; the claimed one is just as valid.
            return
        self.jobstore.update_job(_unbind(job))

    def remove_job(self, job_id: str) -> None:
        claim = self._claims.pop(job_id, None)
        if claim is not None:
            # APScheduler removes a job whose last run it just handed over. Done once the
            # pass's runs are all handed over, and only if nobody changed the job since.
            self._removals.append(claim)
            return
        self.jobstore.remove_job(job_id)
        self._forget(job_id)

    def remove_all_jobs(self) -> None:
        self.jobstore.remove_all_jobs()
        for job_id in list(self.runs):
            self._forget(job_id)
