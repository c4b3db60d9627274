"""The Redis backend on a real Redis server: configuration, elections, operator actions, faults.

The conformance suite (test_conformance.py) runs on Redis too; this file covers what is
particular to Redis. Tests that restart, pause or reconfigure a server run their own
(``own_redis`` from tests/servers.py) on a free port; the shared server at ``REDIS_URL`` is only
read and written under keys of this test's own.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from conftest import FAST, unique_lease_name, wait_until
from servers import REDIS_URL, Server, TcpProxy, own_redis, require_server, tcp_proxy  # noqa: F401

from singleton_jobs import (
    ConfigurationError,
    Elector,
    LeaseRecord,
    LeaseStoreError,
    RedisElector,
    RedisLeaseStore,
)
from singleton_jobs.backends import redis as redis_backend

# Timings for faults that make calls time out: a call may take the whole renew deadline.
SLOW = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.1}
# Slack for a noisy 2-core machine, on top of what the semantics guarantee.
SLACK = 1.5


def lease_name(prefix: str = "redis") -> str:
    return unique_lease_name(f"{prefix}-{os.getpid()}-{time.time_ns()}")


def record(holder: str, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, 15.0, 1_767_000_000.25, 1_767_000_000.5, transitions)


@pytest.fixture
def url() -> str:
    require_server(REDIS_URL)
    return REDIS_URL


@pytest.fixture
def admin(url: str) -> Iterator[redis.Redis]:
    """An operator's client on the shared server."""
    client = redis.Redis.from_url(url)
    yield client
    client.close()


@pytest.fixture
def server(own_redis: Server) -> Server:  # noqa: F811 - the fixture imported above
    """A Redis server of this test's own, to restart, pause or reconfigure."""
    return own_redis


@pytest.fixture
def proxy_to(tcp_proxy: Callable[[str, int], TcpProxy]  # noqa: F811 - the fixture
             ) -> Callable[[str], TcpProxy]:
    """``proxy_to(url)``: a TCP proxy to the Redis server at ``url``."""
    def make(target: str) -> TcpProxy:
        parts = urlsplit(target)
        return tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 6379)

    return make


@pytest.fixture
def own_admin(server: Server) -> Iterator[redis.Redis]:
    """An operator's client on this test's own server."""
    client = redis.Redis.from_url(server.url, socket_timeout=10)
    yield client
    client.close()


class Fleet:
    """Electors on one lease, watched by a sampler: never two leaders, tokens only grow.

    Leadership is read one elector after the other, so a handover between two reads could
    look like two leaders; two electors count as leading at once only if both lead in two
    consecutive sweeps (then both led at the moment the second one was read in the first).
    """

    def __init__(self, electors: list[RedisElector]) -> None:
        self.electors = electors
        self.tokens: list[tuple[str, int]] = []  # (identity, token) at every change seen
        self.history: list[tuple[float, frozenset[str]]] = []  # (when, leaders) on change
        self.violations: list[str] = []
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Fleet:
        for elector in self.electors:
            elector.start()
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._sampler.join(5)
        for elector in self.electors:
            elector.stop()

    def _sample(self) -> None:
        previous: set[int] = set()
        while not self._done.is_set():
            now = time.monotonic()
            leading = {i for i, elector in enumerate(self.electors) if elector.is_leader}
            both = leading & previous
            if len(both) > 1:
                self.violations.append(
                    f"two leaders: {sorted(self.electors[i].identity for i in both)}")
            previous = leading
            identities = frozenset(self.electors[i].identity for i in leading)
            if not self.history or self.history[-1][1] != identities:
                self.history.append((now, identities))
            for i in leading:
                elector = self.electors[i]
                token = elector.fencing_token
                if token is None or (self.tokens and self.tokens[-1] == (elector.identity, token)):
                    continue
                if self.tokens and token <= self.tokens[-1][1]:
                    self.violations.append(f"token {token} of {elector.identity} after "
                                           f"{self.tokens[-1]}")
                self.tokens.append((elector.identity, token))
            time.sleep(0.002)

    def leader(self, timeout: float = 10.0, other_than: Elector | None = None) -> RedisElector:
        found: list[RedisElector] = []

        def check() -> bool:
            found[:] = [e for e in self.electors if e.is_leader]
            return len(found) == 1 and found[0] is not other_than

        assert wait_until(check, timeout), f"no single leader within {timeout}s: {found}"
        return found[0]

    def nobody_leads(self) -> bool:
        return not any(e.is_leader for e in self.electors)

    def leaders_between(self, start: float, end: float) -> set[str]:
        """Everyone the sampler saw leading between two monotonic times."""
        seen: set[str] = set()
        for index, (when, leaders) in enumerate(self.history):
            until = (self.history[index + 1][0] if index + 1 < len(self.history)
                     else math.inf)
            if when <= end and until >= start:
                seen |= leaders
        return seen

    def check(self) -> None:
        assert not self.violations, self.violations


def make_elector(url: str, name: str, identity: str | None = None,
            timings: dict[str, float] = FAST, **options: Any) -> RedisElector:
    """A RedisElector with the given timings (FAST, SLOW or a test's own)."""
    return RedisElector(url, name, identity=identity,
                        lease_duration=timings["lease_duration"],
                        renew_deadline=timings["renew_deadline"],
                        retry_period=timings["retry_period"], **options)


def fleet(url: str, name: str, count: int, timings: dict[str, float] = FAST) -> Fleet:
    return Fleet([make_elector(url, name, f"replica-{i}", timings) for i in range(count)])


def followers_saw(electors: list[RedisElector], leader: RedisElector) -> bool:
    return all(e.leader == leader.identity for e in electors if e is not leader)


# -- configuration ------------------------------------------------------------------------------

def test_import_singleton_jobs_does_not_import_redis() -> None:
    code = ("import sys, singleton_jobs; singleton_jobs.RedisElector; "
            "print('redis' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "False"


def test_missing_redis_package_names_the_extra_to_install() -> None:
    code = ("import sys; sys.modules['redis'] = None\n"
            "from singleton_jobs import RedisElector\n"
            "try:\n    RedisElector('redis://localhost', 'jobs')\n"
            "except ImportError as exc:\n    print(exc)\n")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert 'pip install "singleton_jobs[redis]"' in output


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("redis://localhost", ""), {}, "lease name '' must not be empty"),
    (("redis://localhost", "a b"), {}, "whitespace"),
    (("redis://localhost", "a\x00b"), {}, "control character"),
    (("redis://localhost", "a{b}"), {}, "hash tag"),
    (("redis://localhost", "x" * 201), {}, "at most 200"),
    (("redis://localhost", 7), {}, "must be a string, not int"),
    (("redis://localhost", "jobs"), {"key_prefix": "app{1}:"}, "hash tag"),
    (("redis://localhost", "jobs"), {"key_prefix": None}, "key_prefix None must be a string"),
    (("", "jobs"), {}, "the Redis URL is empty"),
    (("http://localhost:6379", "jobs"), {}, "invalid Redis URL"),
    ((42, "jobs"), {}, "must be a Redis URL or a redis.Redis client, not int"),
    ((redis.asyncio.Redis(), "jobs"), {}, "asyncio client"),
    (("redis://localhost", "jobs"), {"lease_duration": 1, "renew_deadline": 2},
     "lease_duration"),
    (("redis://localhost", "jobs"), {"identity": " padded "}, "whitespace"),
])
def test_bad_configuration_is_refused_with_the_fix(args: tuple[Any, ...], kwargs: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("{", r"\{")):
        RedisElector(*args, **kwargs)


def test_bad_url_message_names_the_fix_and_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisLeaseStore("http://user:hunter2@localhost:6379", "jobs")
    assert "hunter2" not in str(caught.value)
    assert "redis://localhost:6379/0" in str(caught.value)  # the fix: an example URL


def test_name_says_where_the_lease_is_without_the_password() -> None:
    store = RedisLeaseStore("redis://user:hunter2@cache.example:6380/3", "mailer",
                            key_prefix="app:")
    assert store.name == "redis://cache.example:6380/3/app:{mailer}"
    elector = RedisElector("rediss://cache.example", "mailer")
    assert elector.store.name == "rediss://cache.example:6379/0/singleton_jobs:{mailer}"
    assert elector.lease_name == "mailer"
    assert "hunter2" not in repr(RedisElector("redis://:hunter2@cache.example", "mailer"))


def test_wrong_credentials_are_a_configuration_error_naming_the_fix(url: str) -> None:
    parts = urlsplit(url)
    store = RedisLeaseStore(f"redis://nobody:wrong@{parts.hostname}:{parts.port}/0",
                            lease_name())
    with pytest.raises(ConfigurationError, match="rejected the credentials.*user name and "
                                                 "password") as caught:
        store.get(timeout=2)
    assert ":wrong@" not in str(caught.value)


# -- storage ------------------------------------------------------------------------------------

def test_lease_is_one_hash_and_a_fence_in_one_cluster_slot(url: str,
                                                           admin: redis.Redis) -> None:
    name = lease_name()
    elector = make_elector(url, name, "a")
    with elector:
        assert elector.wait_for_leadership(5)
        key = f"singleton_jobs:{{{name}}}"
        fields = admin.hgetall(key)
        assert set(fields) == {b"holder", b"lease_duration", b"acquire_time", b"renew_time",
                               b"transitions", b"version"}
        assert fields[b"holder"] == b"a"
        assert admin.get(key + ":fence") == str(elector.fencing_token).encode()
        assert admin.ttl(key) == -1  # expiry is judged by the electors, never by the server
        assert redis.crc.key_slot(key.encode()) == redis.crc.key_slot(f"{key}:fence".encode())


def test_times_read_back_exactly(url: str) -> None:
    store = RedisLeaseStore(url, lease_name())
    rng = random.Random(7)
    times = [1_767_000_000.123456, 0.1 + 0.2, 1e-6, 1_767_000_000.0,
             *(round(rng.uniform(1e9, 2e9), 6) for _ in range(20))]
    version = store.create(LeaseRecord("a", 0.5, times[0], times[1], 0), timeout=2)
    for acquire, renew in zip(times[2:], times[3:]):
        written = LeaseRecord("a", 15.25, acquire, renew, 1)
        version = store.update(written, version, timeout=2)
        snapshot = store.get(timeout=2)
        assert snapshot == (written, version)


def test_versions_start_random_so_a_recreated_record_never_repeats_one(
        url: str, admin: redis.Redis) -> None:
    store = RedisLeaseStore(url, lease_name())
    first = store.create(record("a"), timeout=2)
    admin.delete(store.record_key, store.fence_key)
    second = store.create(record("a"), timeout=2)
    assert first is not None and second is not None and first != second
    assert not {first, second} & {0, 1}
    assert store.update(record("thief", 1), first, timeout=2) is None  # the ABA case
    assert store.update(record("a", 1), second, timeout=2) == second + 1  # type: ignore[operator]


def test_floor_survives_the_record_and_is_unknown_once_lost(url: str,
                                                            admin: redis.Redis) -> None:
    name = lease_name()
    store = RedisLeaseStore(url, name)
    assert store.transitions_floor(timeout=2) == -1  # a fleet's first start
    version = store.create(record("a", 3), timeout=2)
    store.update(record("b", 4), version, timeout=2)
    admin.delete(store.record_key)
    assert store.transitions_floor(timeout=2) == 4
    assert store.create(record("c", 4), timeout=2) is None  # would repeat token 4
    assert store.create(record("c", 5), timeout=2) is not None
    admin.delete(store.record_key, store.fence_key)
    assert store.transitions_floor(timeout=2) is None  # it saw a fence; now it cannot tell
    assert RedisLeaseStore(url, name).transitions_floor(timeout=2) == -1  # a new one cannot
    admin.set(store.fence_key, "garbage")
    assert store.transitions_floor(timeout=2) is None


def test_unreadable_content_is_a_record_held_by_nobody_valid(url: str,
                                                             admin: redis.Redis) -> None:
    store = RedisLeaseStore(url, lease_name())
    key = store.record_key
    admin.set(key, "x")  # a key of another type: WRONGTYPE for HGETALL
    snapshot = store.get(timeout=2)
    assert snapshot is not None and not snapshot[0].readable
    assert store.update(record("a", 1), snapshot[1], timeout=2) is not None  # taken over
    for field, value in [(b"holder", b"\x01bad"), (b"transitions", b"-1"),
                         (b"lease_duration", b"nan"), (b"acquire_time", b"soon")]:
        version = store.get(timeout=2)
        assert version is not None
        admin.hset(key, field, value)
        garbled = store.get(timeout=2)
        assert garbled is not None and not garbled[0].readable
        store.update(record("a", 1), garbled[1], timeout=2)
    admin.hdel(key, "renew_time", "version")
    garbled = store.get(timeout=2)
    assert garbled is not None and not garbled[0].readable and garbled[0].transitions == 1
    assert store.update(record("a", 2), garbled[1], timeout=2) is not None


def test_release_is_published_on_the_channel(url: str, admin: redis.Redis) -> None:
    name = lease_name()
    store = RedisLeaseStore(url, name, key_prefix="app:")
    pubsub = admin.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe("app:released")
    try:
        assert wait_until(lambda: pubsub.get_message(timeout=0.1) is None, 1)
        version = store.create(record("a"), timeout=2)
        version = store.update(record("a"), version, timeout=2)  # a renew: no message
        assert pubsub.get_message(timeout=0.3) is None
        store.update(record(""), version, timeout=2)
        message = pubsub.get_message(timeout=2)
        assert message is not None and message["data"] == name.encode()
    finally:
        pubsub.close()


def test_client_passed_in_is_not_changed_and_its_settings_carry_over(url: str) -> None:
    parts = urlsplit(url)
    client = redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=5,
                         decode_responses=True)
    settings = dict(client.connection_pool.connection_kwargs)
    retry = client.get_retry()
    store = RedisLeaseStore(client, lease_name())
    try:
        assert store.create(record("a"), timeout=2) is not None
        assert store.get(timeout=2) is not None
        assert client.connection_pool.connection_kwargs == settings
        assert client.get_retry() is retry
        assert client.exists(store.record_key) == 1  # in the client's database 5
        assert client.hget(store.record_key, "holder") == "a"  # and it still decodes
        assert redis.Redis.from_url(url).exists(store.record_key) == 0
    finally:
        client.delete(store.record_key, store.fence_key)
        client.close()


def test_every_call_is_bounded_by_its_timeout_without_hidden_retries(
        url: str, proxy_to: Callable[[str], TcpProxy]) -> None:
    proxy = proxy_to(url)
    # A client with redis-py's default retries (three, with back-off) is given: the store
    # must not retry with it.
    client = redis.Redis.from_url(proxy.url_for(url))
    store = RedisLeaseStore(client, lease_name())
    assert store.get(timeout=2) is None
    proxy.blackhole()
    for _ in range(2):  # an open connection, then a new one
        started = time.monotonic()
        with pytest.raises(LeaseStoreError, match="timeout 0.3s"):
            store.get(timeout=0.3)
        assert time.monotonic() - started < 0.3 + 0.5
    proxy.blackhole(False)
    assert store.get(timeout=2) is None  # the next call connects again
    proxy.drop_connections()
    with contextlib.suppress(LeaseStoreError):
        store.get(timeout=2)  # the reset connection fails at most this call
    assert store.get(timeout=2) is None
    proxy.refuse()
    proxy.drop_connections()
    started = time.monotonic()
    with pytest.raises(LeaseStoreError, match="ConnectionError"):
        store.get(timeout=2)
    assert time.monotonic() - started < 1.0
    client.close()


class _CountingStore(RedisLeaseStore):
    """Counts the store calls an elector makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = {"get": 0, "create": 0, "update": 0, "floor": 0}

    def get(self, *, timeout: float = 10.0) -> Any:
        self.calls["get"] += 1
        return super().get(timeout=timeout)

    def create(self, record: LeaseRecord, *, timeout: float = 10.0) -> Any:
        self.calls["create"] += 1
        return super().create(record, timeout=timeout)

    def update(self, record: LeaseRecord, version: Any, *, timeout: float = 10.0) -> Any:
        self.calls["update"] += 1
        return super().update(record, version, timeout=timeout)

    def transitions_floor(self, *, timeout: float = 10.0) -> int | None:
        self.calls["floor"] += 1
        return super().transitions_floor(timeout=timeout)


def _command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def test_a_renew_is_one_command_and_a_follower_poll_is_one_command(
        server: Server, own_admin: redis.Redis) -> None:
    name = lease_name()
    leader = Elector(_CountingStore(server.url, name), identity="a", **FAST)  # type: ignore[arg-type]
    follower = Elector(_CountingStore(server.url, name), identity="b",
                       **FAST)  # type: ignore[arg-type]
    with leader:
        assert leader.wait_for_leadership(5)
        follower.start()
        assert wait_until(lambda: follower.leader == "a", 5)
        time.sleep(0.3)
        stores = [leader.store, follower.store]
        before_calls = [dict(store.calls) for store in stores]  # type: ignore[attr-defined]
        before = _command_calls(own_admin)
        time.sleep(1.5)
        after = _command_calls(own_admin)
        after_calls = [dict(store.calls) for store in stores]  # type: ignore[attr-defined]
        assert leader.is_leader
        follower.stop()
    counted = {command: after.get(command, 0) - before.get(command, 0) for command in after}
    led, followed = ({call: a[call] - b[call] for call in a}
                     for a, b in zip(after_calls, before_calls))
    # The leader only renews, the follower only reads: one command each, nothing else.
    assert led["get"] == led["create"] == led["floor"] == 0 and led["update"] >= 10
    assert followed["update"] == followed["create"] == followed["floor"] == 0
    assert followed["get"] >= 10
    # A call in flight at either snapshot may fall on the other side of it: one each.
    assert abs(counted.get("evalsha", 0) - led["update"]) <= 1
    assert abs(counted.get("hgetall", 0) - followed["get"]) <= 1
    # The server counts the commands a script runs too: each renew reads the fence once, so
    # every GET is a script's, and nothing else was sent.
    assert counted.get("get", 0) == counted.get("evalsha", 0)
    in_scripts = {"type", "hget", "get", "set", "hset", "hincrby", "publish"}
    # The two stores share one pool: when their calls overlap, a second connection opens in
    # the window, with its handshake (HELLO, CLIENT SETINFO) once, never per call.
    handshake = {"hello", "client|setinfo", "client"}
    others = {command: calls for command, calls in counted.items() if calls and command not in
              {"evalsha", "hgetall", "info", "ping", *in_scripts, *handshake}}
    assert not others, others
    assert sum(counted.get(command, 0) for command in handshake) <= 6


# -- elections ----------------------------------------------------------------------------------

def test_one_leader_fails_over_after_a_crash_and_hands_over_on_release(url: str) -> None:
    with fleet(url, lease_name(), 4) as electors:
        first = electors.leader(5)
        assert wait_until(lambda: followers_saw(electors.electors, first), 5)
        time.sleep(0.2)
        stopped_at = time.monotonic()
        first.stop(release=False)  # as if it crashed: its lease must run out
        second = electors.leader(FAST["lease_duration"] + SLACK + 2, other_than=first)
        failover = time.monotonic() - stopped_at
        assert failover >= FAST["lease_duration"] - FAST["retry_period"] - 0.05
        assert wait_until(lambda: followers_saw(
            [e for e in electors.electors if e is not first], second), 5)
        stopped_at = time.monotonic()
        second.stop()  # a release: the next one takes over at once
        third = electors.leader(5, other_than=second)
        assert time.monotonic() - stopped_at < 0.5
        assert third not in (first, second)
        time.sleep(0.2)
    electors.check()
    assert [identity for identity, _ in electors.tokens] == [
        first.identity, second.identity, third.identity]


def test_release_notification_hands_over_much_faster_than_the_retry_period(url: str) -> None:
    timings = {"lease_duration": 12.0, "renew_deadline": 8.0, "retry_period": 4.0}
    name = lease_name()
    electors = [make_elector(url, name, f"r{i}", timings) for i in range(3)]
    try:
        electors[0].start()
        assert electors[0].wait_for_leadership(10)
        for elector in electors[1:]:
            elector.start()
        handovers = []
        for leader, rest in ((electors[0], electors[1:]), (None, electors[1:])):
            if leader is None:  # the second handover: from whoever took over first
                leader = next(e for e in rest if e.is_leader)
                rest = [e for e in rest if e is not leader]
            assert wait_until(lambda: followers_saw(rest + [leader], leader), 10)  # noqa: B023
            time.sleep(0.3)  # the followers are asleep until their next poll
            stopped_at = time.monotonic()
            leader.stop()
            assert wait_until(lambda: any(e.is_leader for e in rest), 5)  # noqa: B023
            handovers.append(time.monotonic() - stopped_at)
        # Polling alone would take up to retry_period (4 s) each time.
        assert max(handovers) < 0.5, handovers
    finally:
        for elector in electors:
            elector.stop()


def test_one_listener_thread_and_connection_per_server_and_process(
        server: Server, own_admin: redis.Redis) -> None:
    def listener_threads() -> int:
        return sum(thread.name == "singleton_jobs-redis-releases"
                   for thread in threading.enumerate())

    assert wait_until(lambda: listener_threads() == 0, 5)  # earlier tests' have ended
    name = lease_name()
    electors = [make_elector(server.url, name, f"r{i}", FAST) for i in range(3)]
    other = make_elector(server.url, lease_name(), key_prefix="other:")
    with electors[0], electors[1], electors[2], other:
        assert wait_until(lambda: len(own_admin.client_list(_type="pubsub")) == 1, 5)
        assert listener_threads() == 1
        assert wait_until(lambda: sorted(own_admin.pubsub_channels()) == [
            b"other:released", b"singleton_jobs:released"], 5)
    assert wait_until(lambda: listener_threads() == 0, 5)
    assert wait_until(lambda: own_admin.client_list(_type="pubsub") == [], 5)


def test_killed_listener_reconnects_and_polling_covers_the_gap(
        server: Server, own_admin: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    timings = {"lease_duration": 6.0, "renew_deadline": 4.0, "retry_period": 2.0}
    name = lease_name()
    electors = [make_elector(server.url, name, f"r{i}", timings) for i in range(3)]

    def hand_over(leader: RedisElector) -> tuple[RedisElector, float]:
        rest = [e for e in electors if e.running and e is not leader]
        assert wait_until(lambda: followers_saw(rest + [leader], leader), 10)
        time.sleep(0.3)
        stopped_at = time.monotonic()
        leader.stop()
        assert wait_until(lambda: any(e.is_leader for e in rest), 10)
        return next(e for e in rest if e.is_leader), time.monotonic() - stopped_at

    try:
        for elector in electors:
            elector.start()
        leader = electors[0]
        assert wait_until(lambda: any(e.is_leader for e in electors), 10)
        leader = next(e for e in electors if e.is_leader)
        # The listener's connection is killed: it reconnects, and releases wake followers again.
        assert wait_until(lambda: len(own_admin.client_list(_type="pubsub")) == 1, 5)
        own_admin.client_kill_filter(_type="pubsub")
        assert wait_until(lambda: len(own_admin.client_list(_type="pubsub")) == 1, 5)
        time.sleep(0.3)
        leader, handover = hand_over(leader)
        assert handover < 0.5
        # Killed again, and this time it stays away: polling alone takes over within about
        # one retry period.
        monkeypatch.setattr(redis_backend, "LISTEN_BACKOFF", (60.0, 60.0))
        own_admin.client_kill_filter(_type="pubsub")
        assert wait_until(lambda: own_admin.client_list(_type="pubsub") == [], 5)
        _, handover = hand_over(leader)
        assert handover < timings["retry_period"] + 0.5
    finally:
        for elector in electors:
            elector.stop()


# -- operator actions ---------------------------------------------------------------------------

def test_deleted_lease_makes_its_leader_step_down_and_tokens_keep_growing(
        url: str, admin: redis.Redis) -> None:
    name = lease_name()
    with fleet(url, name, 3) as electors:
        first = electors.leader(5)
        token = first.fencing_token
        assert token is not None
        assert wait_until(lambda: followers_saw(electors.electors, first), 5)
        deleted_at = time.monotonic()
        admin.delete(first.store.record_key)
        assert wait_until(electors.nobody_leads, FAST["renew_deadline"] + SLACK)
        successor = electors.leader(FAST["lease_duration"] + SLACK + 2)
        # Nobody can know the old leader stopped: a new one only after a whole lease.
        assert time.monotonic() - deleted_at >= FAST["lease_duration"] * 0.95
        assert successor.fencing_token is not None and successor.fencing_token > token
    electors.check()


def test_deleted_lease_and_fence_never_lower_the_token(url: str, admin: redis.Redis) -> None:
    name = lease_name()
    with fleet(url, name, 3) as electors:
        first = electors.leader(5)
        token = first.fencing_token
        assert token is not None
        assert wait_until(lambda: followers_saw(electors.electors, first), 5)
        deleted_at = time.monotonic()
        admin.delete(first.store.record_key, first.store.fence_key)
        assert wait_until(electors.nobody_leads, FAST["renew_deadline"] + SLACK)
        successor = electors.leader(FAST["lease_duration"] + SLACK + 2)
        assert time.monotonic() - deleted_at >= FAST["lease_duration"] * 0.95
        assert successor.fencing_token is not None and successor.fencing_token > token
        assert wait_until(lambda: admin.get(first.store.fence_key) ==
                          str(successor.fencing_token).encode(), 2)
    electors.check()


def test_deleted_fence_is_restored_by_the_next_renew(url: str, admin: redis.Redis) -> None:
    elector = make_elector(url, lease_name())
    with elector:
        assert elector.wait_for_leadership(5)
        admin.delete(elector.store.fence_key)
        assert wait_until(lambda: admin.get(elector.store.fence_key) ==
                          str(elector.fencing_token).encode(), 2)
        assert elector.is_leader


@pytest.mark.parametrize("vandalism", ["other type", "bad holder", "missing field",
                                       "bad transitions"])
def test_garbage_written_over_a_running_leader_is_repaired_by_it(
        url: str, admin: redis.Redis, vandalism: str) -> None:
    name = lease_name()
    with fleet(url, name, 2) as electors:
        first = electors.leader(5)
        token = first.fencing_token
        assert wait_until(lambda: followers_saw(electors.electors, first), 5)
        key = first.store.record_key
        if vandalism == "other type":
            admin.set(key, "x")
        elif vandalism == "bad holder":
            admin.hset(key, "holder", "\x01bad")
        elif vandalism == "missing field":
            admin.hdel(key, "lease_duration")
        else:
            admin.hset(key, "transitions", "many")
        since = time.monotonic()
        time.sleep(3 * FAST["lease_duration"])
        assert electors.leaders_between(since, time.monotonic()) == {first.identity}
        assert first.is_leader and first.fencing_token == token
        assert admin.hget(key, "holder") == first.identity.encode()
    electors.check()


def test_garbage_without_a_leader_is_taken_over_after_one_lease(url: str,
                                                                admin: redis.Redis) -> None:
    name = lease_name()
    elector = make_elector(url, name)
    admin.set(elector.store.record_key, "not a lease")
    started = time.monotonic()
    with elector:
        assert elector.wait_for_leadership(FAST["lease_duration"] + SLACK + 2)
        assert time.monotonic() - started >= FAST["lease_duration"] * 0.95


# -- faults -------------------------------------------------------------------------------------

def test_server_restart_loses_the_data_and_the_fleet_recovers_above_the_old_token(
        server: Server) -> None:
    name = lease_name()
    probe = RedisLeaseStore(server.url, name)
    with fleet(server.url, name, 3, SLOW) as electors:
        first = electors.leader(5)
        token = first.fencing_token
        assert token is not None
        assert wait_until(lambda: followers_saw(electors.electors, first), 5)
        assert probe.transitions_floor(timeout=2) == token
        server.restart()  # SIGKILL and start again: without persistence, nothing is left
        restarted_at = time.monotonic()
        # Stores that saw the fence cannot tell which tokens were used; a new one knows nothing.
        assert probe.transitions_floor(timeout=2) is None
        assert RedisLeaseStore(server.url, name).transitions_floor(timeout=2) == -1
        assert wait_until(electors.nobody_leads, SLOW["renew_deadline"] + SLACK)
        successor = electors.leader(SLOW["lease_duration"] + SLACK + 5)
        # Who led before may still believe it leads: nobody takes over before a whole lease.
        assert time.monotonic() - restarted_at >= SLOW["lease_duration"] * 0.9
        assert successor.fencing_token is not None and successor.fencing_token > token
    electors.check()


def test_killed_connection_of_the_leader_is_replaced_and_it_keeps_leading(
        url: str, admin: redis.Redis) -> None:
    name = lease_name()
    electors = Fleet([make_elector(f"{url}?client_name=kill-{os.getpid()}-{i}", name,
                                   f"replica-{i}", SLOW) for i in range(3)])
    with electors:
        first = electors.leader(5)
        token = first.fencing_token
        index = electors.electors.index(first)
        mine = [client for client in admin.client_list()
                if client["name"] == f"kill-{os.getpid()}-{index}"]
        assert mine  # its store's connection and its release listener
        since = time.monotonic()
        for client in mine:
            admin.client_kill_filter(_id=client["id"])
        renewed = admin.hget(first.store.record_key, "renew_time")
        assert wait_until(lambda: admin.hget(first.store.record_key, "renew_time") != renewed,
                          2)  # it renews again, on a new connection
        time.sleep(SLOW["lease_duration"])
        assert electors.leaders_between(since, time.monotonic()) == {first.identity}
        assert first.is_leader and first.fencing_token == token
    electors.check()


def test_paused_server_makes_the_leader_step_down_in_time_and_leadership_recovers(
        server: Server) -> None:
    name = lease_name()
    with fleet(server.url, name, 2, SLOW) as electors:
        electors.leader(5)
        server.pause()
        paused_at = time.monotonic()
        assert wait_until(electors.nobody_leads, SLOW["renew_deadline"] + SLACK)
        stepped_down = time.monotonic() - paused_at
        assert stepped_down <= SLOW["renew_deadline"] + 0.5, stepped_down
        time.sleep(SLOW["lease_duration"])
        # (The sampler may see the step-down a little after this thread did.)
        assert electors.leaders_between(paused_at + stepped_down + 0.1,
                                        time.monotonic()) == set()
        server.resume()
        electors.leader(SLOW["lease_duration"] + SLACK + 5)
    electors.check()


def test_latency_above_the_renew_deadline_makes_the_leader_step_down(
        url: str, proxy_to: Callable[[str], TcpProxy]) -> None:
    proxy = proxy_to(url)
    name = lease_name()
    far = make_elector(proxy.url_for(url), name, "far", SLOW)
    far.start()
    near = make_elector(url, name, "near", SLOW)
    assert far.wait_for_leadership(5)
    electors = Fleet([far, near])
    with electors:
        assert wait_until(lambda: near.leader == "far", 5)
        proxy.latency = 0.1  # round trip 0.2 s, well below the 0.6 s renew deadline
        since = time.monotonic()
        time.sleep(1.5)
        assert electors.leaders_between(since, time.monotonic()) == {"far"}
        assert far.is_leader
        proxy.latency = 0.5  # round trip 1 s: every renew times out
        slowed_at = time.monotonic()
        assert wait_until(lambda: not far.is_leader, SLOW["renew_deadline"] + SLACK)
        assert time.monotonic() - slowed_at <= SLOW["renew_deadline"] + 0.5
        assert near.wait_for_leadership(SLOW["lease_duration"] + SLACK + 5)
        proxy.latency = 0.0
        assert wait_until(lambda: far.leader == "near", 10)
    electors.check()
    assert [identity for identity, _ in electors.tokens] == ["far", "near"]


@pytest.mark.parametrize("fault", ["read-only replica", "no replicas", "out of memory"])
def test_server_refusing_writes_makes_the_leader_step_down_until_fixed(
        server: Server, own_admin: redis.Redis, fault: str) -> None:
    name = lease_name()
    probe = RedisLeaseStore(server.url, name)
    with fleet(server.url, name, 2, SLOW) as electors:
        electors.leader(5)
        if fault == "read-only replica":
            # A replica of a server that does not exist: it keeps its data, refuses writes.
            own_admin.replicaof("127.0.0.1", 1)
            error = "read-only replica"
        elif fault == "no replicas":
            own_admin.config_set("min-replicas-to-write", 1)
            error = "NOREPLICAS"
        else:
            own_admin.config_set("maxmemory", 1)
            error = "maxmemory"
        broken_at = time.monotonic()
        snapshot = probe.get(timeout=2)  # reading still works
        assert snapshot is not None
        with pytest.raises(LeaseStoreError, match=error):
            probe.update(snapshot[0], snapshot[1], timeout=2)
        assert wait_until(electors.nobody_leads, SLOW["renew_deadline"] + SLACK)
        time.sleep(SLOW["lease_duration"])
        assert electors.leaders_between(broken_at + SLOW["renew_deadline"] + 0.5,
                                        time.monotonic()) == set()
        if fault == "read-only replica":
            own_admin.replicaof("NO", "ONE")
        elif fault == "no replicas":
            own_admin.config_set("min-replicas-to-write", 0)
        else:
            own_admin.config_set("maxmemory", 0)
        electors.leader(SLOW["lease_duration"] + SLACK + 5)
    electors.check()


# -- processes ----------------------------------------------------------------------------------

def _child_leads_with_inherited_store(elector: RedisElector) -> None:
    elector.start()
    try:
        if not elector.wait_for_leadership(10):
            os._exit(3)
    finally:
        elector.stop()


def test_elector_created_before_fork_leads_in_the_child_on_connections_of_its_own(
        url: str) -> None:
    name = lease_name()
    elector = make_elector(url, name)
    assert elector.store.get(timeout=2) is None  # the parent has a connection open now
    child = multiprocessing.get_context("fork").Process(
        target=_child_leads_with_inherited_store, args=(elector,))
    child.start()
    # Meanwhile the parent keeps using the same store object: had the child inherited its
    # socket, answers would go to the wrong process.
    while child.is_alive():
        snapshot = elector.store.get(timeout=2)
        assert snapshot is None or snapshot[0].readable
        time.sleep(0.005)
    child.join(10)
    assert child.exitcode == 0
    snapshot = elector.store.get(timeout=2)
    assert snapshot is not None and snapshot[0].released  # the child released on exit

# Real processes on one Redis lease (SIGKILL failover, SIGTERM handover, SIGSTOP, token order)
# are tests/test_processes.py and tests/test_deployment_safety.py, with the "redis" backend.
