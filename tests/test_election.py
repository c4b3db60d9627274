"""The election engine, on the in-memory store, with sub-second timings."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import FAST, wait_until

from singleton_jobs import (
    ConfigurationError,
    Elector,
    LeadershipLost,
    LeaseRecord,
    LeaseStoreError,
    MemoryLeaseStore,
    NotLeaderError,
    SingletonJobsError,
)
from singleton_jobs.backends import Snapshot, Version


class ScriptedStore(MemoryLeaseStore):
    """A real in-memory store that can be told to fail or to hang, and logs what it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[LeaseRecord] = []
        self.failing = False
        self.hang = threading.Event()      # set: calls block until released
        self.release_hang = threading.Event()

    def _misbehave(self) -> None:
        if self.hang.is_set():
            self.release_hang.wait(30)
        if self.failing:
            raise LeaseStoreError("storage unavailable")

    def get(self, *, timeout: float = 0.0) -> Snapshot | None:
        self._misbehave()
        return super().get(timeout=timeout)

    def create(self, record: LeaseRecord, *, timeout: float = 0.0) -> Version | None:
        self._misbehave()
        version = super().create(record, timeout=timeout)
        if version is not None:
            self.writes.append(record)
        return version

    def update(self, record: LeaseRecord, version: Version, *,
               timeout: float = 0.0) -> Version | None:
        self._misbehave()
        new = super().update(record, version, timeout=timeout)
        if new is not None:
            self.writes.append(record)
        return new

    @property
    def record(self) -> LeaseRecord | None:
        snapshot = super().get()
        return None if snapshot is None else snapshot[0]


@pytest.fixture
def electors() -> Iterator[list[Elector]]:
    made: list[Elector] = []
    yield made
    for elector in made:
        elector.stop()


def make(electors: list[Elector], store: MemoryLeaseStore, identity: str,
         **kwargs: object) -> Elector:
    elector = Elector(store, identity=identity, **{**FAST, **kwargs})  # type: ignore[arg-type]
    electors.append(elector)
    return elector


@pytest.mark.parametrize(("timings", "message"), [
    ((5, 10, 2), "lease_duration (5) must be greater than renew_deadline (10)"),
    ((10, 10, 2), "lease_duration (10) must be greater than renew_deadline (10)"),
    ((15, 2, 2), "renew_deadline (2) must be greater than 1.2 * retry_period (2) = 2.4"),
    ((15, 10, 0), "retry_period (0) must be a positive number of seconds"),
    ((-1, 10, 2), "lease_duration (-1) must be a positive number of seconds"),
    ((math.nan, 10, 2), "lease_duration (nan) must be a positive number of seconds"),
    ((15, math.inf, 2), "renew_deadline (inf) must be a positive number of seconds"),
    (("15", 10, 2), "lease_duration must be a number of seconds, not '15'"),
    ((True, 10, 2), "lease_duration must be a number of seconds, not True"),
])
def test_bad_timings_are_rejected_with_the_field_and_value(
        timings: tuple[object, object, object], message: str) -> None:
    lease, renew, retry = timings
    with pytest.raises(ConfigurationError) as caught:
        Elector(MemoryLeaseStore(), lease_duration=lease, renew_deadline=renew,  # type: ignore[arg-type]
                retry_period=retry)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("identity", "problem"), [
    ("a\nb", "contains a newline"),
    ("", "must not be empty"),
    ("tab\there", "contains a control character"),
    (" padded", "leading or trailing whitespace"),
    ("x" * 300, "at most 253"),
])
def test_bad_identities_are_rejected(identity: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        Elector(MemoryLeaseStore(), identity=identity)


def test_default_identity_is_unique_per_elector() -> None:
    store = MemoryLeaseStore()
    assert Elector(store).identity != Elector(store).identity


def test_lone_elector_leads_with_a_fencing_token(electors: list[Elector]) -> None:
    store = ScriptedStore()
    elector = make(electors, store, "solo").start()
    assert elector.wait_for_leadership(5)
    assert elector.leader == "solo"
    assert elector.fencing_token == 0
    assert store.record is not None and store.record.holder == "solo"


def test_two_electors_never_lead_at_the_same_time(electors: list[Elector]) -> None:
    store = ScriptedStore()
    a = make(electors, store, "a").start()
    b = make(electors, store, "b").start()
    assert wait_until(lambda: a.is_leader or b.is_leader, 5)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert not (a.is_leader and b.is_leader)
    follower = b if a.is_leader else a
    assert follower.leader == (a if a.is_leader else b).identity
    assert follower.fencing_token is None


def test_leader_keeps_renewing(electors: list[Elector]) -> None:
    store = ScriptedStore()
    elector = make(electors, store, "renewer").start()
    assert elector.wait_for_leadership(5)
    first = store.record
    assert wait_until(lambda: len(store.writes) >= 5, 5)
    assert elector.is_leader
    assert store.record is not None and first is not None
    assert store.record.renew_time > first.renew_time
    assert store.record.acquire_time == first.acquire_time
    assert store.record.transitions == first.transitions


def test_stop_makes_is_leader_false_and_releases(electors: list[Elector]) -> None:
    store = ScriptedStore()
    elector = make(electors, store, "leaver").start()
    assert elector.wait_for_leadership(5)
    elector.stop()
    assert not elector.is_leader and elector.fencing_token is None
    assert store.record is not None
    assert store.record.released and store.record.transitions == 0


def test_stop_without_release_leaves_the_lease_to_expire(electors: list[Elector]) -> None:
    store = ScriptedStore()
    elector = make(electors, store, "keeper").start()
    assert elector.wait_for_leadership(5)
    elector.stop(release=False)
    assert not elector.is_leader
    assert store.record is not None and store.record.holder == "keeper"


def test_follower_takes_over_a_released_lease_within_one_retry_period(
        electors: list[Elector]) -> None:
    store = ScriptedStore()
    a = make(electors, store, "a", lease_duration=5.0, renew_deadline=3.0, retry_period=0.1).start()
    assert a.wait_for_leadership(5)
    b = make(electors, store, "b", lease_duration=5.0, renew_deadline=3.0, retry_period=0.1).start()
    assert wait_until(lambda: b.leader == "a", 5)
    stopped = time.monotonic()
    a.stop()
    assert b.wait_for_leadership(5)
    # One jittered retry period (at most 1.2 x 0.1 s) plus scheduling slack; without the
    # release it would take the whole 5 s lease.
    assert time.monotonic() - stopped < 1.0
    assert b.fencing_token == 1


def test_expiry_is_judged_on_local_observation_not_the_remote_timestamp(
        electors: list[Elector]) -> None:
    store = ScriptedStore()
    # Written long ago by the holder's clock: a wall-clock check would call it expired.
    store.create(LeaseRecord("other", 0.6, 0.0, 0.0, 4))
    elector = make(electors, store, "observer", lease_duration=0.6, renew_deadline=0.3,
                   retry_period=0.05)
    started = time.monotonic()
    elector.start()
    assert elector.wait_for_leadership(5)
    assert time.monotonic() - started >= 0.6
    assert elector.fencing_token == 5


def test_timestamp_far_ahead_does_not_extend_the_lease(electors: list[Elector]) -> None:
    store = ScriptedStore()
    store.create(LeaseRecord("other", 0.4, time.time() + 3600, time.time() + 3600, 0))
    elector = make(electors, store, "observer", lease_duration=0.6, renew_deadline=0.3,
                   retry_period=0.05)
    started = time.monotonic()
    elector.start()
    assert elector.wait_for_leadership(5)
    assert 0.4 <= time.monotonic() - started < 3


def test_a_lease_that_keeps_changing_is_never_taken(electors: list[Elector]) -> None:
    store = ScriptedStore()
    version = store.create(LeaseRecord("other", 0.3, 0.0, 0.0, 0))
    elector = make(electors, store, "patient", lease_duration=0.3, renew_deadline=0.2,
                   retry_period=0.05).start()
    deadline = time.monotonic() + 1.2
    renewed = 1.0
    while time.monotonic() < deadline:  # "other" renews every 0.1 s, well within 0.3 s
        time.sleep(0.1)
        renewed += 1
        version = store.update(LeaseRecord("other", 0.3, 0.0, renewed, 0), version)
        assert not elector.is_leader
    assert elector.leader == "other"
    assert elector.wait_for_leadership(5)  # once "other" goes silent, the lease expires


def test_released_record_is_taken_at_once(electors: list[Elector]) -> None:
    store = ScriptedStore()
    store.create(LeaseRecord("", 60.0, 0.0, 0.0, 9))
    elector = make(electors, store, "quick", lease_duration=60.0, renew_deadline=1.0,
                   retry_period=0.1)
    started = time.monotonic()
    elector.start()
    assert elector.wait_for_leadership(5)
    assert time.monotonic() - started < 1.0
    assert elector.fencing_token == 10


def test_stuck_renew_makes_is_leader_false_by_itself(electors: list[Elector]) -> None:
    store = ScriptedStore()
    elector = make(electors, store, "stuck", lease_duration=1.0, renew_deadline=0.5,
                   retry_period=0.05).start()
    assert elector.wait_for_leadership(5)
    store.hang.set()  # the next store call blocks: the renew thread is stuck
    hung = time.monotonic()
    assert wait_until(lambda: not elector.is_leader, 5)
    assert time.monotonic() - hung < 0.5 + 0.2
    store.hang.clear()
    store.release_hang.set()


def test_leader_steps_down_when_renewals_fail_and_campaigns_again(electors: list[Elector]) -> None:
    store = ScriptedStore()
    stopped = threading.Event()
    started = threading.Event()
    elector = make(electors, store, "flaky", on_stopped_leading=stopped.set,
                   on_started_leading=started.set).start()
    assert elector.wait_for_leadership(5) and started.wait(5)
    started.clear()
    store.failing = True
    failed_at = time.monotonic()
    assert stopped.wait(5)
    assert time.monotonic() - failed_at < FAST["renew_deadline"] + FAST["retry_period"] + 0.3
    assert not elector.is_leader
    store.failing = False
    assert started.wait(5)  # it kept campaigning
    assert elector.is_leader


def test_leader_steps_down_at_once_when_another_takes_the_lease(electors: list[Elector]) -> None:
    store = ScriptedStore()
    stopped = threading.Event()
    elector = make(electors, store, "deposed", lease_duration=5.0, renew_deadline=3.0,
                   retry_period=0.05, on_stopped_leading=stopped.set).start()
    assert elector.wait_for_leadership(5)
    snapshot = store.get()
    assert snapshot is not None
    store.update(LeaseRecord("usurper", 5.0, 0.0, 0.0, 1), snapshot[1])
    assert stopped.wait(1.0)  # long before renew_deadline (3 s)
    assert not elector.is_leader
    assert elector.leader == "usurper"


def test_slow_callback_does_not_stall_renewal(electors: list[Elector]) -> None:
    store = ScriptedStore()
    release = threading.Event()
    elector = make(electors, store, "busy", on_started_leading=lambda: release.wait(10))
    elector.start()
    assert elector.wait_for_leadership(5)
    writes = len(store.writes)
    deadline = time.monotonic() + 3 * FAST["lease_duration"]
    while time.monotonic() < deadline:
        assert elector.is_leader
        time.sleep(0.01)
    assert len(store.writes) > writes + 5
    release.set()


def test_raising_on_started_leading_gives_the_lease_up(
        electors: list[Elector], caplog: pytest.LogCaptureFixture) -> None:
    store = ScriptedStore()
    stopped = threading.Event()

    def fail() -> None:
        raise RuntimeError("cannot start duties")

    elector = make(electors, store, "fragile", on_started_leading=fail,
                   on_stopped_leading=stopped.set)
    with caplog.at_level(logging.ERROR, logger="singleton_jobs"):
        elector.start()
        assert stopped.wait(5)
    assert any(w.released for w in store.writes)
    assert "on_started_leading raised" in caplog.text and "cannot start duties" in caplog.text


def test_raising_callbacks_are_logged_and_do_not_stop_the_elector(
        electors: list[Elector], caplog: pytest.LogCaptureFixture) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("callback bug")

    elector = make(electors, ScriptedStore(), "robust", on_new_leader=fail)
    with caplog.at_level(logging.ERROR, logger="singleton_jobs"):
        elector.start()
        assert elector.wait_for_leadership(5)
        assert wait_until(lambda: "on_new_leader raised" in caplog.text, 5)
    time.sleep(3 * FAST["renew_deadline"])
    assert elector.is_leader


def test_on_new_leader_reports_each_new_holder(electors: list[Elector]) -> None:
    store = ScriptedStore()
    seen: list[str] = []
    a = make(electors, store, "a").start()
    assert a.wait_for_leadership(5)
    make(electors, store, "b", on_new_leader=seen.append).start()
    assert wait_until(lambda: seen == ["a"], 5)
    a.stop()
    assert wait_until(lambda: seen == ["a", "b"], 5)


def test_fencing_tokens_strictly_increase_across_leaders(electors: list[Elector]) -> None:
    store = ScriptedStore()
    tokens = []
    for round_ in range(4):
        elector = make(electors, store, f"leader-{round_ % 2}").start()
        assert elector.wait_for_leadership(5)
        tokens.append(elector.fencing_token)
        elector.stop()
    assert tokens == [0, 1, 2, 3]


def test_acquire_lease_blocks_until_leading_and_monitor_lease_reports_the_loss(
        electors: list[Elector]) -> None:
    store = ScriptedStore()
    a = make(electors, store, "a")
    assert a.acquire_lease(timeout=5)
    b = make(electors, store, "b", lease_duration=5.0, renew_deadline=3.0, retry_period=0.05)
    assert not b.acquire_lease(timeout=0.3)

    lost = threading.Event()
    monitor = threading.Thread(target=a.monitor_lease, args=(lost.set,))
    monitor.start()
    time.sleep(0.3)
    assert not lost.is_set()
    a.stop()
    assert lost.wait(5)
    monitor.join(5)
    assert b.acquire_lease(timeout=5)


def test_monitor_lease_raises_leadership_lost_without_a_callback(electors: list[Elector]) -> None:
    store = ScriptedStore()
    a = make(electors, store, "a")
    assert a.acquire_lease(timeout=5)
    threading.Timer(0.2, lambda: setattr(store, "failing", True)).start()
    with pytest.raises(LeadershipLost):
        a.monitor_lease()


def test_monitor_lease_needs_leadership(electors: list[Elector]) -> None:
    with pytest.raises(NotLeaderError):
        make(electors, ScriptedStore(), "idle").monitor_lease(lambda: None)


def test_wait_for_leadership_needs_a_started_elector() -> None:
    with pytest.raises(SingletonJobsError, match="call start"):
        Elector(MemoryLeaseStore()).wait_for_leadership(0.1)


def test_context_manager_starts_and_releases() -> None:
    store = ScriptedStore()
    with Elector(store, identity="ctx", **FAST) as elector:  # type: ignore[arg-type]
        assert elector.wait_for_leadership(5)
    assert not elector.is_leader and not elector.running
    assert store.record is not None and store.record.released


def test_elector_can_start_again_after_stop(electors: list[Elector]) -> None:
    elector = make(electors, ScriptedStore(), "again").start()
    assert elector.wait_for_leadership(5)
    elector.stop()
    elector.start()
    assert elector.wait_for_leadership(5)
    assert elector.fencing_token == 1


def test_followers_poll_about_once_per_retry_period(electors: list[Elector]) -> None:
    calls = []

    class CountingStore(ScriptedStore):
        def get(self, *, timeout: float = 0.0) -> Snapshot | None:
            calls.append(time.monotonic())
            return super().get(timeout=timeout)

    store = CountingStore()
    store.create(LeaseRecord("other", 60.0, 0.0, 0.0, 0))
    make(electors, store, "follower", lease_duration=60.0, renew_deadline=1.0,
         retry_period=0.1).start()
    # No long silence: polls keep coming (bounded generously for a loaded machine) ...
    assert wait_until(lambda: len(calls) >= 8, 10)
    # ... and no busy loop: a follower waits 0.8 to 1 retry period between polls.
    gaps = [later - earlier for earlier, later in zip(calls, calls[1:8])]
    assert min(gaps) >= 0.075, gaps


def test_steady_state_renew_is_one_write_and_no_read(electors: list[Elector]) -> None:
    reads = []

    class CountingStore(ScriptedStore):
        def get(self, *, timeout: float = 0.0) -> Snapshot | None:
            reads.append(1)
            return super().get(timeout=timeout)

    store = CountingStore()
    elector = make(electors, store, "cheap").start()
    assert elector.wait_for_leadership(5)
    reads_then, writes_then = len(reads), len(store.writes)
    assert wait_until(lambda: len(store.writes) >= writes_then + 10, 5)
    assert len(reads) == reads_then


def test_leader_whose_cached_version_is_stale_reads_and_keeps_leading(
        electors: list[Elector]) -> None:
    store = ScriptedStore()
    elector = make(electors, store, "me", lease_duration=5.0, renew_deadline=3.0,
                   retry_period=0.05).start()
    assert elector.wait_for_leadership(5)
    snapshot = store.get()
    assert snapshot is not None
    # Someone rewrites our own record (same holder): the fast path conflicts, the slow path
    # reads the new version and renews it.
    store.update(snapshot[0]._replace(renew_time=1.0), snapshot[1])
    writes = len(store.writes)
    assert wait_until(lambda: len(store.writes) >= writes + 3, 5)
    assert elector.is_leader and store.record is not None and store.record.holder == "me"


def test_leadership_listeners_hear_every_change(electors: list[Elector]) -> None:
    store = ScriptedStore()
    heard: list[bool] = []
    elector = make(electors, store, "listened")
    elector.add_leadership_listener(heard.append)
    elector.start()
    assert elector.wait_for_leadership(5)
    store.failing = True
    assert wait_until(lambda: heard == [True, False], 5)
    elector.remove_leadership_listener(heard.append)
    store.failing = False
    assert elector.wait_for_leadership(5)
    time.sleep(0.1)
    assert heard == [True, False]
