"""LeaderOnlyJobStore with real APScheduler schedulers, real processes and a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from aps_jobs import record_run, record_run_async
from aps_stores import PlainJobStore, slow_reading
from apscheduler.events import EVENT_JOB_EXECUTED
from apscheduler.executors.pool import ProcessPoolExecutor, ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from conftest import FAST, HERE, Process, cpu_seconds, wait_until
from servers import MYSQL_URL, POSTGRES_URL, require_server

from singleton_jobs import ConfigurationError, Elector, MemoryLeaseStore
from singleton_jobs.apscheduler import (
    EVENT_JOB_SKIPPED_NOT_LEADER,
    EVENT_LEADERSHIP_ALL,
    EVENT_LEADERSHIP_GAINED,
    EVENT_LEADERSHIP_LOST,
    LeaderOnlyJobStore,
)

INTERVAL = 0.5


def bodies(journal: Path) -> list[tuple[int, str, float, float]]:
    """Runs of aps_jobs.record_run: (pid, label, start, end)."""
    if not journal.exists():
        return []
    rows = []
    for line in journal.read_text().splitlines():
        pid, label, start, end = line.split()
        rows.append((int(pid), label, float(start), float(end)))
    return rows


def events(journal: Path, kind: str = "RUN") -> list[tuple[int, str, float]]:
    """Journal lines of scheduler_replica.py: (pid, job id, scheduled time) of one kind."""
    if not journal.exists():
        return []
    rows = []
    for line in journal.read_text().splitlines():
        pid, what, job_id, scheduled = line.split()
        if what == kind:
            rows.append((int(pid), job_id, float(scheduled)))
    return rows


# -- in-process: one scheduler, an elector we control ------------------------------------------


class Leadership:
    """An elector on a memory lease that a test can make lead or follow."""

    def __init__(self) -> None:
        self.store = MemoryLeaseStore()
        self.rival = Elector(self.store, identity="rival", **FAST)  # type: ignore[arg-type]
        self.elector = Elector(self.store, identity="me", **FAST)  # type: ignore[arg-type]

    def follow(self) -> None:
        self.rival.start()
        assert self.rival.wait_for_leadership(5)
        self.elector.start()
        assert wait_until(lambda: self.elector.leader == "rival", 5)

    def lead(self) -> None:
        self.rival.stop()
        self.elector.start()
        assert self.elector.wait_for_leadership(5)

    def stop(self) -> None:
        self.rival.stop()
        self.elector.stop()


@pytest.fixture
def leadership() -> Iterator[Leadership]:
    made = Leadership()
    yield made
    made.stop()


@pytest.fixture
def scheduler() -> Iterator[BackgroundScheduler]:
    made = BackgroundScheduler(timezone=timezone.utc)
    yield made
    if made.running:
        made.shutdown(wait=False)


def test_leader_runs_jobs_and_a_follower_does_not(
        leadership: Leadership, scheduler: BackgroundScheduler, tmp_path: Path) -> None:
    leadership.follow()
    journal = tmp_path / "runs"
    scheduler.add_jobstore(LeaderOnlyJobStore(leadership.elector), "leader")
    scheduler.add_job(record_run, "interval", seconds=0.1, args=[str(journal)], jobstore="leader")
    scheduler.start()
    time.sleep(0.6)
    assert bodies(journal) == []
    leadership.lead()
    assert wait_until(lambda: len(bodies(journal)) >= 3, 5)


def test_leadership_gained_wakes_the_scheduler_within_one_retry_period(
        leadership: Leadership, scheduler: BackgroundScheduler, tmp_path: Path) -> None:
    leadership.follow()
    journal = tmp_path / "runs"
    db = tmp_path / "jobs.sqlite"
    scheduler.add_jobstore(LeaderOnlyJobStore(leadership.elector,
                                              SQLAlchemyJobStore(url=f"sqlite:///{db}")), "leader")
    scheduler.start()
    # Due in the past, in a shared store: a follower sleeps (no next run time) instead of spinning.
    scheduler.add_job("aps_jobs:record_run", "date", args=[str(journal)], jobstore="leader",
                      run_date=datetime.now(timezone.utc) - timedelta(seconds=0.5),
                      misfire_grace_time=60)
    time.sleep(0.5)
    assert bodies(journal) == []
    leadership.rival.stop()
    assert leadership.elector.wait_for_leadership(5)
    gained = time.monotonic()
    assert wait_until(lambda: bodies(journal), 5)
    assert bodies(journal)[0][2] - gained < FAST["retry_period"] + 0.5


def test_follower_of_a_shared_store_never_writes_to_it(
        leadership: Leadership, scheduler: BackgroundScheduler, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, event

    engine = create_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    writer = SQLAlchemyJobStore(engine=engine)
    writer.start(BackgroundScheduler(timezone=timezone.utc), "setup")
    other = BackgroundScheduler(timezone=timezone.utc, jobstores={"default": writer})
    other.add_job("aps_jobs:record_run", "interval", seconds=0.1, args=[str(tmp_path / "x")])
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: statements.append(statement))

    leadership.follow()
    scheduler.add_jobstore(LeaderOnlyJobStore(leadership.elector, SQLAlchemyJobStore(
        engine=engine)), "leader")
    scheduler.start()
    time.sleep(1.0)  # ten due runs go by
    writes = [s for s in statements if s.split()[0].upper() in ("INSERT", "UPDATE", "DELETE")]
    assert writes == []
    assert not (tmp_path / "x").exists()


def test_per_replica_follower_advances_the_schedule_without_running(
        leadership: Leadership, scheduler: BackgroundScheduler, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="singleton_jobs.apscheduler")
    leadership.follow()
    journal = tmp_path / "runs"
    skipped: list[object] = []
    scheduler.add_listener(skipped.append, EVENT_JOB_SKIPPED_NOT_LEADER)
    scheduler.add_jobstore(LeaderOnlyJobStore(leadership.elector, MemoryJobStore()), "leader")
    job = scheduler.add_job(record_run, "interval", seconds=0.2, args=[str(journal)],
                            jobstore="leader", misfire_grace_time=None)
    scheduler.start()
    time.sleep(1.1)
    assert bodies(journal) == []
    assert len(skipped) >= 4
    assert job.id in {getattr(e, "job_id", None) for e in skipped}
    # The log says which job by its name, with the id (a uuid) to tell it apart.
    assert f"skipped job 'record_run' (id {job.id})" in caplog.text
    next_run = scheduler.get_job(job.id).next_run_time
    assert next_run > datetime.now(timezone.utc) - timedelta(seconds=0.05)
    # The new leader continues the schedule: no backlog of the ~5 skipped runs replayed.
    leadership.lead()
    assert wait_until(lambda: bodies(journal), 5)
    time.sleep(0.45)
    assert len(bodies(journal)) <= 4


def test_leadership_events_reach_scheduler_listeners(
        leadership: Leadership, scheduler: BackgroundScheduler) -> None:
    seen: list[int] = []
    scheduler.add_listener(lambda e: seen.append(e.code), EVENT_LEADERSHIP_ALL)
    scheduler.add_jobstore(LeaderOnlyJobStore(leadership.elector), "leader")
    leadership.follow()
    scheduler.start()
    leadership.lead()
    assert wait_until(lambda: seen == [EVENT_LEADERSHIP_GAINED], 5)
    leadership.elector.stop()
    assert wait_until(lambda: seen == [EVENT_LEADERSHIP_GAINED, EVENT_LEADERSHIP_LOST], 5)


def test_running_job_finishes_after_leadership_loss_and_no_new_run_starts(
        leadership: Leadership, scheduler: BackgroundScheduler, tmp_path: Path) -> None:
    journal = tmp_path / "runs"
    leadership.lead()
    scheduler.add_jobstore(LeaderOnlyJobStore(leadership.elector), "leader")
    scheduler.add_job(record_run, "interval", seconds=0.05, args=[str(journal), "slow", 0.8],
                      jobstore="leader", max_instances=1)
    started = threading.Event()
    scheduler.add_listener(lambda e: started.set(), 2**15)  # EVENT_JOB_SUBMITTED
    scheduler.start()
    assert started.wait(5)
    time.sleep(0.1)
    lost_at = time.monotonic()
    leadership.elector.stop()  # leadership lost while the 0.8 s run is in progress
    assert wait_until(lambda: bodies(journal), 5)
    time.sleep(0.5)
    runs = bodies(journal)
    assert len(runs) == 1 and runs[0][3] > lost_at  # it finished, after the loss
    assert not [r for r in runs if r[2] > lost_at]


def test_process_pool_executor_runs_leader_only_jobs(
        leadership: Leadership, tmp_path: Path) -> None:
    journal = tmp_path / "runs"
    leadership.lead()
    pool_scheduler = BackgroundScheduler(timezone=timezone.utc,
                                         executors={"default": ProcessPoolExecutor(1)})
    pool_scheduler.add_jobstore(LeaderOnlyJobStore(leadership.elector), "leader")
    pool_scheduler.add_job(record_run, "interval", seconds=0.2, args=[str(journal)],
                           jobstore="leader")
    pool_scheduler.start()
    try:
        assert wait_until(lambda: bodies(journal), 10)
        assert all(pid != os.getpid() for pid, *_ in bodies(journal))
    finally:
        pool_scheduler.shutdown()


def test_asyncio_scheduler_runs_async_jobs_only_when_leading(
        leadership: Leadership, tmp_path: Path) -> None:
    journal = tmp_path / "runs"
    leadership.follow()

    async def scenario() -> tuple[int, int]:
        scheduler = AsyncIOScheduler(timezone=timezone.utc)
        scheduler.add_jobstore(LeaderOnlyJobStore(leadership.elector), "leader")
        scheduler.add_job(record_run_async, "interval", seconds=0.1, args=[str(journal)],
                          jobstore="leader")
        scheduler.start()
        await asyncio.sleep(0.5)
        as_follower = len(bodies(journal))
        await asyncio.get_running_loop().run_in_executor(None, leadership.lead)
        await asyncio.sleep(0.6)
        scheduler.shutdown(wait=False)
        return as_follower, len(bodies(journal))

    as_follower, total = asyncio.run(scenario())
    assert as_follower == 0
    assert total >= 3
    assert {label for _, label, *_ in bodies(journal)} == {"async"}


def test_shared_store_is_detected_and_can_be_overridden(tmp_path: Path) -> None:
    elector = Elector(MemoryLeaseStore())
    assert not LeaderOnlyJobStore(elector).shared
    sql = SQLAlchemyJobStore(url=f"sqlite:///{tmp_path / 'x.sqlite'}")
    assert LeaderOnlyJobStore(elector, sql).shared
    assert not LeaderOnlyJobStore(elector, sql, shared=False).shared
    assert LeaderOnlyJobStore(elector, MemoryJobStore(), shared=True).shared


def test_wrong_arguments_are_clear_errors() -> None:
    elector = Elector(MemoryLeaseStore())
    with pytest.raises(ConfigurationError, match="needs an Elector"):
        LeaderOnlyJobStore("elector")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="wraps an APScheduler 3 job store"):
        LeaderOnlyJobStore(elector, object())  # type: ignore[arg-type]


def test_follower_scheduler_does_not_spin_on_an_overdue_shared_job(
        leadership: Leadership, scheduler: BackgroundScheduler, tmp_path: Path) -> None:
    leadership.follow()
    store = SQLAlchemyJobStore(url=f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    wrapped = LeaderOnlyJobStore(leadership.elector, store)
    scheduler.add_jobstore(wrapped, "leader")
    scheduler.start()
    scheduler.add_job("aps_jobs:record_run", "date", args=[str(tmp_path / "x")],
                      run_date=datetime.now(timezone.utc) - timedelta(seconds=5),
                      jobstore="leader", misfire_grace_time=3600)
    calls = []
    original = store.get_due_jobs
    store.get_due_jobs = lambda now: calls.append(now) or original(now)  # type: ignore[method-assign]
    time.sleep(1.0)
    assert calls == []  # a follower does not even look at the shared store
    assert wrapped.get_next_run_time() is None


# -- leadership that ends while a replica waits on the store ------------------------------------

TICK = 0.2


class Replica:
    """One in-process replica: an elector on a shared memory lease and a scheduler whose
    "leader" job store wraps ``store``; its executed runs go to ``outcomes`` as (name, time)."""

    def __init__(self, name: str, lease: MemoryLeaseStore, store: Any,
                 outcomes: list[tuple[str, float]], executor: Any = None) -> None:
        self.elector = Elector(lease, identity=name, **FAST)  # type: ignore[arg-type]
        self.store = LeaderOnlyJobStore(self.elector, store)
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)
        if executor is not None:
            self.scheduler.add_executor(executor, "default")
        self.scheduler.add_jobstore(self.store, "leader")
        self.scheduler.add_listener(
            lambda event: outcomes.append((name, event.scheduled_run_time.timestamp())),
            EVENT_JOB_EXECUTED)

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.elector.stop()


@pytest.fixture
def redis_keys() -> Iterator[dict[str, str]]:
    """Keys of their own for a RedisJobStore on the Redis server at 127.0.0.1:6379."""
    import redis  # in the test extra; .ci/run starts the server if it is not running

    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail("no Redis server at 127.0.0.1:6379: start one (.ci/run does)")
    prefix = f"singleton_jobs-test-{uuid.uuid4().hex}"
    keys = {"jobs_key": f"{prefix}.jobs", "run_times_key": f"{prefix}.run_times"}
    yield keys
    client.delete(*keys.values())
    client.close()


@pytest.fixture(params=["sqlalchemy", "redis", "plain"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Any]:
    """Makes job stores that all hold one schedule: ``sqlalchemy`` (an SQLite file), ``redis``
    (the local server) and ``plain`` (the SQLite file through a store without compare-and-set).
    ``shared_store(slow=True)`` makes one whose due-jobs read is held by a ReadGate."""
    kind = request.param
    if kind == "redis":
        from apscheduler.jobstores.redis import RedisJobStore

        keys: dict[str, str] = request.getfixturevalue("redis_keys")

        def make_redis(slow: bool = False) -> Any:
            store_class = slow_reading(RedisJobStore) if slow else RedisJobStore
            return store_class(host="127.0.0.1", port=6379, socket_timeout=10, **keys)

        return make_redis
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"

    def make_sql(slow: bool = False) -> Any:
        if kind == "sqlalchemy":
            return (slow_reading(SQLAlchemyJobStore) if slow else SQLAlchemyJobStore)(url=url)
        return (slow_reading(PlainJobStore) if slow else PlainJobStore)(SQLAlchemyJobStore(url=url))

    return make_sql


def sql_writes_after(store: Any, moment: list[float]) -> list[str]:
    """The INSERT/UPDATE/DELETE statements ``store`` (if SQL) sends once ``moment`` is set."""
    from sqlalchemy import event

    writes: list[str] = []
    engine = getattr(store, "engine", None) or getattr(getattr(store, "inner", None), "engine",
                                                      None)
    if engine is not None:
        def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            if moment and statement.split()[0].upper() in ("INSERT", "UPDATE", "DELETE"):
                writes.append(statement)

        event.listen(engine, "before_cursor_execute", record)
    return writes


def test_replica_whose_leadership_ends_during_a_slow_read_neither_runs_nor_writes(
        tmp_path: Path, shared_store: Callable[..., Any]) -> None:
    lease = MemoryLeaseStore()
    outcomes: list[tuple[str, float]] = []
    slow = shared_store(slow=True)
    stale = Replica("stale", lease, slow, outcomes)
    successor = Replica("successor", lease, shared_store(), outcomes)
    ended: list[float] = []
    stale_writes = sql_writes_after(slow, ended)
    stale.elector.start()
    try:
        assert stale.elector.wait_for_leadership(5)
        stale.scheduler.start()
        successor.scheduler.start()  # follows: the lease is held
        first = datetime.now(timezone.utc) + timedelta(seconds=0.3)
        stale.scheduler.add_job(record_run, "interval", seconds=TICK, start_date=first,
                                args=[str(tmp_path / "runs")], id="tick", jobstore="leader",
                                misfire_grace_time=60, coalesce=False)
        # The stale replica read the job as due; its answer is late, and meanwhile its
        # leadership ends and the successor takes over and runs the job.
        assert slow.gate.held.wait(10)
        ended.append(time.monotonic())
        stale.elector.stop()
        assert successor.elector.wait_for_leadership(5)
        assert wait_until(lambda: len(outcomes) >= 2, 10)
        slow.gate.released.set()  # the answer arrives: the run it names was already run
        stale.scheduler.shutdown(wait=True)  # waits for that pass and anything it started
        ran = len(outcomes)
        # Long enough for the successor to repeat a run if a stale schedule had been written.
        assert wait_until(lambda: len(outcomes) >= ran + 3, 10)
    finally:
        slow.gate.released.set()
        stale.stop()
        successor.stop()
    assert [t for name, t in outcomes if name == "stale"] == []
    times = sorted(t for _, t in outcomes)
    assert len(times) == len(set(times)), "a scheduled run time was executed twice"
    assert times[0] == pytest.approx(first.timestamp(), abs=0.001)
    stored = shared_store().lookup_job("tick").next_run_time.timestamp()
    assert stored > times[-1], "the schedule was set back"
    assert stale_writes == []


@pytest.mark.parametrize("shared_store", ["sqlalchemy", "redis"], indirect=True)
def test_job_paused_elsewhere_during_a_slow_read_is_not_run_and_stays_paused(
        tmp_path: Path, shared_store: Callable[..., Any]) -> None:
    # The leader keeps leading; its read is stale because someone paused the job on another
    # replica meanwhile. The compare-and-set claim sees that: no run, and the pause stands.
    lease = MemoryLeaseStore()
    outcomes: list[tuple[str, float]] = []
    slow = shared_store(slow=True)
    leader = Replica("leader", lease, slow, outcomes)
    other = Replica("other", lease, shared_store(), outcomes)
    leader.elector.start()
    try:
        assert leader.elector.wait_for_leadership(5)
        leader.scheduler.start()
        other.scheduler.start()
        leader.scheduler.add_job(record_run, "interval", seconds=TICK,
                                 start_date=datetime.now(timezone.utc) + timedelta(seconds=0.3),
                                 args=[str(tmp_path / "runs")], id="tick", jobstore="leader",
                                 misfire_grace_time=60, coalesce=False)
        assert slow.gate.held.wait(10)
        other.scheduler.pause_job("tick")
        slow.gate.released.set()
        leader.scheduler.shutdown(wait=True)  # waits for that pass and anything it started
        assert leader.elector.is_leader
    finally:
        slow.gate.released.set()
        leader.stop()
        other.stop()
    assert outcomes == []
    assert shared_store().lookup_job("tick").next_run_time is None


def test_scheduler_bookkeeping_after_leadership_ended_does_not_set_the_schedule_back(
        tmp_path: Path, shared_store: Callable[..., Any]) -> None:
    # APScheduler writes a job's next run time back itself after handing a run over. If the
    # replica stopped leading in between and the successor moved the schedule on, that write
    # must not set it back (the successor would repeat a run).
    lease = MemoryLeaseStore()
    outcomes: list[tuple[str, float]] = []
    ended: list[float] = []
    successor_store = shared_store()

    class LeadershipEndsAfterHandOver(ThreadPoolExecutor):  # type: ignore[misc]
        def submit_job(self, job: Any, run_times: list[datetime]) -> None:
            super().submit_job(job, run_times)
            if not ended:
                ended.append(time.monotonic())
                stale.elector.stop()
                assert wait_until(lambda: len([o for o in outcomes if o[0] == "successor"])
                                  >= 2, 10)

    stale_store = shared_store()
    stale_writes = sql_writes_after(stale_store, ended)
    stale = Replica("stale", lease, stale_store, outcomes, LeadershipEndsAfterHandOver())
    successor = Replica("successor", lease, successor_store, outcomes)
    stale.elector.start()
    try:
        assert stale.elector.wait_for_leadership(5)
        stale.scheduler.start()
        successor.scheduler.start()
        first = datetime.now(timezone.utc) + timedelta(seconds=0.3)
        stale.scheduler.add_job(record_run, "interval", seconds=TICK, start_date=first,
                                args=[str(tmp_path / "runs")], id="tick", jobstore="leader",
                                misfire_grace_time=60, coalesce=False)
        assert wait_until(lambda: ended, 10)
        stale.scheduler.shutdown(wait=True)  # its pass, bookkeeping included, is over
        ran = len(outcomes)
        assert wait_until(lambda: len(outcomes) >= ran + 3, 10)
    finally:
        stale.stop()
        successor.stop()
    # The stale replica ran the first run: it led when it handed that run over.
    assert [t for name, t in outcomes if name == "stale"] == [
        pytest.approx(first.timestamp(), abs=0.001)]
    times = sorted(t for _, t in outcomes)
    assert len(times) == len(set(times)), "a scheduled run time was executed twice"
    stored = shared_store().lookup_job("tick").next_run_time.timestamp()
    assert stored > times[-1], "the schedule was set back"
    assert stale_writes == []


@pytest.mark.parametrize("kind", ["sqlalchemy", "plain"])
def test_run_claimed_as_leadership_ends_is_not_run_by_anyone(tmp_path: Path, kind: str) -> None:
    from sqlalchemy import event

    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    lease = MemoryLeaseStore()
    outcomes: list[tuple[str, float]] = []
    stale_store: Any = SQLAlchemyJobStore(url=url)
    if kind == "plain":
        stale_store = PlainJobStore(stale_store)
    stale = Replica("stale", lease, stale_store, outcomes)
    successor = Replica("successor", lease, SQLAlchemyJobStore(url=url), outcomes)
    ended: list[bool] = []

    def end_leadership(*ignored: Any) -> None:
        # The claim has just been written, and the replica's leadership ends before it can
        # hand the run to an executor (its renew deadline passes during a slow write).
        if not ended:
            ended.append(True)
            stale.elector.stop()

    if kind == "plain":
        stale_store.after_update = end_leadership
    else:
        event.listen(stale_store.engine, "after_cursor_execute",
                     lambda conn, cursor, statement, *rest: statement.startswith("UPDATE")
                     and end_leadership())
    stale.elector.start()
    try:
        assert stale.elector.wait_for_leadership(5)
        stale.scheduler.start()
        successor.scheduler.start()
        first = datetime.now(timezone.utc) + timedelta(seconds=0.3)
        stale.scheduler.add_job(record_run, "interval", seconds=TICK, start_date=first,
                                args=[str(tmp_path / "runs")], id="tick", jobstore="leader",
                                misfire_grace_time=60, coalesce=False)
        assert wait_until(lambda: ended, 10)
        assert successor.elector.wait_for_leadership(5)
        assert wait_until(lambda: len(outcomes) >= 3, 10)
    finally:
        stale.stop()
        successor.stop()
    assert [t for name, t in outcomes if name == "stale"] == []
    times = sorted(t for _, t in outcomes)
    assert len(times) == len(set(times)), "a scheduled run time was executed twice"
    # At most once: the claimed run is lost, not run late by the replica that lost leadership.
    assert all(abs(t - first.timestamp()) > 0.001 for t in times)
    assert times[0] >= first.timestamp() + TICK - 0.001


def test_per_replica_leader_whose_leadership_ends_during_the_read_skips_the_run(
        leadership: Leadership, scheduler: BackgroundScheduler, tmp_path: Path) -> None:
    journal = tmp_path / "runs"
    leadership.lead()
    elector = leadership.elector

    class LeadershipEndsDuringRead(MemoryJobStore):  # type: ignore[misc]
        def get_due_jobs(self, now: datetime) -> list[Any]:
            jobs: list[Any] = super().get_due_jobs(now)
            if jobs and elector.running:
                elector.stop()
            return jobs

    skipped: list[Any] = []
    scheduler.add_listener(skipped.append, EVENT_JOB_SKIPPED_NOT_LEADER)
    scheduler.add_jobstore(LeaderOnlyJobStore(elector, LeadershipEndsDuringRead()), "leader")
    scheduler.add_job(record_run, "interval", seconds=TICK, args=[str(journal)],
                      jobstore="leader",
                      next_run_time=datetime.now(timezone.utc) + timedelta(seconds=0.2))
    scheduler.start()
    assert wait_until(lambda: skipped, 5)
    scheduler.shutdown(wait=True)
    assert bodies(journal) == []


# -- real processes -------------------------------------------------------------------------


def children(parents: set[int]) -> set[int]:
    """Pids of the live processes whose parent is in ``parents`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) in parents:
                found.add(int(stat.parent.name))
    return found


class Fleet:
    def __init__(self, spawn: Callable[..., Process], tmp_path: Path, *extra: str) -> None:
        self.spawn = spawn
        self.tmp_path = tmp_path
        self.journal = tmp_path / "journal"
        self.extra = extra
        self.replicas: dict[int, Process] = {}

    def start(self, count: int = 1, *more: str) -> list[Process]:
        started = []
        for _ in range(count):
            process = self.spawn(
                str(HERE / "scheduler_replica.py"), str(self.tmp_path / "lease"),
                str(self.journal), "--db", str(self.tmp_path / "jobs.sqlite"), *self.extra,
                *more)
            assert process.wait_for_line(lambda line: line.startswith("STARTED"), 30), \
                process.output()
            self.replicas[process.pid] = process
            started.append(process)
        return started

    def shut_down(self) -> None:
        """Stop every replica with SIGTERM, as a deployment would, then kill what is left of
        their process pools: workers forked from a replica outlive it if it is killed."""
        workers = children(set(self.replicas))
        for process in self.replicas.values():
            process.signal(signal.SIGCONT)
            process.signal(signal.SIGTERM)
        for process in self.replicas.values():
            try:
                process.popen.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        for pid in workers | children(set(self.replicas)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def report(self) -> str:
        """What the replicas printed, the lease and the journal: for failure messages."""
        lease = self.tmp_path / "lease"
        parts = [f"--- replica {pid}:\n{process.output()}"
                 for pid, process in self.replicas.items()]
        parts.append(f"--- lease:\n{lease.read_text() if lease.exists() else '(none)'}")
        parts.append(f"--- journal:\n{self.journal.read_text() if self.journal.exists() else ''}")
        return "\n".join(parts)

    def runs(self, job_id: str = "leader-job") -> list[tuple[int, str, float]]:
        return sorted((r for r in events(self.journal) if r[1] == job_id), key=lambda r: r[2])

    def leader_pid(self, since: float = 0.0, other_than: int = 0) -> int:
        found: list[int] = []

        def check() -> bool:
            found[:] = [pid for pid, _, scheduled in self.runs()
                        if scheduled > since and pid != other_than]
            return bool(found)

        assert wait_until(check, 20), "no replica ran the leader-only job"
        return found[0]


def assert_each_run_once_and_count_matches_one_scheduler(runs: list[tuple[int, str, float]],
                                                         gap_runs: int) -> None:
    times = [scheduled for _, _, scheduled in runs]
    assert len(times) == len(set(times)), "a scheduled run time was executed twice"
    possible = round((times[-1] - times[0]) / INTERVAL) + 1
    assert possible - gap_runs <= len(times) <= possible


@pytest.mark.parametrize("store", ["sqlalchemy", "memory"])
def test_three_replicas_run_each_scheduled_time_once_and_fail_over(
        spawn: Callable[..., Process], tmp_path: Path, store: str) -> None:
    fleet = Fleet(spawn, tmp_path, "--store", store)
    fleet.start(1)
    first = fleet.leader_pid()
    fleet.start(2)
    time.sleep(2.0)
    killed_at = time.time()
    fleet.replicas[first].signal(signal.SIGKILL)
    successor = fleet.leader_pid(since=killed_at, other_than=first)
    time.sleep(2.0)
    runs = fleet.runs()
    assert {pid for pid, _, t in runs if t > killed_at} == {successor}
    assert {pid for pid, _, t in runs if t <= killed_at - 0.2} == {first}
    # The failover takes about one lease (2 s) + a retry: up to ~6 runs of 0.5 s fall in it.
    assert_each_run_once_and_count_matches_one_scheduler(runs, gap_runs=8)
    # The successor never replays the gap as a burst: consecutive runs are an interval apart.
    after = [t for pid, _, t in runs if pid == successor]
    assert all(b - a >= INTERVAL - 0.01 for a, b in zip(after, after[1:]))


@pytest.mark.parametrize("database", ["postgresql", "mysql"])
def test_three_replicas_share_one_database_url_for_jobs_and_lease(
        spawn: Callable[..., Process], tmp_path: Path, database: str) -> None:
    """The documented set-up: SQLAlchemyJobStore and SQLElector on one DATABASE_URL."""
    url = {"postgresql": POSTGRES_URL, "mysql": MYSQL_URL}[database]
    require_server(url)
    table = f"apscheduler_jobs_{time.time_ns()}"
    fleet = Fleet(spawn, tmp_path, "--store", "sqlalchemy", "--database-url", url,
                  "--jobs-table", table)
    try:
        fleet.start(3)
        first = fleet.leader_pid()
        time.sleep(1.5)
        killed_at = time.time()
        fleet.replicas[first].signal(signal.SIGKILL)
        successor = fleet.leader_pid(since=killed_at, other_than=first)
        time.sleep(1.5)
        runs = fleet.runs()
        assert {pid for pid, _, t in runs if t > killed_at} == {successor}
        assert_each_run_once_and_count_matches_one_scheduler(runs, gap_runs=8)
    finally:
        fleet.shut_down()
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def test_per_replica_jobs_run_everywhere_and_leader_jobs_in_one_place(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    fleet = Fleet(spawn, tmp_path, "--store", "memory", "--per-replica-job")
    fleet.start(3)
    time.sleep(3.0)
    local = {pid for pid, _, _ in fleet.runs("local-job")}
    leader = {pid for pid, _, _ in fleet.runs("leader-job")}
    assert local == set(fleet.replicas)
    assert len(leader) == 1


def test_blocking_scheduler_replicas_elect_one_runner(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    fleet = Fleet(spawn, tmp_path, "--store", "memory", "--blocking")
    fleet.start(2)
    first = fleet.leader_pid()
    time.sleep(1.0)
    stopped_at = time.time()
    fleet.replicas[first].signal(signal.SIGTERM)  # graceful: the lease is released
    assert fleet.replicas[first].popen.wait(15) == 0
    successor = fleet.leader_pid(since=stopped_at, other_than=first)
    assert successor != first


def test_follower_scheduler_uses_almost_no_cpu(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    fleet = Fleet(spawn, tmp_path, "--store", "sqlalchemy", "--lease-duration", "15",
                  "--renew-deadline", "10", "--retry-period", "2")
    fleet.start(1)
    leader = fleet.leader_pid()
    follower = fleet.start(1)[0]
    time.sleep(1.0)
    before = cpu_seconds(follower.pid), cpu_seconds(leader)
    time.sleep(10.0)
    used = cpu_seconds(follower.pid) - before[0], cpu_seconds(leader) - before[1]
    assert used[0] < 0.2, f"follower used {used[0]:.2f} CPU seconds in 10 s"
    assert {pid for pid, _, _ in fleet.runs()} == {leader}


def test_jobs_added_on_a_follower_are_run_by_the_leader(
        leadership: Leadership, tmp_path: Path) -> None:
    leadership.lead()
    db = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    leader = BackgroundScheduler(timezone=timezone.utc)
    leader.add_jobstore(LeaderOnlyJobStore(leadership.elector, SQLAlchemyJobStore(url=db)),
                        "leader")
    leader.start()
    follower_elector = Elector(leadership.store, identity="other", **FAST)  # type: ignore[arg-type]
    follower = BackgroundScheduler(timezone=timezone.utc)
    follower.add_jobstore(LeaderOnlyJobStore(follower_elector, SQLAlchemyJobStore(url=db)),
                          "leader")
    follower.start()
    try:
        time.sleep(0.3)
        journal = tmp_path / "runs"
        follower.add_job("aps_jobs:record_run", "date", args=[str(journal)], jobstore="leader",
                         run_date=datetime.now(timezone.utc))
        added = time.monotonic()
        assert wait_until(lambda: bodies(journal), 5)
        start = bodies(journal)[0][2]
        assert start - added < FAST["retry_period"] + 0.5
    finally:
        follower.shutdown(wait=False)
        leader.shutdown(wait=False)
        follower_elector.stop()



@pytest.mark.parametrize(("coalesce", "grace", "outage"), [(False, 30, 0), (True, 30, 0),
                                                           (False, 1, 1.5)])
def test_runs_due_during_a_failover_follow_coalesce_and_misfire_rules(
        tmp_path: Path, coalesce: bool, grace: int, outage: float) -> None:
    """The successor treats the failover gap exactly as one scheduler treats a pause."""
    from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED

    lease = MemoryLeaseStore()
    db = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    outcomes: list[tuple[str, str, float]] = []
    replicas = []
    for name in ("first", "second"):
        elector = Elector(lease, identity=name, **FAST)  # type: ignore[arg-type]
        scheduler = BackgroundScheduler(timezone=timezone.utc)
        scheduler.add_jobstore(LeaderOnlyJobStore(elector, SQLAlchemyJobStore(url=db)), "leader")
        scheduler.add_listener(
            lambda e, name=name: outcomes.append(
                (name, "run" if e.code == EVENT_JOB_EXECUTED else "missed",
                 e.scheduled_run_time.timestamp())),
            EVENT_JOB_EXECUTED | EVENT_JOB_MISSED)
        replicas.append((elector, scheduler))
    (first, first_scheduler), (second, second_scheduler) = replicas
    first.start()
    assert first.wait_for_leadership(5)
    first_scheduler.start()
    first_scheduler.add_job(record_run, "interval", seconds=0.1, args=[str(tmp_path / "runs")],
                            id="tick", jobstore="leader", coalesce=coalesce,
                            misfire_grace_time=grace)
    try:
        assert wait_until(lambda: len(outcomes) >= 5, 5)
        first_scheduler.shutdown(wait=True)       # the leader dies: nothing releases the lease
        first.stop(release=False)
        died = max(t for _, _, t in outcomes)
        time.sleep(outage)                        # no other replica is up for a while
        second_scheduler.start()
        assert second.wait_for_leadership(5)
        assert wait_until(lambda: any(n == "second" and t > died + 1 for n, _, t in outcomes), 5)
    finally:
        second_scheduler.shutdown(wait=True)
        second.stop()
    times = [t for _, kind, t in outcomes if kind == "run"]
    assert len(times) == len(set(times)), "a scheduled time ran twice"
    gap = sorted(t for name, _, t in outcomes if name == "second")
    gap = [t for t in gap if t < gap[0] + 0.35]  # the backlog handled at takeover
    by_time = {t: kind for name, kind, t in outcomes if name == "second"}
    if coalesce:
        # All the missed times become one run: the next outcome is a whole interval later.
        assert by_time[gap[0]] == "run" and gap[1] - gap[0] >= 0.09
    elif outage == 0:
        # Every missed time runs once, in order, none skipped.
        all_times = sorted(set(times))
        assert all(b - a < 0.11 for a, b in zip(all_times, all_times[1:]))
    else:
        # Runs more than the grace time late are reported as missed instead of run.
        kinds = [kind for t, kind in sorted(by_time.items())]
        assert kinds[:3] == ["missed"] * 3 and "run" in kinds


def test_leader_killed_after_handing_a_run_over_is_not_repeated_by_its_successor(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    # Without coalescing and with a long grace time, the successor would run every stored run
    # time it finds overdue: the run the dead leader had claimed must not be among them.
    fleet = Fleet(spawn, tmp_path, "--store", "sqlalchemy", "--grace", "60", "--no-coalesce")
    doomed = spawn(str(HERE / "scheduler_replica.py"), str(tmp_path / "lease"),
                   str(fleet.journal), "--db", str(tmp_path / "jobs.sqlite"), "--grace", "60",
                   "--no-coalesce", "--die-on-submit")
    assert doomed.popen.wait(30) == 3, doomed.output()
    (claimed,) = [t for _, job, t in events(fleet.journal, "SUBMITTED") if job == "leader-job"]
    fleet.start(1)
    assert wait_until(lambda: len(fleet.runs()) >= 3, 20)
    runs = [t for _, _, t in fleet.runs()]
    assert claimed not in runs
    assert min(runs) == pytest.approx(claimed + INTERVAL, abs=0.01)


def journal_lines(journal: Path, kind: str) -> list[tuple[int, float]]:
    """(pid, value) of the scheduler_replica.py journal lines of one kind (PAUSED, HANDED)."""
    return [(pid, value) for pid, _, value in events(journal, kind)]


def assert_every_scheduled_time_ran_once(fleet: Fleet) -> None:
    """Each scheduled time at most once, and none skipped between the first and the last."""
    times = [t for _, _, t in fleet.runs()]
    assert len(times) == len(set(times)), f"a scheduled time ran twice\n{fleet.report()}"
    steps = [round((b - a) / INTERVAL, 3) for a, b in zip(times, times[1:])]
    assert set(steps) <= {1.0}, f"runs missing: {steps}\n{fleet.report()}"


def test_replica_paused_while_reading_due_jobs_does_not_run_them_after_it_continues(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    # No coalescing, a long grace time: the successor runs every overdue time once, so a run
    # repeated by the paused replica, or by the successor after a stale write, shows twice.
    fleet = Fleet(spawn, tmp_path, "--store", "sqlalchemy", "--grace", "60", "--no-coalesce")
    (paused,) = fleet.start(1, "--pause-after-read", "3")
    assert fleet.leader_pid() == paused.pid
    (successor,) = fleet.start(1)
    assert wait_until(lambda: journal_lines(fleet.journal, "PAUSED"), 30), fleet.report()
    ((_, read_at),) = journal_lines(fleet.journal, "PAUSED")
    # It stopped between reading the run at read_at and claiming it. The successor takes over
    # and runs it, and the next ones.
    assert wait_until(lambda: [t for pid, _, t in fleet.runs()
                               if pid == successor.pid and t > read_at + INTERVAL], 30), \
        fleet.report()
    paused.signal(signal.SIGCONT)
    assert wait_until(lambda: journal_lines(fleet.journal, "HANDED"), 30), fleet.report()
    assert journal_lines(fleet.journal, "HANDED") == [(paused.pid, 0)]
    resumed_at = max(t for _, _, t in fleet.runs())
    # Long enough for the successor to repeat a run, had a stale schedule been written.
    assert wait_until(lambda: max(t for _, _, t in fleet.runs()) >= resumed_at + 3 * INTERVAL,
                      30), fleet.report()
    runs = fleet.runs()
    assert [t for pid, _, t in runs if pid == paused.pid and t >= read_at] == []
    assert [pid for pid, _, t in runs if t == read_at] == [successor.pid]
    assert_every_scheduled_time_ran_once(fleet)


def test_process_pool_runs_each_scheduled_time_once_and_its_forked_workers_never_lead(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    from singleton_jobs import FileLeaseStore

    # Several instances may overlap, so that a catch-up batch still running in the pool does
    # not make APScheduler skip the next run (its max_instances rule, not a failover effect).
    fleet = Fleet(spawn, tmp_path, "--store", "sqlalchemy", "--grace", "60", "--no-coalesce",
                  "--executor", "processpool-fork", "--max-instances", "4")
    holders: list[tuple[float, str]] = []  # (monotonic time, lease holder) as seen from outside
    watching = threading.Event()

    def watch_lease() -> None:
        store = FileLeaseStore(tmp_path / "lease")
        while not watching.is_set():
            snapshot = store.get(timeout=5)
            if snapshot is not None and (not holders or holders[-1][1] != snapshot[0].holder):
                holders.append((time.monotonic(), snapshot[0].holder))
            time.sleep(0.005)

    (first,) = fleet.start(1, "--pause-after-read", "4")
    watcher = threading.Thread(target=watch_lease, daemon=True)
    watcher.start()
    try:
        assert fleet.leader_pid() == first.pid
        fleet.start(2)
        # The leader stops itself right after a read, with its pool workers (forked from it,
        # elector included) still alive: they must not keep its lease or take it back.
        assert wait_until(lambda: journal_lines(fleet.journal, "PAUSED"), 30), fleet.report()
        ((_, read_at),) = journal_lines(fleet.journal, "PAUSED")
        successor = fleet.leader_pid(since=read_at, other_than=first.pid)
        assert wait_until(lambda: max(t for _, _, t in fleet.runs()) > read_at + 3 * INTERVAL,
                          30), fleet.report()
        continued = time.monotonic()
        first.signal(signal.SIGCONT)
        assert wait_until(lambda: journal_lines(fleet.journal, "HANDED"), 30), fleet.report()
        assert journal_lines(fleet.journal, "HANDED") == [(first.pid, 0)]
        # A graceful failover too: the successor shuts its scheduler and its pool down.
        stopped_at = max(t for _, _, t in fleet.runs())
        fleet.replicas[successor].signal(signal.SIGTERM)
        assert fleet.replicas[successor].popen.wait(30) == 0
        fleet.leader_pid(since=stopped_at, other_than=successor)
        last = max(t for _, _, t in fleet.runs())
        assert wait_until(lambda: max(t for _, _, t in fleet.runs()) >= last + 2 * INTERVAL,
                          30), fleet.report()
    finally:
        watching.set()
        watcher.join(10)
        fleet.shut_down()
    runs = fleet.runs()
    assert_every_scheduled_time_ran_once(fleet)
    # The stopped leader ran nothing it had read (it may lead again after the second failover).
    assert [t for pid, _, t in runs if pid == first.pid and read_at <= t <= stopped_at] == []
    # Every body ran in a pool worker (not in a replica), forked from a replica.
    replicas = set(fleet.replicas)
    assert wait_until(lambda: len(bodies(Path(f"{fleet.journal}.bodies"))) >= len(runs), 10)
    workers = bodies(Path(f"{fleet.journal}.bodies"))
    assert not {pid for pid, *_ in workers} & replicas
    assert {int(label.rsplit("@", 1)[1]) for _, label, *_ in workers} <= replicas
    # Only replicas ever held the lease (a worker would write its parent's identity), and once
    # another replica took it over from the stopped leader, the stopped leader's identity (the
    # one its workers inherited) never came back before it continued.
    assert {holder for _, holder in holders} <= {f"replica-{pid}" for pid in replicas} | {""}
    until_continued = [holder for at, holder in holders if at < continued]
    assert until_continued[0] == f"replica-{first.pid}"
    assert f"replica-{successor}" in until_continued
    assert f"replica-{first.pid}" not in until_continued[1:]
