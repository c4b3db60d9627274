"""Bad input from outside: any content a server could return, and credentials kept out of logs."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from k8s_api import FakeKubernetesApi

from singleton_jobs import ConfigurationError, KubernetesElector, LeaseRecord
from singleton_jobs.backends.kubernetes import (
    KubernetesLeaseStore,
    record_from_lease,
    spec_from_record,
)
from singleton_jobs.lease import UNKNOWN_HOLDER

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=12)
spec_fields = st.fixed_dictionaries({}, optional={
    "holderIdentity": json_values | st.text(max_size=40),
    "leaseDurationSeconds": json_values | st.integers(-5, 100),
    "acquireTime": json_values | st.just("2026-01-10T14:30:25.123456Z"),
    "renewTime": json_values | st.just("2026-01-10T14:30:25.123456Z"),
    "leaseTransitions": json_values | st.integers(-5, 2**33),
})


@given(st.one_of(json_values, st.dictionaries(st.just("spec"), spec_fields | json_values)))
@settings(max_examples=400)
def test_any_json_the_server_could_return_is_a_record_or_unreadable(lease: object) -> None:
    if not isinstance(lease, dict):
        lease = {"spec": lease}
    record = record_from_lease(lease)
    assert isinstance(record, LeaseRecord)
    if record.holder != UNKNOWN_HOLDER:
        assert isinstance(record.holder, str)
        assert record.lease_duration >= 0 and math.isfinite(record.lease_duration)
        assert isinstance(record.transitions, int) and record.transitions >= 0


@given(holder=st.text(max_size=60), duration=st.integers(1, 2**31 - 1),
       transitions=st.integers(0, 2**31 - 1),
       times=st.tuples(st.floats(0, 4e9), st.floats(0, 4e9)))
def test_valid_records_survive_the_round_trip_through_a_lease(
        holder: str, duration: int, transitions: int, times: tuple[float, float]) -> None:
    record = LeaseRecord(holder, float(duration), times[0], times[1], transitions)
    back = record_from_lease({"spec": spec_from_record(record)})
    assert (back.holder, back.lease_duration, back.transitions) == (holder, duration, transitions)
    assert back.acquire_time == pytest.approx(times[0], abs=1e-6)
    assert back.renew_time == pytest.approx(times[1], abs=1e-6)


def test_credentials_never_reach_logs_or_error_messages(caplog: pytest.LogCaptureFixture) -> None:
    from kubernetes import client

    secret = "s3cret-token-value"
    with FakeKubernetesApi(token=secret) as api:
        configuration = client.Configuration(host=api.url)
        configuration.api_key = {"authorization": f"Bearer {secret}"}
        api.add_fault("status", status=403)
        messages = []
        with caplog.at_level(logging.DEBUG):
            store = KubernetesLeaseStore("leader", namespace="default",
                                         api_client=client.ApiClient(configuration))
            with pytest.raises(ConfigurationError) as error:
                store.get(timeout=5)
            messages.append(str(error.value))
            api.clear_faults()
            api.add_fault("drop")
            elector = KubernetesElector("leader", namespace="default", identity="careful",
                                        api_client=client.ApiClient(configuration),
                                        lease_duration=2, renew_deadline=1, retry_period=0.1)
            elector.start()
            try:
                elector.acquire_lease(timeout=3)
            finally:
                elector.stop()
    assert caplog.text  # something was logged, and none of it is the token
    assert secret not in caplog.text
    assert all(secret not in message for message in messages)


def test_timings_in_milliseconds_warn_at_the_callers_line() -> None:
    from singleton_jobs import FileElector

    with pytest.warns(UserWarning, match=r"lease_duration \(15000\), renew_deadline \(10000\) "
                      r"longer than an hour.*did you pass milliseconds") as warned:
        FileElector(name="millis", lease_duration=15000, renew_deadline=10000, retry_period=2000)
    assert warned[0].filename == __file__  # the user's line, not the library's


@pytest.mark.parametrize("make", [
    lambda: __import__("singleton_jobs").FileElector("/tmp/x.lease", 15, 10, 2),
    lambda: __import__("singleton_jobs").Elector(__import__("singleton_jobs").MemoryLeaseStore(),
                                                 15),
    lambda: KubernetesElector("leader", 15, 10, 2),
    lambda: __import__("singleton_jobs").SQLElector("sqlite://", "leader", 15),
    lambda: __import__("singleton_jobs").RedisElector("redis://127.0.0.1:1", "leader", 15),
], ids=["file", "memory", "kubernetes", "sql", "redis"])
def test_positional_timings_say_which_keywords_to_use(make: object) -> None:
    with pytest.raises(TypeError, match=r"pass the others as keywords, e\.g\. \w+\(.*"
                                        r"lease_duration=15, renew_deadline=10, retry_period=2\)"):
        make()  # type: ignore[operator]


def test_leader_only_takes_the_elector_as_a_keyword_too() -> None:
    from singleton_jobs import Elector, MemoryLeaseStore, leader_only

    elector = Elector(MemoryLeaseStore())
    guarded = leader_only(elector=elector)(lambda: "ran")
    assert guarded.elector is elector  # type: ignore[attr-defined]
    assert guarded() is None  # not started: a follower
