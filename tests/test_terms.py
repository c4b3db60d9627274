"""Job bodies that outlive their leadership: terms, ``current_term()``, cancellation of
``async`` bodies, and releases that wait for running bodies."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import Process, wait_until
from servers import REDIS_URL, TcpProxy, require_server

from singleton_jobs import (
    Elector,
    LeadershipLost,
    LeaseRecord,
    LeaseStoreError,
    MemoryLeaseStore,
    SingletonJobsError,
    Term,
    current_term,
    leader_only,
)
from singleton_jobs.backends import LeaseStore, Snapshot, Version

HERE = Path(__file__).resolve().parent
TIMINGS = {"lease_duration": 1.0, "renew_deadline": 0.5, "retry_period": 0.05}


class CutOffStore(LeaseStore):
    """A view of a shared memory lease that can be cut off: then every call hangs for its
    whole timeout and fails, like a store behind a partitioned network."""

    def __init__(self, shared: MemoryLeaseStore) -> None:
        self.shared = shared
        self.reachable = threading.Event()
        self.reachable.set()
        self.calls_hanging = 0

    @property
    def name(self) -> str:
        return self.shared.name

    def _reach(self, timeout: float) -> None:
        if not self.reachable.is_set():
            self.calls_hanging += 1
            try:
                self.reachable.wait(timeout)
            finally:
                self.calls_hanging -= 1
            raise LeaseStoreError(f"no answer within {timeout}s")

    def get(self, *, timeout: float) -> Snapshot | None:
        self._reach(timeout)
        return self.shared.get(timeout=timeout)

    def create(self, record: LeaseRecord, *, timeout: float) -> Version | None:
        self._reach(timeout)
        return self.shared.create(record, timeout=timeout)

    def update(self, record: LeaseRecord, version: Version, *, timeout: float) -> Version | None:
        self._reach(timeout)
        return self.shared.update(record, version, timeout=timeout)

    def transitions_floor(self, *, timeout: float) -> int | None:
        self._reach(timeout)
        return self.shared.transitions_floor(timeout=timeout)


@pytest.fixture
def shared() -> MemoryLeaseStore:
    return MemoryLeaseStore()


@pytest.fixture
def cut_off(shared: MemoryLeaseStore) -> CutOffStore:
    return CutOffStore(shared)


@pytest.fixture
def leader(cut_off: CutOffStore) -> Iterator[Elector]:
    elector = Elector(cut_off, identity="leader", **TIMINGS).start()  # type: ignore[arg-type]
    assert elector.wait_for_leadership(5)
    yield elector
    cut_off.reachable.set()
    elector.stop()


class Successor:
    """A second replica on the same lease that notes when it starts leading."""

    def __init__(self, shared: MemoryLeaseStore) -> None:
        self.led_at: float | None = None
        self.elector = Elector(shared, identity="successor", on_started_leading=self._led,
                               **TIMINGS)  # type: ignore[arg-type]

    def _led(self) -> None:
        self.led_at = time.monotonic()


@pytest.fixture
def successor(shared: MemoryLeaseStore, leader: Elector) -> Iterator[Successor]:
    replica = Successor(shared)
    replica.elector.start()
    yield replica
    replica.elector.stop()


def test_current_term_outside_a_guarded_body_says_where_it_works() -> None:
    with pytest.raises(SingletonJobsError, match=r"only available inside a guarded body.*"
                                                 r"@leader_only.*elector\.current_term"):
        current_term()


def test_a_guarded_body_runs_in_the_current_term(leader: Elector) -> None:
    seen: list[Term] = []

    @leader_only(leader)
    def body() -> int:
        term = current_term()
        seen.append(term)
        term.check()
        return term.fencing_token

    assert body() == leader.fencing_token
    term = seen[0]
    assert term is leader.current_term and term.active and not term.lost.is_set()
    assert term.elector is leader and 0 < term.remaining() <= TIMINGS["renew_deadline"]
    assert term.running_bodies() == 0
    assert re.fullmatch(r"<Term \d+ of 'leader' on memory:0x[0-9a-f]+ \(active\)>", repr(term))
    with pytest.raises(SingletonJobsError):
        current_term()  # the body's term does not leak out of it


def test_a_cut_off_leader_sees_its_term_end_by_the_clock_before_anyone_can_lead(
        leader: Elector, cut_off: CutOffStore, successor: Successor,
        caplog: pytest.LogCaptureFixture) -> None:
    events: dict[str, float] = {}

    @leader_only(leader, default="stopped")
    def batches() -> str:
        term = current_term()
        cut_off.reachable.clear()  # the network goes away in the middle of the body
        events["cut"] = time.monotonic()
        while not term.lost.wait(5):
            pass
        events["lost"] = time.monotonic()
        events["hanging"] = cut_off.calls_hanging
        term.check()  # raises LeadershipLost: the guard turns it into a clean stop
        return "finished"

    with caplog.at_level(logging.WARNING):
        assert batches() == "stopped"
    # The term ended by the clock, within one renew deadline of the cut (plus slack), while
    # the election thread was still waiting for its store call: nobody told the body.
    assert events["lost"] - events["cut"] < TIMINGS["renew_deadline"] + 0.3
    assert events["hanging"] == 1
    assert "batches stopped" in caplog.text and "ended; stop here" in caplog.text
    assert wait_until(lambda: successor.led_at is not None, 10)
    assert successor.led_at is not None and successor.led_at > events["lost"]


def test_an_async_body_is_cancelled_when_its_term_ends_even_if_the_store_hangs(
        leader: Elector, cut_off: CutOffStore, successor: Successor,
        caplog: pytest.LogCaptureFixture) -> None:
    events: dict[str, float] = {}

    @leader_only(leader, default="cancelled")
    async def report() -> str:
        cut_off.reachable.clear()
        events["cut"] = time.monotonic()
        try:
            await asyncio.sleep(60)
        finally:
            events["end"] = time.monotonic()
            events["hanging"] = cut_off.calls_hanging
        return "finished"

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(report()) == "cancelled"
    assert events["end"] - events["cut"] < TIMINGS["renew_deadline"] + 0.3
    assert events["hanging"] == 1  # the election thread had not noticed anything yet
    assert re.search(r"report stopped: leader: cancelled the body: leadership of memory:\S+ "
                     r"\(fencing token \d+\) ended", caplog.text)
    assert wait_until(lambda: successor.led_at is not None, 10)
    assert successor.led_at is not None and successor.led_at > events["end"]


def test_an_async_body_ends_with_leadership_lost_when_asked_to_raise(
        leader: Elector, cut_off: CutOffStore) -> None:
    @leader_only(leader, raise_on_skip=True)
    async def report() -> None:
        cut_off.reachable.clear()
        await asyncio.sleep(60)

    with pytest.raises(LeadershipLost, match="cancelled the body"):
        asyncio.run(report())


def test_cancel_on_loss_false_lets_an_async_body_run_to_its_end(
        leader: Elector, cut_off: CutOffStore) -> None:
    @leader_only(leader, cancel_on_loss=False)
    async def report() -> bool:
        term = current_term()
        cut_off.reachable.clear()
        while term.active:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        return True

    assert asyncio.run(report()) is True


def test_a_step_down_the_election_thread_sees_cancels_at_once(leader: Elector,
                                                             shared: MemoryLeaseStore) -> None:
    ended: list[float] = []

    @leader_only(leader, default="cancelled")
    async def report() -> str:
        try:
            await asyncio.sleep(60)
        finally:
            ended.append(time.monotonic())
        return "finished"

    async def main() -> str:
        task = asyncio.ensure_future(report())
        await asyncio.sleep(0.05)
        # An operator hands the lease to someone else: the next renew sees it taken.
        record, version = shared.get()  # type: ignore[misc]
        shared.update(record._replace(holder="operator", transitions=record.transitions + 1),
                      version)
        taken = time.monotonic()
        result = await task
        assert ended[0] - taken < TIMINGS["retry_period"] + 0.3  # well before renew_deadline
        return result

    assert asyncio.run(main()) == "cancelled"


def test_a_cancellation_from_elsewhere_is_not_taken_for_a_lost_term(leader: Elector) -> None:
    @leader_only(leader, default="cancelled")
    async def report() -> None:
        await asyncio.sleep(60)

    async def main() -> None:
        task = asyncio.ensure_future(report())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert leader.is_leader

    asyncio.run(main())


def test_nested_guarded_bodies_are_cancelled_once_and_the_outer_one_stops(
        leader: Elector, cut_off: CutOffStore) -> None:
    steps: list[str] = []

    @leader_only(leader, default="inner skipped")
    async def inner() -> str:
        cut_off.reachable.clear()
        await asyncio.sleep(60)
        return "inner finished"

    @leader_only(leader, default="outer cancelled")
    async def outer() -> str:
        steps.append(await inner())
        steps.append("after inner")
        return "outer finished"

    assert asyncio.run(outer()) == "outer cancelled"
    assert steps == []


def test_a_task_started_by_a_body_is_watched_by_its_own_guard(
        leader: Elector, cut_off: CutOffStore) -> None:
    @leader_only(leader, default="child cancelled")
    async def child() -> str:
        await asyncio.sleep(60)
        return "child finished"

    @leader_only(leader, cancel_on_loss=False)
    async def parent() -> str:
        task = asyncio.ensure_future(child())  # copies the context, with the parent's term
        cut_off.reachable.clear()
        return await task

    assert asyncio.run(parent()) == "child cancelled"


def test_stop_releases_only_after_the_running_bodies_ended(
        leader: Elector, successor: Successor) -> None:
    ended: list[float] = []
    started = threading.Event()

    @leader_only(leader)
    def cleanup() -> None:
        term = current_term()
        started.set()
        term.lost.wait()
        time.sleep(0.3)  # finishing the batch in hand after seeing the term end
        ended.append(time.monotonic())

    worker = threading.Thread(target=cleanup)
    worker.start()
    assert started.wait(5)
    stopping = time.monotonic()
    leader.stop()  # releases: the successor takes over at once, after the body
    worker.join(5)
    assert wait_until(lambda: successor.led_at is not None, 5)
    assert successor.led_at is not None and ended and successor.led_at > ended[0]
    assert successor.led_at - stopping < TIMINGS["lease_duration"]  # released, not expired


def test_stop_from_inside_a_body_does_not_wait_for_that_body(
        leader: Elector, successor: Successor) -> None:
    @leader_only(leader)
    def shutdown() -> float:
        started = time.monotonic()
        leader.stop()
        return time.monotonic() - started

    took = shutdown()
    assert took < TIMINGS["lease_duration"] / 2
    assert wait_until(lambda: successor.led_at is not None, 5)


def test_current_term_is_the_innermost_body_of_this_thread_and_not_of_others(
        leader: Elector, shared: MemoryLeaseStore) -> None:
    other = Elector(MemoryLeaseStore(), identity="other", **TIMINGS)  # type: ignore[arg-type]
    other.start()
    assert other.wait_for_leadership(5)
    seen: list[object] = []

    @leader_only(other)
    def inner() -> None:
        seen.append(current_term().elector)

    @leader_only(leader)
    async def outer() -> None:
        seen.append(current_term().elector)
        inner()  # a synchronous body inside an asynchronous one
        seen.append(current_term().elector)

    @leader_only(leader)
    def in_a_thread_of_the_body() -> None:
        def look() -> None:
            try:
                current_term()
            except SingletonJobsError as exc:
                seen.append(type(exc))

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()

    try:
        asyncio.run(outer())
        in_a_thread_of_the_body()
    finally:
        other.stop()
    assert seen == [leader, other, leader, SingletonJobsError]


def test_a_term_once_ended_stays_ended_when_the_replica_leads_again(
        leader: Elector, cut_off: CutOffStore) -> None:
    first = leader.current_term
    assert first is not None
    cut_off.reachable.clear()
    assert wait_until(lambda: not leader.is_leader, 5)
    cut_off.reachable.set()
    assert leader.wait_for_leadership(10)
    second = leader.current_term
    assert second is not None and second is not first
    # Nobody else led meanwhile (the record was never taken), so the token may be the same:
    # the earlier term stays over all the same.
    assert second.fencing_token >= first.fencing_token
    assert not first.active and first.lost.is_set() and first.lost.wait(0)
    with pytest.raises(LeadershipLost, match=rf"fencing token {first.fencing_token}\) ended"):
        first.check()
    assert second.active


def test_a_term_inherited_through_fork_is_over_in_the_child(leader: Elector) -> None:
    term = leader.current_term
    assert term is not None and term.active
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, f"{term.active} {term.lost.is_set()} {leader.current_term}".encode())
        os._exit(0)
    os.close(write)
    answer = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    assert answer == "False True None"


# -- real processes, a real Redis server, a real network cut ------------------------------------


@pytest.fixture
def redis_proxy(tcp_proxy: Callable[[str, int], TcpProxy]) -> TcpProxy:
    require_server(REDIS_URL)
    return tcp_proxy("127.0.0.1", 6379)


def journal_entries(path: Path) -> list[tuple[str, int, int, float, str]]:
    entries = []
    for line in path.read_text().splitlines():
        event, pid, token, at, *how = line.split()
        entries.append((event, int(pid), int(token), float(at), " ".join(how)))
    return entries


def started_by(path: Path, pid: int) -> bool:
    return path.exists() and any(e[0] == "start" and e[1] == pid for e in journal_entries(path))


def assert_bodies_never_overlap(path: Path) -> None:
    """Every body ended before the next one (of any process) started, and tokens grow."""
    open_body: tuple[int, int] | None = None
    for event, pid, token, _, _ in journal_entries(path):
        if event == "start":
            assert open_body is None, f"{pid} started while {open_body} ran: {path.read_text()}"
            open_body = (pid, token)
        else:
            assert open_body == (pid, token), path.read_text()
            open_body = None


def replica(spawn: Callable[..., Process], name: str, journal: Path, url: str, body: str,
            env: dict[str, str]) -> Process:
    return spawn(str(HERE / "term_replica.py"), name, str(journal), "--redis-url", url,
                 "--body", body, "--lease-duration", "3", "--renew-deadline", "1.5",
                 "--retry-period", "0.1", env=env)


@pytest.fixture
def replica_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize("body", ["async", "sync"])
def test_a_leader_cut_off_mid_body_stops_it_before_the_next_leader_starts_one(
        body: str, spawn: Callable[..., Process], redis_proxy: TcpProxy, tmp_path: Path,
        replica_env: dict[str, str]) -> None:
    name, journal = f"terms-cut-{os.getpid()}-{body}", tmp_path / "journal"
    first = replica(spawn, name, journal, redis_proxy.url_for(REDIS_URL), body, replica_env)
    assert first.wait_for_line(lambda line: line.startswith("LEADER"), 20), first.output()
    assert wait_until(lambda: started_by(journal, first.pid), 10), first.output()
    second = replica(spawn, name, journal, REDIS_URL, body, replica_env)
    assert second.wait_for_line(lambda line: line.startswith("STARTED"), 20), second.output()
    time.sleep(0.3)  # the second replica has seen the lease held
    redis_proxy.blackhole()  # the leader's network to Redis goes away in mid-body
    assert wait_until(lambda: started_by(journal, second.pid), 30), (
        first.output() + second.output())
    assert_bodies_never_overlap(journal)
    entries = journal_entries(journal)
    ended = [e for e in entries if e[0] == "end" and e[1] == first.pid]
    assert ended and ended[0][4] == ("cancelled" if body == "async" else "stopped")
    new = next(e for e in entries if e[0] == "start" and e[1] == second.pid)
    assert new[2] > ended[0][2]  # a higher fencing token
    redis_proxy.blackhole(False)
    assert first.wait_for_line(lambda line: line == "FOLLOWER", 20), first.output()


@pytest.mark.parametrize("body", ["async", "sync"])
def test_sigterm_hands_over_at_once_and_only_after_the_body_stopped(
        body: str, spawn: Callable[..., Process], tmp_path: Path,
        replica_env: dict[str, str]) -> None:
    require_server(REDIS_URL)
    name, journal = f"terms-stop-{os.getpid()}-{body}", tmp_path / "journal"
    first = replica(spawn, name, journal, REDIS_URL, body, replica_env)
    assert first.wait_for_line(lambda line: line.startswith("LEADER"), 20), first.output()
    assert wait_until(lambda: started_by(journal, first.pid), 10), first.output()
    second = replica(spawn, name, journal, REDIS_URL, body, replica_env)
    assert second.wait_for_line(lambda line: line.startswith("STARTED"), 20), second.output()
    time.sleep(0.3)
    first.signal(signal.SIGTERM)
    assert wait_until(lambda: started_by(journal, second.pid), 30), (
        first.output() + second.output())
    assert first.popen.wait(20) == 0, first.output()
    assert_bodies_never_overlap(journal)
    entries = journal_entries(journal)
    end = next(e for e in entries if e[0] == "end" and e[1] == first.pid)
    start = next(e for e in entries if e[0] == "start" and e[1] == second.pid)
    # Released (not left to expire, which takes 3 s from the last renew) once the body ended.
    assert start[3] - end[3] < 1.5, journal.read_text()



# -- jobs run by LeaderOnlyJobStore --------------------------------------------------------------


def test_a_coroutine_job_is_cancelled_when_the_term_ends_and_keeps_its_schedule(
        leader: Elector, cut_off: CutOffStore, caplog: pytest.LogCaptureFixture) -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from singleton_jobs.apscheduler import LeaderOnlyJobStore

    runs: list[str] = []

    async def report() -> None:
        runs.append(f"start {current_term().fencing_token}")
        cut_off.reachable.clear()
        try:
            await asyncio.sleep(60)
        finally:
            runs.append("end")

    async def main() -> Any:
        scheduler = AsyncIOScheduler()
        scheduler.add_jobstore(LeaderOnlyJobStore(leader), "leader")
        scheduler.add_job(report, "interval", hours=1, id="report", name="daily report",
                          jobstore="leader", next_run_time=datetime.now(timezone.utc))
        scheduler.start()
        try:
            assert await asyncio.to_thread(wait_until, lambda: "end" in runs, 10)
            await asyncio.sleep(0.1)
            return scheduler.get_job("report")
        finally:
            scheduler.shutdown(wait=False)

    with caplog.at_level(logging.WARNING):
        job = asyncio.run(main())
    assert len(runs) == 2 and runs[0].startswith("start ") and runs[1] == "end"
    assert re.search(r"leader: job 'daily report' \(id report\) stopped: leader: cancelled the "
                     r"body: leadership of memory:\S+ \(fencing token \d+\) ended", caplog.text)
    assert "raised an exception" not in caplog.text
    assert job.func is report  # the stored job is unchanged: the next leader runs the same


def test_a_job_sees_its_term_and_one_handed_over_after_the_term_ended_does_not_start(
        leader: Elector, cut_off: CutOffStore, caplog: pytest.LogCaptureFixture) -> None:
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    from singleton_jobs.apscheduler import LeaderOnlyJobStore

    tokens: list[int] = []
    ticks: list[float] = []
    release = threading.Event()

    def blocker() -> None:  # holds the only worker thread, ignoring its term
        tokens.append(current_term().fencing_token)
        release.wait(30)

    def tick() -> None:
        ticks.append(time.monotonic())

    scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(1)})
    scheduler.add_jobstore(LeaderOnlyJobStore(leader), "leader")
    now = datetime.now(timezone.utc)
    scheduler.add_job(blocker, "date", run_date=now, id="blocker", jobstore="leader")
    scheduler.add_job(tick, "date", run_date=now + timedelta(seconds=0.3), id="tick",
                      name="tick", jobstore="leader")
    token = leader.fencing_token
    with caplog.at_level(logging.WARNING):
        scheduler.start()
        try:
            assert wait_until(lambda: tokens, 10)
            # tick fell due and waits in the executor's queue behind blocker
            assert wait_until(lambda: scheduler.get_job("tick") is None, 10)
            cut_off.reachable.clear()
            assert wait_until(lambda: not leader.is_leader, 5)
            release.set()
            assert wait_until(lambda: "not started" in caplog.text, 10), caplog.text
        finally:
            release.set()
            scheduler.shutdown()
    assert tokens == [token]
    assert ticks == []
    assert re.search(r"leader: job 'tick' not started: leadership \(fencing token \d+\) ended "
                     r"after it was handed to the executor", caplog.text)


SHARED_STORE_RUNS: list[tuple[int, Term]] = []


def shared_store_job() -> None:  # a job of a shared store is stored by reference
    term = current_term()
    SHARED_STORE_RUNS.append((term.fencing_token, term))


def test_a_job_of_a_shared_store_runs_in_the_term_it_was_claimed_in(
        leader: Elector, tmp_path: Path) -> None:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    from singleton_jobs.apscheduler import LeaderOnlyJobStore

    seen = SHARED_STORE_RUNS
    seen.clear()

    scheduler = BackgroundScheduler()
    scheduler.add_jobstore(LeaderOnlyJobStore(
        leader, SQLAlchemyJobStore(url=f"sqlite:///{tmp_path / 'jobs.sqlite'}")), "leader")
    scheduler.add_job(shared_store_job, "interval", seconds=0.2, id="job", jobstore="leader",
                      next_run_time=datetime.now(timezone.utc))
    scheduler.start()
    try:
        assert wait_until(lambda: len(seen) >= 2, 10)
    finally:
        scheduler.shutdown()
    assert {(token, term is leader.current_term) for token, term in seen} == {
        (leader.fencing_token, True)}


# -- found in review: races at the edges of a term -------------------------------------------


def test_a_step_down_handed_to_the_loop_as_the_body_returns_spares_the_caller() -> None:
    elector = Elector(MemoryLeaseStore(), identity="a", lease_duration=2, renew_deadline=1,
                      retry_period=0.2).start()
    assert elector.wait_for_leadership(5)

    @leader_only(elector)
    async def body() -> str:
        threading.Thread(target=elector.stop).start()
        time.sleep(0.3)  # the loop is busy while the step-down is queued for it
        return "body done"

    async def main() -> str:
        result = await body()
        await asyncio.sleep(0.2)  # the caller's own code: not to be cancelled
        return result

    assert asyncio.run(main()) == "body done"


def test_a_renew_that_lands_after_the_deadline_does_not_revive_the_term() -> None:
    class SlowOnce(MemoryLeaseStore):
        slow = 0

        def update(self, record: LeaseRecord, version: Version, *,
                   timeout: float = 0.0) -> Version | None:
            if self.slow:
                self.slow -= 1
                time.sleep(0.9)
            return super().update(record, version, timeout=timeout)

    store = SlowOnce()
    elector = Elector(store, identity="a", lease_duration=3, renew_deadline=1.0,
                      retry_period=0.3).start()
    try:
        assert elector.wait_for_leadership(5)
        term = elector.current_term
        assert term is not None
        store.slow = 1
        seen = []
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            seen.append(term.active)
            time.sleep(0.02)
        # Once over, over: True ... True, then False for good (a new term follows).
        assert seen[0] and not seen[-1] and seen == sorted(seen, reverse=True)
        assert elector.wait_for_leadership(5) and elector.current_term is not term
    finally:
        elector.stop()


def test_a_release_waits_for_the_bodies_of_an_earlier_term_too() -> None:
    class Flaky(MemoryLeaseStore):
        fail_until = 0.0

        def update(self, record: LeaseRecord, version: Version, *,
                   timeout: float = 0.0) -> Version | None:
            if time.monotonic() < self.fail_until:
                time.sleep(0.05)
                raise LeaseStoreError("timeout")
            return super().update(record, version, timeout=timeout)

    store = Flaky()
    elector = Elector(store, identity="a", lease_duration=3.0, renew_deadline=0.5,
                      retry_period=0.1).start()
    assert elector.wait_for_leadership(5)
    ended: list[float] = []

    @leader_only(elector)
    def long_body() -> None:  # does not look at its term
        time.sleep(2.0)
        ended.append(time.monotonic())

    worker = threading.Thread(target=long_body)
    worker.start()
    time.sleep(0.1)
    first = elector.current_term
    store.fail_until = time.monotonic() + 0.7  # step down, then lead again: a new term
    assert wait_until(lambda: elector.current_term not in (None, first), 5)
    elector.stop()
    released_at = time.monotonic()
    worker.join(5)
    assert ended and ended[0] <= released_at


def test_stop_called_on_the_event_loop_leaves_the_lease_to_expire(
        caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryLeaseStore()
    elector = Elector(store, identity="a", lease_duration=3, renew_deadline=1,
                      retry_period=0.2).start()
    assert elector.wait_for_leadership(5)
    holders: list[str] = []

    @leader_only(elector)
    async def job() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # flushing a batch before giving up
            holders.append(store.get()[0].holder)  # type: ignore[index]
            raise

    async def main() -> None:
        task = asyncio.ensure_future(job())
        await asyncio.sleep(0.2)
        with caplog.at_level(logging.INFO):
            elector.stop()  # an async app's shutdown hook: the loop cannot run the job now
        holders.append(store.get()[0].holder)  # type: ignore[index]
        await task

    asyncio.run(main())
    # Not released while the job could still write: the lease expires instead.
    assert holders == ["a", "a"]
    assert "not releasing" in caplog.text
