"""The Kubernetes Lease backend, over real HTTP, against the strict fake API server.

Every test talks to tests/k8s_api.py through the real ``kubernetes`` client; only the client's
host differs from a real cluster's. Timings are whole-second leases with sub-second retries
(lease 2 s, renew deadline 1 s, retry period 0.2 s); waits are on conditions, bounded by what
the semantics promise plus slack for a noisy machine.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, Process, k8s_api_client, unique_lease_name, wait_until
from k8s_api import FakeKubernetesApi

from singleton_jobs import (
    ConfigurationError,
    KubernetesElector,
    KubernetesLeaseStore,
    LeaseRecord,
    LeaseStoreError,
)
from singleton_jobs.backends import kubernetes as backend
from singleton_jobs.backends.kubernetes import LeaseVersion, format_microtime, parse_microtime
from singleton_jobs.lease import UNKNOWN_HOLDER

LEASE, RENEW, RETRY = 2, 1.0, 0.2
TIMINGS: dict[str, Any] = {"lease_duration": LEASE, "renew_deadline": RENEW,
                           "retry_period": RETRY}
# Slack for a noisy 2-core machine, on top of what the semantics guarantee.
SLACK = 1.0
MICROTIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
LEASES = "/apis/coordination.k8s.io/v1/namespaces"
NOW = 1_767_000_000.0


class Events:
    """Callbacks of one elector, with the monotonic time each arrived."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str]] = []

    def started(self) -> None:
        self.log.append((time.monotonic(), "started"))

    def stopped(self) -> None:
        self.log.append((time.monotonic(), "stopped"))

    def times(self, kind: str, since: float = 0.0) -> list[float]:
        return [at for at, what in self.log if what == kind and at >= since]

    def first(self, kind: str, since: float = 0.0, timeout: float = 5.0) -> float:
        """When the first ``kind`` callback since ``since`` ran (they run on their own thread,
        shortly after the state change)."""
        assert wait_until(lambda: self.times(kind, since), timeout), f"no {kind} callback"
        return self.times(kind, since)[0]


@pytest.fixture
def electors(k8s_api: FakeKubernetesApi) -> Iterator[list[KubernetesElector]]:
    made: list[KubernetesElector] = []
    yield made
    k8s_api.clear_faults()
    for elector in made:
        elector.stop(release=False)


@pytest.fixture
def make(k8s_api: FakeKubernetesApi,
         electors: list[KubernetesElector]) -> Callable[..., tuple[KubernetesElector, Events]]:
    """Make an elector on the fake server, with its callbacks recorded; stopped at the end."""

    def make_elector(name: str, identity: str, *, agent: str | None = None,
                     **options: Any) -> tuple[KubernetesElector, Events]:
        events = Events()
        elector = KubernetesElector(
            name, namespace="default", api_client=k8s_api_client(k8s_api.url, agent),
            identity=identity, on_started_leading=events.started,
            on_stopped_leading=events.stopped, **{**TIMINGS, **options})
        electors.append(elector)
        return elector, events

    return make_elector


def store_for(api: FakeKubernetesApi, name: str, *, namespace: str = "default",
              agent: str | None = None) -> KubernetesLeaseStore:
    return KubernetesLeaseStore(name, namespace=namespace,
                                api_client=k8s_api_client(api.url, agent))


def call(api: FakeKubernetesApi, method: str, path: str, body: Any = None,
         content_type: str = "application/json") -> tuple[int, Any, http.client.HTTPResponse]:
    """One raw HTTP request to the fake server; returns status, parsed JSON and the response."""
    connection = http.client.HTTPConnection(api.url.removeprefix("http://"), timeout=10)
    payload = body if isinstance(body, bytes) else (
        None if body is None else json.dumps(body).encode())
    connection.request(method, path, body=payload, headers={"Content-Type": content_type})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    try:
        return response.status, json.loads(data), response
    except ValueError:
        return response.status, data, response


def lease_json(name: str, holder: str | None = "go-replica", **spec: Any) -> dict[str, Any]:
    """A Lease as client-go creates it (every spec field set) unless ``spec`` overrides."""
    now = format_microtime(time.time())
    fields: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": LEASE,
                              "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
    fields.update(spec)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {key: value for key, value in fields.items() if value is not None}}


# -- construction and configuration -----------------------------------------------------------


@pytest.mark.parametrize("name", ["Bad_Name", "-leader", "leader-", "le/ader", "", "a" * 254,
                                  "UPPER", "..", "with space"])
def test_invalid_lease_names_are_rejected_at_construction(
        k8s_api: FakeKubernetesApi, name: str) -> None:
    with pytest.raises(ConfigurationError, match="lease name"):
        store_for(k8s_api, name)
    assert k8s_api.count() == 0


@pytest.mark.parametrize("namespace", ["Default", "kube_system", "a" * 64, "-x", ""])
def test_invalid_namespaces_are_rejected_at_construction(
        k8s_api: FakeKubernetesApi, namespace: str) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        store_for(k8s_api, "leader", namespace=namespace)


@pytest.mark.parametrize("lease_duration", [2.5, 0.5, 1.000001])
def test_lease_duration_must_be_whole_seconds(
        k8s_api: FakeKubernetesApi, lease_duration: float) -> None:
    with pytest.raises(ConfigurationError, match=rf"lease_duration \({lease_duration}\).*whole"):
        KubernetesElector("leader", namespace="default", api_client=k8s_api_client(k8s_api.url),
                          lease_duration=lease_duration, renew_deadline=0.4, retry_period=0.1)


def test_whole_second_lease_durations_are_accepted(k8s_api: FakeKubernetesApi) -> None:
    elector = KubernetesElector("leader", namespace="default",
                                api_client=k8s_api_client(k8s_api.url), lease_duration=2.0,
                                renew_deadline=1.5, retry_period=0.5)
    assert elector.lease_duration == 2.0 and elector.store.name == "default/leader"


def write_kubeconfig(path: Path, server: str, namespace: str | None, token: str = "t") -> Path:
    context: dict[str, str] = {"cluster": "fake", "user": "tester"}
    if namespace is not None:
        context["namespace"] = namespace
    path.write_text(json.dumps({  # JSON is YAML
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": context}]}))
    return path


@pytest.fixture
def outside_a_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No in-cluster configuration, no service account namespace, no kubeconfig (yet)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setattr(backend, "SERVICE_ACCOUNT_NAMESPACE_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    return tmp_path


def test_namespace_comes_from_argument_then_service_account_then_kubeconfig_then_default(
        k8s_api: FakeKubernetesApi, outside_a_pod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = k8s_api_client(k8s_api.url)
    assert KubernetesLeaseStore("leader", api_client=client).namespace == "default"
    kubeconfig = write_kubeconfig(outside_a_pod / "kubeconfig", k8s_api.url, "from-context")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert KubernetesLeaseStore("leader", api_client=client).namespace == "from-context"
    namespace_file = outside_a_pod / "namespace"
    namespace_file.write_text("from-service-account\n")
    monkeypatch.setattr(backend, "SERVICE_ACCOUNT_NAMESPACE_FILE", str(namespace_file))
    assert KubernetesLeaseStore("leader", api_client=client).namespace == "from-service-account"
    assert KubernetesLeaseStore("leader", namespace="given",
                                api_client=client).namespace == "given"


def test_without_api_client_the_kubeconfig_is_used(
        k8s_api: FakeKubernetesApi, outside_a_pod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k8s_api.namespaces.add("team-a")
    kubeconfig = write_kubeconfig(outside_a_pod / "kubeconfig", k8s_api.url, "team-a")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    name = unique_lease_name()
    elector = KubernetesElector(name, identity="from-kubeconfig", **TIMINGS)
    with elector:
        assert elector.wait_for_leadership(5)
        assert elector.namespace == "team-a" and elector.store.host == k8s_api.url
    lease = k8s_api.lease("team-a", name)
    assert lease is not None and lease["spec"]["holderIdentity"] == ""  # released on exit


def test_without_any_configuration_the_error_says_what_to_do(outside_a_pod: Path) -> None:
    with pytest.raises(ConfigurationError, match="no Kubernetes API configuration") as error:
        KubernetesLeaseStore("leader")
    assert "KUBECONFIG" in str(error.value) and "api_client" in str(error.value)


def test_identity_defaults_to_pod_name_plus_pid_and_random(k8s_api: FakeKubernetesApi,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "worker-7c9f-x2x4q")
    elector = KubernetesElector("leader", namespace="default",
                                api_client=k8s_api_client(k8s_api.url))
    # Readable, and unique per process: every worker of a pod shares POD_NAME.
    assert re.fullmatch(r"worker-7c9f-x2x4q_\d+_[0-9a-f]{6}", elector.identity)
    other = KubernetesElector("leader", namespace="default",
                              api_client=k8s_api_client(k8s_api.url))
    assert other.identity != elector.identity


def test_package_root_exports_the_backend_without_importing_kubernetes() -> None:
    code = ("import sys; from singleton_jobs import KubernetesElector, KubernetesLeaseStore; "
            "import singleton_jobs; assert 'KubernetesElector' in singleton_jobs.__all__; "
            "print('kubernetes' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_missing_kubernetes_package_names_the_extra_to_install() -> None:
    code = ("import sys; sys.modules['kubernetes'] = None\n"
            "from singleton_jobs import KubernetesElector\n"
            "try:\n    KubernetesElector('leader', namespace='default')\n"
            "except ImportError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert 'pip install "singleton_jobs[kubernetes]"' in result.stdout, result.stderr


def test_requests_carry_the_configured_bearer_token() -> None:
    with FakeKubernetesApi(token="s3cret") as api:
        from kubernetes import client

        configuration = client.Configuration(host=api.url)
        configuration.api_key = {"authorization": "Bearer s3cret"}  # as the config loaders do
        store = KubernetesLeaseStore("leader", namespace="default",
                                     api_client=client.ApiClient(configuration))
        assert store.get(timeout=5) is None
        assert store.create(LeaseRecord("me", 5.0, NOW, NOW, 0), timeout=5) is not None
        with pytest.raises(ConfigurationError, match="401 Unauthorized") as error:
            store_for(api, "leader").get(timeout=5)
    assert "get, create and update on leases.coordination.k8s.io" in str(error.value)


# -- what goes over the wire ---------------------------------------------------------------------


def test_microtimes_are_utc_with_six_fractional_digits_and_round_trip() -> None:
    assert format_microtime(NOW) == "2025-12-29T09:20:00.000000Z"
    assert format_microtime(NOW + 0.123456) == "2025-12-29T09:20:00.123456Z"
    for seconds in (NOW, NOW + 0.5, NOW + 0.000001, 0.0, 1_000_000_000.999999):
        assert parse_microtime(format_microtime(seconds)) == seconds
    assert parse_microtime("2025-12-29T11:20:00.25+02:00") == NOW + 0.25
    assert parse_microtime("2025-12-29T09:20:00Z") == NOW


def test_writes_the_fields_client_go_writes_and_renews_with_the_object_it_kept(
        k8s_api: FakeKubernetesApi) -> None:
    name = unique_lease_name()
    store = store_for(k8s_api, name)
    version = store.create(LeaseRecord("me", 15.0, NOW, NOW, 3), timeout=5)
    assert isinstance(version, LeaseVersion)
    # Someone labels the Lease; our next write must keep that, and need no read first.
    stored = k8s_api.lease("default", name)
    assert stored is not None
    stored["metadata"]["labels"] = {"app": "demo"}
    status, relabelled, _ = call(k8s_api, "PUT", f"{LEASES}/default/leases/{name}", stored)
    assert status == 200
    assert store.update(LeaseRecord("me", 15.0, NOW, NOW + 2, 3), version, timeout=5) is None
    snapshot = store.get(timeout=5)
    assert snapshot is not None
    k8s_api.clear_log()
    new_version = store.update(LeaseRecord("me", 15.0, NOW, NOW + 4, 3), snapshot[1], timeout=5)
    assert new_version is not None
    [put] = k8s_api.requests()
    assert put.method == "PUT" and put.status == 200
    assert put.body["metadata"]["resourceVersion"] == relabelled["metadata"]["resourceVersion"]
    assert put.body["metadata"]["uid"] == version.uid
    assert put.body["metadata"]["labels"] == {"app": "demo"}
    spec = put.body["spec"]
    assert spec == {"holderIdentity": "me", "leaseDurationSeconds": 15,
                    "acquireTime": "2025-12-29T09:20:00.000000Z",
                    "renewTime": "2025-12-29T09:20:04.000000Z", "leaseTransitions": 3}
    assert isinstance(spec["leaseDurationSeconds"], int)


def test_a_lease_written_by_client_go_reads_as_its_record(k8s_api: FakeKubernetesApi) -> None:
    name = unique_lease_name()
    status, _, _ = call(k8s_api, "POST", f"{LEASES}/default/leases",
                        lease_json(name, "go-replica", leaseDurationSeconds=15,
                                   acquireTime="2025-12-29T09:20:00.000000Z",
                                   renewTime="2025-12-29T09:20:07.250000Z",
                                   leaseTransitions=4))
    assert status == 201
    snapshot = store_for(k8s_api, name).get(timeout=5)
    assert snapshot is not None
    assert snapshot[0] == LeaseRecord("go-replica", 15.0, NOW, NOW + 7.25, 4)


@pytest.mark.parametrize("spec", [None, {}, {"leaseDurationSeconds": 15},
                                  {"holderIdentity": "", "leaseDurationSeconds": 1}],
                         ids=["no spec", "empty spec", "no holder", "released"])
def test_lease_without_holder_reads_as_released_and_is_taken_at_once(
        k8s_api: FakeKubernetesApi, make: Callable[..., tuple[KubernetesElector, Events]],
        spec: dict[str, Any] | None) -> None:
    name = unique_lease_name()
    lease: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                             "metadata": {"name": name}}
    if spec is not None:
        lease["spec"] = spec
    assert call(k8s_api, "POST", f"{LEASES}/default/leases", lease)[0] == 201
    snapshot = store_for(k8s_api, name).get(timeout=5)
    assert snapshot is not None and snapshot[0].released and snapshot[0].transitions == 0
    elector, _ = make(name, "taker", lease_duration=30, renew_deadline=5)
    started = time.monotonic()
    elector.start()
    assert elector.wait_for_leadership(RETRY + SLACK)
    assert time.monotonic() - started < RETRY + SLACK  # not the 30 s lease
    assert elector.fencing_token == 1


UNREADABLE = {
    "holder not a string": {"holderIdentity": 7, "leaseTransitions": 4},
    "duration not an integer": {"holderIdentity": "x", "leaseDurationSeconds": "15",
                                "leaseTransitions": 4},
    "time not RFC 3339": {"holderIdentity": "x", "renewTime": "yesterday",
                          "leaseTransitions": 4},
    "time not a string": {"holderIdentity": "x", "acquireTime": 1767000000,
                          "leaseTransitions": 4},
}


@pytest.mark.parametrize("spec", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_unparseable_content_reads_as_an_unreadable_record_with_its_version(
        k8s_api: FakeKubernetesApi, spec: dict[str, Any]) -> None:
    name = unique_lease_name()
    k8s_api.plant("default", name, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                    "spec": spec})
    snapshot = store_for(k8s_api, name).get(timeout=5)
    assert snapshot is not None
    assert snapshot[0].holder == UNKNOWN_HOLDER and not snapshot[0].readable
    assert snapshot[0].transitions == 4 and isinstance(snapshot[1], LeaseVersion)


def test_unreadable_lease_is_taken_over_after_one_lease_duration_not_at_once(
        k8s_api: FakeKubernetesApi, make: Callable[..., tuple[KubernetesElector, Events]]) -> None:
    name = unique_lease_name()
    k8s_api.plant("default", name, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                    "spec": UNREADABLE["time not RFC 3339"]})
    elector, events = make(name, "taker")
    started = time.monotonic()
    elector.start()
    assert elector.wait_for_leadership(LEASE + 2 * RETRY + SLACK)
    assert events.first("started") - started >= LEASE - 0.05
    assert elector.fencing_token == 5
    lease = k8s_api.lease("default", name)
    assert lease is not None and lease["spec"]["renewTime"] != "yesterday"


def test_the_parser_never_raises_on_lease_content() -> None:
    for spec in [*UNREADABLE.values(), [], "x", {"leaseTransitions": -1},
                 {"leaseTransitions": True}, {"renewTime": "2026-02-30T00:00:00.000000Z"}]:
        record = backend.record_from_lease({"spec": spec})
        assert not record.readable


def test_answers_that_are_not_a_lease_raise_lease_store_error(
        k8s_api: FakeKubernetesApi) -> None:
    store = store_for(k8s_api, unique_lease_name())
    k8s_api.add_fault("garbage", count=1)
    with pytest.raises(LeaseStoreError, match="is not the Lease"):
        store.get(timeout=5)
    k8s_api.add_fault("status", status=502, count=1)
    with pytest.raises(LeaseStoreError, match="HTTP 502"):
        store.get(timeout=5)


# -- faults ------------------------------------------------------------------------------------


def test_each_request_ends_within_its_timeout_and_is_not_retried(
        k8s_api: FakeKubernetesApi) -> None:
    client = k8s_api_client(k8s_api.url)
    store = KubernetesLeaseStore(unique_lease_name(), namespace="default", api_client=client)
    version = store.create(LeaseRecord("me", 5.0, NOW, NOW, 0), timeout=5)
    assert version is not None
    k8s_api.add_fault("delay", seconds=5)
    k8s_api.clear_log()
    for attempt in (lambda: store.get(timeout=0.5),
                    lambda: store.update(LeaseRecord("me", 5.0, NOW, NOW, 0), version,
                                         timeout=0.5)):
        started = time.monotonic()
        with pytest.raises(LeaseStoreError, match="timeout 0.5s"):
            attempt()
        # Half of the timeout for connecting, half for the answer: the server is slow to answer.
        assert 0.25 - 0.05 <= time.monotonic() - started < 0.5 + SLACK
    assert [entry.method for entry in k8s_api.requests()] == ["GET", "PUT"]  # one try each
    assert client.configuration.retries is None  # the caller's client is left as it was


def test_dropped_connections_raise_lease_store_error(k8s_api: FakeKubernetesApi) -> None:
    store = store_for(k8s_api, unique_lease_name())
    k8s_api.add_fault("drop", count=1)
    with pytest.raises(LeaseStoreError, match="GET lease default/"):
        store.get(timeout=5)
    assert store.get(timeout=5) is None


def test_refused_connections_raise_lease_store_error() -> None:
    api = FakeKubernetesApi().start()
    api.stop()  # nothing listens on its port any more
    store = store_for(api, "leader")
    with pytest.raises(LeaseStoreError, match="NewConnectionError|Connection refused"):
        store.get(timeout=2)


@pytest.mark.parametrize("fault", [{"kind": "delay", "seconds": 3.0},
                                   {"kind": "status", "status": 500},
                                   {"kind": "drop"}],
                         ids=["slower than the request timeout", "500", "dropped connections"])
def test_leader_steps_down_within_renew_deadline_when_the_api_server_fails_and_recovers(
        k8s_api: FakeKubernetesApi, make: Callable[..., tuple[KubernetesElector, Events]],
        fault: dict[str, Any]) -> None:
    elector, events = make(unique_lease_name(), "leader")
    elector.start()
    assert elector.wait_for_leadership(5)
    time.sleep(0.5)
    failed_at = time.monotonic()
    k8s_api.add_fault(**fault)
    assert events.first("stopped", timeout=RENEW + RETRY + SLACK + 2) - failed_at <= \
        RENEW + RETRY + SLACK
    assert not elector.is_leader and elector.running
    k8s_api.clear_faults()
    assert wait_until(lambda: events.times("started", since=failed_at), LEASE + 5)
    assert elector.is_leader


def test_forbidden_names_the_verbs_to_grant(k8s_api: FakeKubernetesApi) -> None:
    store = store_for(k8s_api, "leader")
    k8s_api.add_fault("status", status=403)
    for attempt in (lambda: store.get(timeout=5),
                    lambda: store.create(LeaseRecord("me", 5.0, NOW, NOW, 0), timeout=5)):
        with pytest.raises(ConfigurationError, match="403 Forbidden") as error:
            attempt()
        message = str(error.value)
        assert "get, create and update on leases.coordination.k8s.io" in message
        assert "namespace 'default'" in message and "Role" in message


def test_forbidden_elector_keeps_campaigning_and_leads_once_allowed(
        k8s_api: FakeKubernetesApi, make: Callable[..., tuple[KubernetesElector, Events]],
        caplog: pytest.LogCaptureFixture) -> None:
    k8s_api.add_fault("status", status=403)
    elector, _ = make(unique_lease_name(), "blocked")
    elector.start()
    assert wait_until(lambda: "get, create and update" in caplog.text, 5)
    assert not elector.is_leader
    k8s_api.clear_faults()
    assert elector.wait_for_leadership(5)


def test_missing_namespace_is_reported(k8s_api: FakeKubernetesApi) -> None:
    store = store_for(k8s_api, "leader", namespace="absent")
    assert store.get(timeout=5) is None  # the API server answers a GET there with a plain 404
    with pytest.raises(ConfigurationError, match="namespace 'absent' does not exist"):
        store.create(LeaseRecord("me", 5.0, NOW, NOW, 0), timeout=5)


def test_conflict_storm_is_a_lost_race_and_the_elector_leads_after_it(
        k8s_api: FakeKubernetesApi, make: Callable[..., tuple[KubernetesElector, Events]]) -> None:
    name = unique_lease_name()
    store = store_for(k8s_api, name)
    k8s_api.add_fault("status", status=409, methods=["POST", "PUT"])
    assert store.create(LeaseRecord("me", 5.0, NOW, NOW, 0), timeout=5) is None
    elector, _ = make(name, "patient")
    elector.start()
    # Each attempt loses its race (on the fence Lease, written before the lease itself).
    assert wait_until(lambda: k8s_api.count("POST") >= 3, 5)
    assert not elector.is_leader
    k8s_api.clear_faults()
    assert elector.wait_for_leadership(5)


def test_recreated_lease_does_not_match_a_version_of_the_deleted_one(
        k8s_api: FakeKubernetesApi) -> None:
    name = unique_lease_name()
    store = store_for(k8s_api, name)
    old = store.create(LeaseRecord("me", 5.0, NOW, NOW, 0), timeout=5)
    assert isinstance(old, LeaseVersion)
    k8s_api.delete("default", name)
    assert store.update(LeaseRecord("me", 5.0, NOW, NOW, 0), old, timeout=5) is None
    assert store.get(timeout=5) is None  # the PUT did not create it again
    assert store.update(LeaseRecord("me", 5.0, NOW, NOW, 0), "1001", timeout=5) is None


# -- requests per renew and per poll -------------------------------------------------------------


def test_steady_state_renew_is_one_put_and_a_follower_polls_once_per_retry_period(
        k8s_api: FakeKubernetesApi, make: Callable[..., tuple[KubernetesElector, Events]]) -> None:
    name = unique_lease_name()
    leader, _ = make(name, "leader", agent="the-leader")
    follower, _ = make(name, "follower", agent="the-follower")
    leader.start()
    assert leader.wait_for_leadership(5)
    follower.start()
    assert wait_until(lambda: follower.leader == "leader", 5)
    time.sleep(0.5)
    window = 3.0
    begin = time.monotonic()
    time.sleep(window)
    end = time.monotonic()
    assert leader.is_leader and not follower.is_leader

    def requests(agent: str) -> list[str]:
        return [entry.method for entry in k8s_api.requests(agent=agent, since=begin)
                if entry.started < end]

    periods = window / RETRY
    renews = requests("the-leader")
    assert set(renews) == {"PUT"}, renews  # no read before a renew: exactly one request
    assert 0.5 * periods <= len(renews) <= periods + 1
    polls = requests("the-follower")
    assert set(polls) == {"GET"}, polls
    # A follower polls at most once per retry period (its jitter stays within the period).
    assert 0.5 * periods <= len(polls) <= periods / 0.8 + 1
    for entry in k8s_api.requests("PUT", agent="the-leader", since=begin):
        assert entry.body["metadata"]["resourceVersion"] and entry.body["metadata"]["uid"]


# -- interoperability with client-go -----------------------------------------------------------


class ClientGoContender:
    """A Go replica: client-go's tryAcquireOrRenew, release and LeaseLock over raw HTTP.

    It follows leaderelection.go: a fast-path update of the Lease it holds; else a read; a
    record it has not seen restarts its expiry clock (observed time, its own clock); a lease
    with a holder is respected until ``observed time + leaseDurationSeconds``; taking over
    increments leaseTransitions; release writes an empty holder with leaseDurationSeconds 1.
    """

    def __init__(self, api: FakeKubernetesApi, name: str, identity: str,
                 lease_duration: int = LEASE, retry_period: float = RETRY) -> None:
        self.api = api
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.retry_period = retry_period
        self.lease: dict[str, Any] | None = None  # LeaseLock.lease
        self.observed: dict[str, Any] = {}
        self.observed_raw = ""
        self.observed_time = -math.inf
        self.leading_since: float | None = None
        self.attempts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return f"{LEASES}/default/leases/{self.name}"

    def is_leader(self) -> bool:
        return self.observed.get("holderIdentity") == self.identity

    def lease_valid(self, now: float) -> bool:
        return self.observed_time + self.observed.get("leaseDurationSeconds", 0) > now

    def set_observed(self, record: dict[str, Any]) -> None:
        self.observed = dict(record)
        self.observed_time = time.monotonic()

    def update(self, record: dict[str, Any]) -> bool:
        if self.lease is None:
            return False
        self.lease["spec"] = record
        status, answer, _ = call(self.api, "PUT", self.path, self.lease)
        if status != 200:
            return False
        self.lease = answer
        return True

    def try_acquire_or_renew(self) -> bool:
        self.attempts += 1
        now = format_microtime(time.time())
        record = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_duration,
                  "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
        if self.is_leader() and self.lease_valid(time.monotonic()):
            record["acquireTime"] = self.observed.get("acquireTime", now)
            record["leaseTransitions"] = self.observed.get("leaseTransitions", 0)
            if self.update(record):
                self.set_observed(record)
                return True
        status, lease, _ = call(self.api, "GET", self.path)
        if status == 404:
            created, answer, _ = call(self.api, "POST", f"{LEASES}/default/leases",
                                      {"metadata": {"name": self.name, "namespace": "default"},
                                       "spec": record})
            if created != 201:
                return False
            self.lease = answer
            self.set_observed(record)
            return True
        if status != 200:
            return False
        self.lease = lease
        old = {key: value for key, value in (lease.get("spec") or {}).items()
               if key in record}  # LeaseSpecToLeaderElectionRecord
        raw = json.dumps(old, sort_keys=True)
        if raw != self.observed_raw:
            self.set_observed(old)
            self.observed_raw = raw
        if old.get("holderIdentity") and self.lease_valid(time.monotonic()) \
                and not self.is_leader():
            return False
        if self.is_leader():
            record["acquireTime"] = old.get("acquireTime", now)
            record["leaseTransitions"] = old.get("leaseTransitions", 0)
        else:
            record["leaseTransitions"] = old.get("leaseTransitions", 0) + 1
        if not self.update(record):
            return False
        self.set_observed(record)
        return True

    def release(self) -> None:
        if self.is_leader():
            now = format_microtime(time.time())
            record = {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": now,
                      "renewTime": now,
                      "leaseTransitions": self.observed.get("leaseTransitions", 0)}
            if self.update(record):
                self.set_observed(record)

    def start(self) -> ClientGoContender:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    succeeded = self.try_acquire_or_renew()
                except (OSError, http.client.HTTPException):  # client-go: a failed attempt
                    succeeded = False
                if succeeded and self.leading_since is None:
                    self.leading_since = time.monotonic()
                self._stop.wait(self.retry_period)

        self._thread = threading.Thread(target=run, daemon=True, name=f"go-{self.identity}")
        self._thread.start()
        return self

    def crash(self) -> None:
        """Stop without releasing, as a killed process would."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def test_lease_held_by_client_go_is_respected_for_its_lease_duration(
        k8s_api: FakeKubernetesApi, make: Callable[..., tuple[KubernetesElector, Events]]) -> None:
    name = unique_lease_name()
    go = ClientGoContender(k8s_api, name, "go-replica")
    assert go.try_acquire_or_renew() and go.try_acquire_or_renew()  # created, renewed
    go.start()
    seen: list[str] = []
    elector, events = make(name, "python-replica", on_new_leader=seen.append)
    elector.start()
    time.sleep(LEASE + 0.5)  # longer than the lease: only renewals keep the Go replica leading
    assert not events.times("started") and seen == ["go-replica"]
    assert elector.leader == "go-replica"
    go.crash()
    crashed_at = time.monotonic()
    assert elector.wait_for_leadership(LEASE + 2 * RETRY + SLACK + 1)
    took_over = events.first("started") - crashed_at
    # The last renew came at most one retry period (and a late wake-up) before the crash.
    assert LEASE - RETRY - 0.25 <= took_over <= LEASE + 2 * RETRY + SLACK
    lease = k8s_api.lease("default", name)
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "python-replica"
    assert lease["spec"]["leaseTransitions"] == go.observed["leaseTransitions"] + 1
    assert elector.fencing_token == lease["spec"]["leaseTransitions"]


def test_client_go_contender_respects_our_lease_and_takes_our_release_at_once(
        k8s_api: FakeKubernetesApi, make: Callable[..., tuple[KubernetesElector, Events]]) -> None:
    name = unique_lease_name()
    elector, _ = make(name, "python-replica", lease_duration=10, renew_deadline=RENEW)
    elector.start()
    assert elector.wait_for_leadership(5)
    token = elector.fencing_token
    go = ClientGoContender(k8s_api, name, "go-replica", lease_duration=10).start()
    assert wait_until(lambda: go.attempts >= 5, 5)
    assert go.leading_since is None and go.observed["holderIdentity"] == "python-replica"
    stopped_at = time.monotonic()
    elector.stop(release=True)
    assert wait_until(lambda: go.leading_since is not None, 10 * RETRY + SLACK)
    assert go.leading_since is not None
    assert go.leading_since - stopped_at <= 2 * RETRY + SLACK  # not the 10 s lease
    [release] = [entry.body["spec"] for entry in k8s_api.requests("PUT", name=name)
                 if entry.body["spec"]["holderIdentity"] == ""]
    assert release["leaseDurationSeconds"] == 1 and release["leaseTransitions"] == token
    assert MICROTIME.fullmatch(release["renewTime"]) and MICROTIME.fullmatch(
        release["acquireTime"])
    # Both "now" (the engine reads the clock twice, so they may differ by microseconds).
    assert abs(parse_microtime(release["renewTime"]) -
               parse_microtime(release["acquireTime"])) < 0.01
    assert go.observed["leaseTransitions"] == token + 1
    go.crash()


# -- real processes ------------------------------------------------------------------------------


def test_demo_and_status_commands_use_the_kubeconfig(
        spawn: Callable[..., Process], tmp_path: Path, k8s_api: FakeKubernetesApi) -> None:
    name = unique_lease_name("demo")
    env = {**os.environ, "KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig",
                                                              k8s_api.url, "default"))}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    fast = ["--backend", "kubernetes", "--lease-name", name, "--lease-duration", "3",
            "--renew-deadline", "2", "--retry-period", "0.2", "--job-interval", "0.3",
            "--heartbeat", "0.2"]
    first = spawn("-m", "singleton_jobs", "demo", "--identity", "node-1", *fast, env=env)
    assert first.wait_for_line(lambda line: "BECAME LEADER" in line, 20), first.output()
    assert f"[node-1] Lease: default/{name} on {k8s_api.url}" in first.output()
    second = spawn("-m", "singleton_jobs", "demo", "--identity", "node-2", *fast, env=env)
    assert second.wait_for_line(lambda line: "Status: FOLLOWER" in line, 20)
    status = subprocess.run([sys.executable, "-m", "singleton_jobs", "status", "--backend",
                             "kubernetes", "--lease-name", name], env=env, capture_output=True,
                            text=True, timeout=60)
    assert "holder:      node-1" in status.stdout, status.stderr
    seen = len(second.lines)
    interrupted = time.monotonic()
    first.signal(signal.SIGINT)
    assert first.popen.wait(10) == 0
    became = second.wait_for_line(lambda line: "BECAME LEADER" in line, 5, after=seen)
    assert became is not None
    took_over = next(at for at, line in second.lines if line == became)
    assert took_over - interrupted < 2 * 0.2 + SLACK  # released: no need to wait 3 s


# -- the fake API server is as strict as the real one -------------------------------------------


def test_fake_api_creates_reads_updates_and_deletes_with_string_resource_versions(
        k8s_api: FakeKubernetesApi) -> None:
    name = unique_lease_name()
    status, created, _ = call(k8s_api, "POST", f"{LEASES}/default/leases", lease_json(name))
    assert status == 201
    metadata = created["metadata"]
    assert metadata["uid"] and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                                            metadata["creationTimestamp"])
    assert isinstance(metadata["resourceVersion"], str)
    assert call(k8s_api, "GET", f"{LEASES}/default/leases/{name}")[1] == created
    versions = [int(metadata["resourceVersion"])]
    current = created
    for _ in range(3):
        current["spec"]["leaseTransitions"] += 1
        status, current, _ = call(k8s_api, "PUT", f"{LEASES}/default/leases/{name}", current)
        assert status == 200 and current["metadata"]["uid"] == metadata["uid"]
        assert current["metadata"]["creationTimestamp"] == metadata["creationTimestamp"]
        versions.append(int(current["metadata"]["resourceVersion"]))
    assert versions == sorted(set(versions))
    status, listed, _ = call(k8s_api, "GET", f"{LEASES}/default/leases")
    assert status == 200 and listed["kind"] == "LeaseList"
    assert name in [item["metadata"]["name"] for item in listed["items"]]
    status, deleted, _ = call(k8s_api, "DELETE", f"{LEASES}/default/leases/{name}")
    assert status == 200 and deleted["status"] == "Success"
    assert call(k8s_api, "GET", f"{LEASES}/default/leases/{name}")[0] == 404


def assert_status(answer: Any, code: int, reason: str) -> dict[str, Any]:
    assert isinstance(answer, dict)
    assert answer["kind"] == "Status" and answer["apiVersion"] == "v1"
    assert answer["metadata"] == {} and answer["status"] == "Failure"
    assert answer["code"] == code and answer["reason"] == reason
    assert isinstance(answer["message"], str) and answer["message"]
    return answer


def test_fake_api_concurrency_errors(k8s_api: FakeKubernetesApi) -> None:
    name = unique_lease_name()
    path = f"{LEASES}/default/leases/{name}"
    status, created, _ = call(k8s_api, "POST", f"{LEASES}/default/leases", lease_json(name))
    status, answer, _ = call(k8s_api, "POST", f"{LEASES}/default/leases", lease_json(name))
    assert status == 409
    details = assert_status(answer, 409, "AlreadyExists")["details"]
    assert details == {"name": name, "group": "coordination.k8s.io", "kind": "leases"}
    status, updated, _ = call(k8s_api, "PUT", path, created)
    assert status == 200
    status, answer, _ = call(k8s_api, "PUT", path, created)  # stale resourceVersion
    assert status == 409
    assert "the object has been modified" in assert_status(answer, 409, "Conflict")["message"]
    no_version = json.loads(json.dumps(updated))
    del no_version["metadata"]["resourceVersion"]
    status, answer, _ = call(k8s_api, "PUT", path, no_version)
    assert status == 422  # leases do not allow unconditional updates
    assert assert_status(answer, 422, "Invalid")["details"]["causes"][0]["field"] == \
        "metadata.resourceVersion"
    other_uid = json.loads(json.dumps(updated))
    other_uid["metadata"]["uid"] = "not-the-uid"
    status, answer, _ = call(k8s_api, "PUT", path, other_uid)
    assert status == 409 and "Precondition failed" in assert_status(answer, 409,
                                                                    "Conflict")["message"]


def test_fake_api_not_found_and_missing_namespaces(k8s_api: FakeKubernetesApi) -> None:
    status, answer, _ = call(k8s_api, "GET", f"{LEASES}/default/leases/never-made")
    assert status == 404
    assert assert_status(answer, 404, "NotFound")["details"] == {
        "name": "never-made", "group": "coordination.k8s.io", "kind": "leases"}
    assert call(k8s_api, "GET", f"{LEASES}/nowhere/leases/never-made")[0] == 404
    body = lease_json("x")
    body["metadata"]["namespace"] = "nowhere"
    status, answer, _ = call(k8s_api, "POST", f"{LEASES}/nowhere/leases", body)
    assert status == 404
    assert assert_status(answer, 404, "NotFound")["details"] == {"name": "nowhere",
                                                                 "kind": "namespaces"}
    assert answer["message"] == 'namespaces "nowhere" not found'


def test_fake_api_put_of_a_missing_lease_creates_it_unless_a_uid_is_given(
        k8s_api: FakeKubernetesApi) -> None:
    name = unique_lease_name()
    body = lease_json(name)
    body["metadata"].update(uid="some-uid", resourceVersion="5")
    path = f"{LEASES}/default/leases/{name}"
    assert call(k8s_api, "PUT", path, body)[0] == 409
    del body["metadata"]["uid"]
    status, created, _ = call(k8s_api, "PUT", path, body)
    assert status == 201 and created["metadata"]["resourceVersion"] != "5"


INVALID = {
    "zero duration": ({"leaseDurationSeconds": 0}, "spec.leaseDurationSeconds",
                      "Invalid value: 0: must be greater than 0"),
    "negative duration": ({"leaseDurationSeconds": -5}, "spec.leaseDurationSeconds",
                          "must be greater than 0"),
    "negative transitions": ({"leaseTransitions": -1}, "spec.leaseTransitions",
                             "must be greater than or equal to 0"),
    "preferred holder without strategy": ({"preferredHolder": "x"}, "spec.preferredHolder",
                                          "may only be specified if `strategy` is defined"),
    "unknown strategy": ({"strategy": "Bogus"}, "spec.strategy.strategy",
                         "Unsupported value"),
}


@pytest.mark.parametrize(("spec", "field", "message"), INVALID.values(), ids=INVALID.keys())
def test_fake_api_rejects_invalid_specs_with_422(k8s_api: FakeKubernetesApi,
                                                 spec: dict[str, Any], field: str,
                                                 message: str) -> None:
    name = unique_lease_name()
    status, answer, _ = call(k8s_api, "POST", f"{LEASES}/default/leases",
                             lease_json(name, **spec))
    assert status == 422
    assert_status(answer, 422, "Invalid")
    assert answer["message"].startswith(f'Lease.coordination.k8s.io "{name}" is invalid: ')
    [cause] = answer["details"]["causes"]
    assert cause["field"] == field and message in cause["message"]
    assert answer["details"]["kind"] == "Lease"
    assert answer["details"]["group"] == "coordination.k8s.io"


@pytest.mark.parametrize("name", ["Bad_Name", "a" * 254, "-x", "x.", "with space"])
def test_fake_api_rejects_names_that_are_not_dns_subdomains(k8s_api: FakeKubernetesApi,
                                                            name: str) -> None:
    status, answer, _ = call(k8s_api, "POST", f"{LEASES}/default/leases", lease_json(name))
    assert status == 422
    assert assert_status(answer, 422, "Invalid")["details"]["causes"][0]["field"] == \
        "metadata.name"


def test_fake_api_requires_a_name(k8s_api: FakeKubernetesApi) -> None:
    body = lease_json("x")
    del body["metadata"]["name"]
    status, answer, _ = call(k8s_api, "POST", f"{LEASES}/default/leases", body)
    assert status == 422 and "name or generateName is required" in answer["message"]
    body["metadata"]["generateName"] = "gen-"
    status, answer, _ = call(k8s_api, "POST", f"{LEASES}/default/leases", body)
    assert status == 201 and re.fullmatch(r"gen-[a-z0-9]{5}", answer["metadata"]["name"])


UNDECODABLE = {
    "time without fraction": {"renewTime": "2026-01-10T14:30:25Z"},
    "time with three digits": {"renewTime": "2026-01-10T14:30:25.123Z"},
    "time with seven digits": {"renewTime": "2026-01-10T14:30:25.1234567Z"},
    "time without zone": {"acquireTime": "2026-01-10T14:30:25.123456"},
    "month 13": {"renewTime": "2026-13-10T14:30:25.123456Z"},
    "time as number": {"renewTime": 1767000000},
    "fractional duration": {"leaseDurationSeconds": 1.5},
    "duration as string": {"leaseDurationSeconds": "15"},
    "duration beyond int32": {"leaseDurationSeconds": 2**31},
    "holder as number": {"holderIdentity": 5},
    "transitions as bool": {"leaseTransitions": True},
}


@pytest.mark.parametrize("spec", UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_fake_api_rejects_what_go_cannot_decode_with_400(k8s_api: FakeKubernetesApi,
                                                         spec: dict[str, Any]) -> None:
    status, answer, _ = call(k8s_api, "POST", f"{LEASES}/default/leases",
                             lease_json(unique_lease_name(), **spec))
    assert status == 400
    assert "cannot be handled as a Lease" in assert_status(answer, 400, "BadRequest")["message"]


def test_fake_api_rejects_malformed_requests(k8s_api: FakeKubernetesApi) -> None:
    name = unique_lease_name()
    collection = f"{LEASES}/default/leases"
    assert call(k8s_api, "POST", collection, b"{not json")[0] == 400
    assert call(k8s_api, "POST", collection, [1, 2])[0] == 400
    assert call(k8s_api, "POST", collection, {**lease_json(name), "apiVersion": "v1"})[0] == 400
    assert call(k8s_api, "POST", collection, lease_json(name), "text/plain")[0] == 415
    elsewhere = lease_json(name)
    elsewhere["metadata"]["namespace"] = "kube-system"
    assert call(k8s_api, "POST", collection, elsewhere)[0] == 400
    status, created, _ = call(k8s_api, "POST", collection, lease_json(name))
    status, answer, _ = call(k8s_api, "PUT", f"{collection}/other-name", created)
    assert status == 400 and "does not match the name on the URL" in answer["message"]
    assert call(k8s_api, "PATCH", f"{collection}/{name}", {})[0] == 405


def test_fake_api_stores_times_in_utc_and_drops_unknown_fields_with_a_warning(
        k8s_api: FakeKubernetesApi) -> None:
    name = unique_lease_name()
    body = lease_json(name, holder="", renewTime="2025-12-29T11:20:00.500000+02:00")
    body["spec"]["somethingNew"] = 1
    status, created, response = call(k8s_api, "POST", f"{LEASES}/default/leases", body)
    assert status == 201
    assert created["spec"]["renewTime"] == "2025-12-29T09:20:00.500000Z"
    assert created["spec"]["holderIdentity"] == "" and "somethingNew" not in created["spec"]
    assert response.getheader("Warning") == r'299 - "unknown field \"spec.somethingNew\""'


def test_fake_api_runs_standalone_with_admin_endpoints(tmp_path: Path) -> None:
    server = subprocess.Popen([sys.executable, str(HERE / "k8s_api.py"), "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        store = KubernetesLeaseStore("standalone", namespace="default",
                                     api_client=k8s_api_client(url, "standalone-test"))
        assert store.get(timeout=5) is None
        assert store.create(LeaseRecord("me", 5.0, NOW, NOW, 0), timeout=5) is not None
        host = url.removeprefix("http://")
        connection = http.client.HTTPConnection(host, timeout=10)
        connection.request("GET", "/_fake/requests")
        logged = json.loads(connection.getresponse().read())["requests"]
        # The lease is missing; creating it first keeps its fencing floor in "standalone-fence".
        assert [(e["method"], e["status"], e["path"].rsplit("/", 1)[1]) for e in logged] == [
            ("GET", 404, "standalone"), ("GET", 404, "standalone-fence"),
            ("POST", 201, "leases"), ("POST", 201, "leases")]
        assert {e["agent"] for e in logged} == {"standalone-test"}
        connection.request("POST", "/_fake/faults", body=json.dumps(
            {"kind": "status", "status": 500, "count": 1}))
        answer = connection.getresponse()
        assert answer.status == 201 and json.loads(answer.read())["kind"] == "status"
        with pytest.raises(LeaseStoreError, match="HTTP 500"):
            store.get(timeout=5)
        assert store.get(timeout=5) is not None
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0


# -- the example manifests -----------------------------------------------------------------------


def test_example_manifests_grant_what_the_backend_uses_to_three_replicas() -> None:
    yaml = pytest.importorskip("yaml")  # installed with kubernetes
    directory = HERE.parent / "examples" / "kubernetes"
    objects = {document["kind"]: document for path in sorted(directory.glob("*.yaml"))
               for document in yaml.safe_load_all(path.read_text())}
    assert set(objects) == {"ServiceAccount", "Role", "RoleBinding", "Deployment"}
    [rule] = objects["Role"]["rules"]
    assert rule == {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                    "verbs": ["get", "create", "update"]}
    account = objects["ServiceAccount"]["metadata"]["name"]
    binding = objects["RoleBinding"]
    assert binding["roleRef"]["name"] == objects["Role"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    deployment = objects["Deployment"]["spec"]
    assert deployment["replicas"] == 3
    pod = deployment["template"]["spec"]
    assert pod["serviceAccountName"] == account
    [container] = pod["containers"]
    assert container["args"][:3] == ["demo", "--backend", "kubernetes"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in \
        container["env"]
    dockerfile = (directory / "Dockerfile").read_text()
    assert "ENTRYPOINT [\"singleton-jobs\"]" in dockerfile and "metrics]" in dockerfile
    # The liveness probe asks /healthz on the port the demo serves it on (the real parser reads
    # the container's arguments), and that port is exposed for scraping /metrics.
    from singleton_jobs.cli import build_parser

    args = build_parser().parse_args(container["args"])
    assert args.metrics_port is not None and args.liveness_timeout is not None
    [port] = container["ports"]
    assert port["containerPort"] == args.metrics_port
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] in (port["name"], port["containerPort"])
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.metrics_port)
