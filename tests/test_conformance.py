"""The LeaseStore contract, run against every backend through the ``store_factory`` fixture."""

from __future__ import annotations

import threading
from collections.abc import Callable

from singleton_jobs import LeaseRecord
from singleton_jobs.backends import LeaseStore


def record(holder: str, transitions: int = 0, renew_time: float = 1_767_000_000.5) -> LeaseRecord:
    return LeaseRecord(holder, 15.0, 1_767_000_000.0, renew_time, transitions)


def test_get_returns_none_before_anything_is_stored(store: LeaseStore) -> None:
    assert store.get(timeout=1) is None


def test_created_record_reads_back_unchanged(store: LeaseStore) -> None:
    version = store.create(record("replica:a/1"), timeout=1)
    assert version is not None
    assert store.get(timeout=1) == (record("replica:a/1"), version)


def test_second_create_loses_and_first_record_stays(store: LeaseStore) -> None:
    assert store.create(record("first"), timeout=1) is not None
    assert store.create(record("second"), timeout=1) is None
    snapshot = store.get(timeout=1)
    assert snapshot is not None and snapshot[0].holder == "first"


def test_update_with_current_version_replaces_record(store: LeaseStore) -> None:
    version = store.create(record("a"), timeout=1)
    new_version = store.update(record("b", transitions=1), version, timeout=1)
    assert new_version is not None and new_version != version
    assert store.get(timeout=1) == (record("b", transitions=1), new_version)


def test_update_with_stale_version_loses_and_changes_nothing(store: LeaseStore) -> None:
    stale = store.create(record("a"), timeout=1)
    current = store.update(record("a", renew_time=1_767_000_002.0), stale, timeout=1)
    assert store.update(record("thief", transitions=1), stale, timeout=1) is None
    assert store.get(timeout=1) == (record("a", renew_time=1_767_000_002.0), current)


def test_update_of_missing_record_loses(store: LeaseStore) -> None:
    assert store.update(record("a"), b"a:1\n", timeout=1) is None
    assert store.get(timeout=1) is None


def test_release_keeps_transitions_and_empty_holder(store: LeaseStore) -> None:
    version = store.create(record("a", transitions=7), timeout=1)
    released = record("", transitions=7)
    assert store.update(released, version, timeout=1) is not None
    snapshot = store.get(timeout=1)
    assert snapshot is not None
    assert snapshot[0] == released and snapshot[0].released


def _race(store_factory: Callable[[], LeaseStore], attempt: Callable[[LeaseStore, int], object],
          contenders: int = 8) -> list[object]:
    stores = [store_factory() for _ in range(contenders)]
    barrier = threading.Barrier(contenders)
    results: list[object] = [None] * contenders

    def run(i: int) -> None:
        barrier.wait()
        results[i] = attempt(stores[i], i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_concurrent_creates_have_exactly_one_winner(
        store_factory: Callable[[], LeaseStore]) -> None:
    results = _race(store_factory, lambda s, i: s.create(record(f"c{i}"), timeout=5))
    winners = [i for i, version in enumerate(results) if version is not None]
    assert len(winners) == 1
    snapshot = store_factory().get(timeout=1)
    assert snapshot is not None and snapshot[0].holder == f"c{winners[0]}"


def test_concurrent_updates_from_one_version_have_exactly_one_winner(
        store_factory: Callable[[], LeaseStore]) -> None:
    version = store_factory().create(record("old"), timeout=1)
    results = _race(store_factory,
                    lambda s, i: s.update(record(f"u{i}", transitions=1), version, timeout=5))
    winners = [i for i, new in enumerate(results) if new is not None]
    assert len(winners) == 1
    snapshot = store_factory().get(timeout=1)
    assert snapshot is not None and snapshot[0].holder == f"u{winners[0]}"
