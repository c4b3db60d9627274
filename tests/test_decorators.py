"""``@leader_only``: forms, return values, async functions, and no I/O on the call path."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Iterator

import pytest
from conftest import FAST

from singleton_jobs import (
    ConfigurationError,
    Elector,
    LeaseRecord,
    MemoryLeaseStore,
    NotLeaderError,
    leader_only,
    set_default_elector,
)
from singleton_jobs.backends import Snapshot


@pytest.fixture
def store() -> MemoryLeaseStore:
    return MemoryLeaseStore()


@pytest.fixture
def leader(store: MemoryLeaseStore) -> Iterator[Elector]:
    elector = Elector(store, identity="leader", **FAST).start()  # type: ignore[arg-type]
    assert elector.wait_for_leadership(5)
    yield elector
    elector.stop()


@pytest.fixture
def follower(store: MemoryLeaseStore, leader: Elector) -> Iterator[Elector]:
    elector = Elector(store, identity="follower", **FAST).start()  # type: ignore[arg-type]
    yield elector
    elector.stop()


@pytest.fixture(autouse=True)
def no_default_elector() -> Iterator[None]:
    set_default_elector(None)
    yield
    set_default_elector(None)


def test_runs_on_the_leader_and_returns_its_value(leader: Elector) -> None:
    @leader_only(leader)
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(2, b=3) == 5


def test_skipped_on_a_follower_with_default_and_on_skip(follower: Elector) -> None:
    ran, skipped = [], []

    @leader_only(follower, default="skipped", on_skip=lambda: skipped.append(1))
    def job() -> str:
        ran.append(1)
        return "ran"

    assert job() == "skipped" and job() == "skipped"
    assert ran == [] and skipped == [1, 1]


def test_skip_returns_none_by_default_and_logs_at_debug(
        follower: Elector, caplog: pytest.LogCaptureFixture) -> None:
    @leader_only(follower)
    def job() -> str:
        return "ran"

    with caplog.at_level(logging.DEBUG, logger="singleton_jobs"):
        assert job() is None
    assert "follower: skipped" in caplog.text and "job" in caplog.text


def test_raise_on_skip_raises_not_leader(follower: Elector) -> None:
    @leader_only(follower, raise_on_skip=True)
    def job() -> None:
        raise AssertionError("must not run")

    with pytest.raises(NotLeaderError, match="follower is not the leader"):
        job()


def test_bare_form_looks_up_the_default_elector_at_call_time(
        leader: Elector, follower: Elector) -> None:
    @leader_only
    def job() -> str:
        """Docs."""
        return "ran"

    with pytest.raises(ConfigurationError, match="set_default_elector"):
        job()
    set_default_elector(follower)
    assert job() is None
    set_default_elector(leader)
    assert job() == "ran"
    assert job.elector is None  # type: ignore[attr-defined]


def test_wrapper_keeps_metadata_and_exposes_the_elector(leader: Elector) -> None:
    def report(day: str) -> str:
        """Send the daily report."""
        return day

    wrapped = leader_only(leader)(report)
    assert wrapped.__name__ == "report" and wrapped.__doc__ == "Send the daily report."
    assert wrapped.__wrapped__ is report  # type: ignore[attr-defined]
    assert wrapped.elector is leader  # type: ignore[attr-defined]


def test_async_functions_stay_coroutine_functions(leader: Elector, follower: Elector) -> None:
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    on_leader, on_follower = leader_only(leader)(fetch), leader_only(follower, default=-1)(fetch)
    assert inspect.iscoroutinefunction(on_leader)
    assert asyncio.run(on_leader(21)) == 42
    assert asyncio.run(on_follower(21)) == -1


def test_wrong_arguments_are_clear_errors() -> None:
    with pytest.raises(ConfigurationError, match="needs an Elector"):
        leader_only("elector")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="needs an Elector"):
        set_default_elector("elector")  # type: ignore[arg-type]


def test_call_path_does_no_store_io() -> None:
    calling_thread = threading.get_ident()
    calls = []

    class WatchedStore(MemoryLeaseStore):
        def get(self, *, timeout: float = 0.0) -> Snapshot | None:
            if threading.get_ident() == calling_thread:
                calls.append("get")
            return super().get(timeout=timeout)

    store = WatchedStore()
    store.create(LeaseRecord("someone", 60.0, 0.0, 0.0, 0))
    elector = Elector(store, **FAST).start()  # type: ignore[arg-type]
    try:
        job = leader_only(elector)(lambda: "ran")
        for _ in range(1000):
            assert job() is None
    finally:
        elector.stop()
    assert calls == []
