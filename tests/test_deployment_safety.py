"""Exactly one runner in the process models and operator actions of real deployments.

Forked children of a leader, several workers per pod sharing ``POD_NAME``, two processes given
one identity, two programs on one host, a lease deleted or rewritten by hand, a machine
suspended, a raising ``on_started_leading``: each scenario below once let two processes run a
guarded body at the same time, or let a fencing token go back, or starved a healthy replica.
"""

from __future__ import annotations

import asyncio
import logging
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
from conftest import FAST, HERE, Process, k8s_api_client, unique_lease_name, wait_until
from k8s_api import FakeKubernetesApi
from test_processes import (
    BACKENDS,
    LEASE,
    SLACK,
    Cluster,
    assert_no_overlap,
    assert_tokens_increase,
    database_url,
    make_cluster,
)

from singleton_jobs import (
    ConfigurationError,
    Elector,
    FileElector,
    FileLeaseStore,
    KubernetesElector,
    LeaseRecord,
    MemoryLeaseStore,
    leader_only,
)
from singleton_jobs import election as election_module

EXAMPLES = HERE.parent / "examples"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cluster(backend: str, request: pytest.FixtureRequest, spawn: Callable[..., Process],
            tmp_path: Path) -> Cluster:
    return make_cluster(backend, request, spawn, tmp_path)


def delete_lease(cluster: Cluster, request: pytest.FixtureRequest) -> None:
    """What an operator does with ``rm``, ``kubectl delete lease``, ``DELETE`` or ``DEL``."""
    args = cluster.lease_args
    if "--kubernetes-api" in args:
        api: FakeKubernetesApi = request.getfixturevalue("k8s_api")
        api.delete("default", args[0])
    elif "--sql-url" in args:
        delete_sql_lease(args[args.index("--sql-url") + 1], args[0])
    elif "--redis-url" in args:
        delete_redis_lease(args[args.index("--redis-url") + 1], args[0])
    else:
        os.unlink(args[0])


def delete_sql_lease(url: str, name: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM singleton_jobs_leases WHERE name = :name"),
                     {"name": name})
    engine.dispose()


def delete_redis_lease(url: str, name: str) -> None:
    import redis

    from singleton_jobs.backends.redis import record_key

    client = redis.Redis.from_url(url)
    assert client.delete(record_key("singleton_jobs:", name)) == 1
    client.close()


def shared_lease(backend: str, tmp_path: Path,
                 request: pytest.FixtureRequest) -> tuple[Callable[[], Any], Callable[[], None]]:
    """A factory of stores on one lease of ``backend``, and a function that deletes it."""
    name = unique_lease_name(f"shared-{time.time_ns()}")
    if backend == "file":
        return (lambda: FileLeaseStore(tmp_path / "lease"),
                lambda: os.unlink(tmp_path / "lease"))
    if backend == "redis":
        from singleton_jobs import RedisLeaseStore

        url = database_url(backend, tmp_path)
        return (lambda: RedisLeaseStore(url, name), lambda: delete_redis_lease(url, name))
    if backend != "kubernetes":
        from singleton_jobs import SQLLeaseStore

        url = database_url(backend, tmp_path)
        return (lambda: SQLLeaseStore(url, name), lambda: delete_sql_lease(url, name))
    from singleton_jobs import KubernetesLeaseStore

    api: FakeKubernetesApi = request.getfixturevalue("k8s_api")
    return (lambda: KubernetesLeaseStore(name, namespace="default",
                                         api_client=k8s_api_client(api.url)),
            lambda: api.delete("default", name))


# -- fork ---------------------------------------------------------------------------------------


def test_forked_children_of_a_leader_never_run_its_job_nor_release_its_lease(
        cluster: Cluster) -> None:
    leader, _follower = cluster.start(2, "--fork-children", "4", "--child-runs-for", "1.0")
    first = cluster.leader()
    leader = cluster.replicas[first.pid]
    leader.signal(signal.SIGUSR1)
    line = leader.wait_for_line(lambda text: text.startswith("FORKED"), 20)
    assert line is not None, leader.output()
    children = {int(pid) for pid in line.split()[1:-1]}
    assert len(children) == 4

    def finished() -> list[str]:
        return [text for _, text in leader.lines if text.startswith("CHILD-DONE")]

    assert wait_until(lambda: len(finished()) == 4, 30), leader.output()
    done_at = time.monotonic()
    refusals = [text for _, text in leader.lines if text.startswith("CHILD-START-REFUSED")]
    assert len(refusals) == 4, leader.output()
    assert all("inherited by fork()" in text and "post_fork" in text for text in refusals)
    # The children called stop() and exited through atexit: had either released the parent's
    # lease, the follower would have taken over. The parent leads on with the same token.
    assert wait_until(lambda: any(r.start > done_at + 0.5 for r in cluster.runs()), 10)
    runs = cluster.runs()
    assert not [r for r in runs if r.pid in children], "a forked child ran the guarded job"
    assert {r.pid for r in runs} == {first.pid}
    assert {r.token for r in runs} == {first.token}
    assert_no_overlap(runs)


def test_elector_created_before_fork_and_started_after_it_gets_its_own_identity(
        tmp_path: Path) -> None:
    code = f"""
import os, sys
from singleton_jobs import FileElector
elector = FileElector({str(tmp_path / 'lease')!r}, lease_duration=2, renew_deadline=1,
                      retry_period=0.1)
parent_identity = elector.identity
pid = os.fork()
if pid == 0:
    elector.start()
    ok = elector.wait_for_leadership(10)
    print("child", elector.identity, ok, flush=True)
    elector.stop()
    os._exit(0)
os.waitpid(pid, 0)
print("parent", parent_identity, flush=True)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    child_identity, led = lines["child"].split()
    assert led == "True"
    assert child_identity != lines["parent"]
    assert re.search(r"_\d+_[0-9a-f]{6}$", child_identity)


def test_process_pool_workers_forked_from_a_leader_do_not_lead(tmp_path: Path) -> None:
    code = f"""
import multiprocessing, os
from singleton_jobs import FileElector, leader_only
elector = FileElector({str(tmp_path / 'lease')!r}, lease_duration=2, renew_deadline=1,
                      retry_period=0.1).start()
assert elector.wait_for_leadership(10)

@leader_only(elector)
def job(n):
    return os.getpid()

def in_worker(n):
    return (elector.is_leader, elector.running, job(n))

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(in_worker, range(16))
    print("workers", sum(1 for leading, _, _ in results if leading),
          sum(1 for _, running, _ in results if running),
          sum(1 for _, _, ran in results if ran is not None))
    print("parent", elector.is_leader, job(0) == os.getpid())
    elector.stop()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "workers 0 0 0" in result.stdout, result.stdout
    assert "parent True True" in result.stdout


# -- several processes, one identity -------------------------------------------------------------


def test_workers_of_one_pod_get_distinct_identities_and_one_of_them_leads(
        cluster: Cluster) -> None:
    env = {**os.environ, "POD_NAME": "web-0"}
    workers = cluster.start(2, "--identity", "default", env=env)
    identities = []
    for worker in workers:
        line = worker.wait_for_line(lambda text: text.startswith("STARTED"), 20)
        assert line is not None, worker.output()
        identities.append(line.split()[1])
    assert identities[0] != identities[1]
    assert all(identity.startswith("web-0_") for identity in identities)
    first = cluster.leader()
    # Long enough for a second leader to appear: a follower takes over after LEASE at most.
    time.sleep(LEASE + 0.5)
    runs = cluster.runs()
    assert {r.pid for r in runs} == {first.pid}
    assert_no_overlap(runs)


def test_two_processes_given_one_identity_never_both_lead_and_the_second_says_why(
        cluster: Cluster) -> None:
    cluster.start(1, "--identity", "worker")
    first = cluster.leader()
    second = cluster.start(1, "--identity", "worker")[0]
    line = second.wait_for_line(lambda text: "under the same identity 'worker'" in text,
                                LEASE + 10)
    assert line is not None, second.output()
    assert "leave identity unset" in line
    time.sleep(LEASE)
    runs = cluster.runs()
    assert {r.pid for r in runs} == {first.pid}, "both processes named 'worker' ran the job"
    # The duplicate only waits: it takes over, with a higher token, once the first is gone.
    killed_at = time.monotonic()
    cluster.replicas[first.pid].signal(signal.SIGKILL)
    successor = cluster.leader(since=killed_at, other_than=first.pid,
                               timeout=LEASE + SLACK + 10)
    assert successor.pid == second.pid and successor.token > first.token
    assert_no_overlap(cluster.runs())


def test_a_restarted_replica_with_a_fixed_identity_waits_out_its_old_lease(
        tmp_path: Path) -> None:
    path = tmp_path / "lease"
    old = FileLeaseStore(path)
    now = time.time()
    old.create(LeaseRecord("worker", 0.6, now, now, 4), timeout=1)
    elector = FileElector(path, identity="worker", **FAST).start()  # type: ignore[arg-type]
    try:
        began = time.monotonic()
        assert elector.wait_for_leadership(10)
        waited = time.monotonic() - began
        # Not adopted at once: the record might be another live process's with this name.
        assert waited >= 0.5, f"took over a record it did not write after {waited:.2f}s"
        assert elector.fencing_token == 5
    finally:
        elector.stop()


# -- two programs on one host ----------------------------------------------------------------------


def test_file_lease_needs_a_path_or_a_name_so_programs_never_share_one_by_accident(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(ConfigurationError, match=r"pass name='my-app'"):
        FileElector()
    with pytest.raises(ConfigurationError, match="not both"):
        FileElector(tmp_path / "x.lease", name="x")
    with pytest.raises(ConfigurationError, match="lease name '../etc'"):
        FileElector(name="../etc")
    mailer, cleaner = FileElector(name="report-mailer"), FileElector(name="cleanup")
    assert mailer.path == str(tmp_path / "singleton_jobs" / "report-mailer.lease")
    assert cleaner.path != mailer.path


def test_two_example_programs_on_one_host_both_run_their_jobs(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    cleanup = spawn(str(EXAMPLES / "cleanup_job.py"), env=env)
    rates = spawn(str(EXAMPLES / "apscheduler_asyncio.py"), env=env)
    assert cleanup.wait_for_line(lambda line: "cleaning up" in line, 30), cleanup.output()
    assert rates.wait_for_line(lambda line: "rates refreshed" in line, 30), rates.output()


# -- operator actions -----------------------------------------------------------------------------


def test_lease_deleted_under_a_live_leader_gives_no_second_leader(
        cluster: Cluster, request: pytest.FixtureRequest) -> None:
    # A slow renew cadence leaves a newcomer time to find the lease missing before the leader
    # notices: it must wait for the old holder, not create a lease and lead at once.
    timings = ("--lease-duration", "4", "--renew-deadline", "2.5", "--retry-period", "1.5")
    cluster.start(1, *timings)
    first = cluster.leader()
    time.sleep(0.3)
    delete_lease(cluster, request)
    deleted_at = time.monotonic()
    newcomer = cluster.start(1, *timings)[0]
    assert newcomer.wait_for_line(lambda text: text.startswith("STARTED"), 20)
    # The old leader steps down when it notices; one lease duration after the deletion a new
    # term begins, with a higher token, on either replica.
    successor = cluster.leader(since=deleted_at + 2.6, timeout=4 + 2 * 1.5 + SLACK + 10)
    assert successor.token > first.token
    time.sleep(1.0)
    runs = cluster.runs()
    assert not [r for r in runs if r.token == first.token and r.start > deleted_at + 2.6]
    assert_no_overlap(runs)
    assert_tokens_increase(runs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lease_recreated_and_deleted_again_while_a_follower_waits_gives_no_second_leader(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A follower that missed a whole term between two deletions must wait again."""
    store, remove = shared_lease(backend, tmp_path, request)

    timings = {"lease_duration": 2, "renew_deadline": 1, "retry_period": 0.5}
    old = Elector(store(), identity="old", **timings)  # type: ignore[arg-type]
    with old:
        assert old.wait_for_leadership(10)
    remove()  # the old leader is gone, its lease deleted: every newcomer waits one lease
    a = Elector(store(), identity="a", **timings)  # type: ignore[arg-type]
    b = Elector(store(), identity="b", **timings)  # type: ignore[arg-type]
    overlap = 0
    try:
        b.start()
        time.sleep(0.1)
        a.start()
        assert wait_until(lambda: a.is_leader or b.is_leader, 10, interval=0.001)
        leader = a if a.is_leader else b
        remove()  # deleted again, before the other one polls: it must not trust its old wait
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            overlap += a.is_leader and b.is_leader
            time.sleep(0.001)
        assert overlap == 0, f"{a.identity} and {b.identity} led at once"
        assert leader.fencing_token is None or leader.is_leader
    finally:
        a.stop()
        b.stop()


def test_fencing_token_keeps_growing_when_the_lease_is_deleted_after_its_leader_died(
        cluster: Cluster, request: pytest.FixtureRequest) -> None:
    first_process = cluster.start(1)[0]
    first = cluster.leader()
    stopped_at = time.monotonic()
    first_process.signal(signal.SIGTERM)  # releases: a clean exit, then the lease is deleted
    assert first_process.popen.wait(10) == 0
    second_process = cluster.start(1)[0]
    second = cluster.leader(since=stopped_at, other_than=first.pid, timeout=LEASE + SLACK + 10)
    second_process.signal(signal.SIGKILL)
    second_process.popen.wait(10)
    delete_lease(cluster, request)
    deleted_at = time.monotonic()
    cluster.start(1)
    third = cluster.leader(since=deleted_at, other_than=second.pid, timeout=LEASE + SLACK + 10)
    assert first.token < second.token < third.token
    assert_tokens_increase(cluster.runs())


@pytest.mark.parametrize("backend", BACKENDS)
def test_record_rewritten_by_hand_with_a_lower_counter_does_not_lower_the_token(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store, _ = shared_lease(backend, tmp_path, request)
    timings = {"lease_duration": 1, "renew_deadline": 0.6, "retry_period": 0.1}
    tokens = []
    for round_ in range(3):  # three terms: tokens 0, 1, 2
        elector = Elector(store(), identity=f"r{round_}", **timings)  # type: ignore[arg-type]
        with elector:
            assert elector.wait_for_leadership(10)
            tokens.append(elector.fencing_token)
    # What the seed's Go program writes: a holder and a timestamp, no counter (0).
    hand = store()
    snapshot = hand.get(timeout=5)
    assert snapshot is not None
    now = time.time()
    assert hand.update(LeaseRecord("old-go-binary", 1.0, now, now, 0), snapshot[1], timeout=5)
    elector = Elector(store(), identity="next", **timings)  # type: ignore[arg-type]
    with elector:
        assert elector.wait_for_leadership(10)
        tokens.append(elector.fencing_token)
    assert tokens == sorted(set(tokens)) and tokens[-1] > tokens[-2], tokens


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_create_is_refused_once_the_floor_reached_its_token(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two replicas that read the floor before a deletion must not both get one token."""
    store, remove = shared_lease(backend, tmp_path, request)
    first, late = store(), store()
    now = time.time()
    assert late.transitions_floor(timeout=5) == -1
    assert first.create(LeaseRecord("a", 1.0, now, now, 5), timeout=5) is not None
    remove()  # "late" read the floor before "a" created token 5
    assert late.create(LeaseRecord("b", 1.0, now, now, 5), timeout=5) is None
    assert late.create(LeaseRecord("b", 1.0, now, now, 6), timeout=5) is not None


def test_lease_duration_shortened_by_another_writer_does_not_let_a_follower_take_over(
        tmp_path: Path) -> None:
    path = tmp_path / "lease"
    # The leader renews slowly, the follower polls fast: a follower that trusted the shortened
    # record would take over between two of the leader's renews.
    leader = FileElector(path, identity="leader", lease_duration=3.0, renew_deadline=1.5,
                         retry_period=0.5)
    follower = FileElector(path, identity="follower", lease_duration=3.0, renew_deadline=1.5,
                           retry_period=0.05)
    tamperer = FileLeaseStore(path)
    overlap = 0
    try:
        leader.start()
        assert leader.wait_for_leadership(10)
        follower.start()
        assert wait_until(lambda: follower.leader == "leader", 10)
        until = time.monotonic() + 4.0
        next_rewrite = 0.0
        while time.monotonic() < until:
            if time.monotonic() >= next_rewrite:
                snapshot = tamperer.get(timeout=1)
                assert snapshot is not None
                record, version = snapshot
                if record.holder == "leader":
                    tamperer.update(record._replace(lease_duration=0.1), version, timeout=1)
                next_rewrite = time.monotonic() + 1.0
            if leader.is_leader and follower.is_leader:
                overlap += 1
            time.sleep(0.001)
        assert overlap == 0, "the follower led while the leader still did"
        assert not follower.is_leader
    finally:
        follower.stop()
        leader.stop()


def test_record_claiming_an_absurd_lease_duration_is_taken_over_after_our_own(
        tmp_path: Path) -> None:
    path = tmp_path / "lease"
    now = time.time()
    FileLeaseStore(path).create(LeaseRecord("dead-holder", 1e308, now, now, 5), timeout=1)
    elector = FileElector(path, identity="rescuer", **FAST).start()  # type: ignore[arg-type]
    try:
        assert elector.wait_for_leadership(FAST["lease_duration"] + 5)
        assert elector.fencing_token == 6
    finally:
        elector.stop()
    with pytest.raises(ConfigurationError, match="did you pass milliseconds"):
        FileElector(path, lease_duration=150000, renew_deadline=100000, retry_period=20000)


def test_temporary_files_of_writers_killed_mid_write_are_removed_at_the_next_takeover(
        tmp_path: Path) -> None:
    path = tmp_path / "app.lease"
    # What a writer killed between creating its temporary file and renaming it leaves behind.
    leftovers = [tmp_path / ".app.lease.0badc0de.tmp", tmp_path / ".app.lease.fence.5ca1ab1e.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a rec")
    unrelated = tmp_path / ".other.lease.0badc0de.tmp"
    unrelated.write_bytes(b"not ours")
    elector = FileElector(path, identity="a", **FAST).start()  # type: ignore[arg-type]
    try:
        assert elector.wait_for_leadership(5)
    finally:
        elector.stop()
    assert not [leftover for leftover in leftovers if leftover.exists()]
    assert unrelated.exists()


def test_temporary_files_do_not_pile_up_when_writers_are_killed(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    path = tmp_path / "kill.lease"
    journal = tmp_path / "journal"
    for _ in range(25):
        replica = spawn(str(HERE / "contender.py"), str(path), str(journal), "--lease-duration",
                        "0.3", "--renew-deadline", "0.2", "--retry-period", "0.001")
        assert replica.wait_for_line(lambda line: line.startswith("LEADER"), 20)
        time.sleep(0.02)
        replica.kill()
    last = spawn(str(HERE / "contender.py"), str(path), str(journal), "--lease-duration", "0.3",
                 "--renew-deadline", "0.2", "--retry-period", "0.05")
    assert last.wait_for_line(lambda line: line.startswith("LEADER"), 20)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# -- clocks ----------------------------------------------------------------------------------------


def test_election_clock_counts_time_the_machine_spent_suspended() -> None:
    # A time namespace whose CLOCK_BOOTTIME is 1000 s ahead of CLOCK_MONOTONIC is what a
    # machine looks like after 1000 s of suspend: the engine must see those 1000 s.
    code = ("import time; from singleton_jobs import Elector; "
            "print(Elector._monotonic() - time.monotonic())")
    result = subprocess.run(["unshare", "--time", "--boottime", "1000", sys.executable, "-c",
                             code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 999 < float(result.stdout) < 1001


# -- engine defects --------------------------------------------------------------------------------


def test_replica_whose_on_started_leading_raises_sits_out_and_a_healthy_one_takes_over() -> None:
    store = MemoryLeaseStore()
    attempts: list[float] = []

    def broken_start() -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("cannot open the job database")

    broken = Elector(store, identity="broken", on_started_leading=broken_start, **FAST)
    healthy = Elector(store, identity="healthy", **FAST)
    try:
        broken.start()
        assert wait_until(lambda: attempts, 5)
        began = time.monotonic()
        healthy.start()
        assert healthy.wait_for_leadership(FAST["lease_duration"] + 2.0)
        took = time.monotonic() - began
        assert took <= FAST["lease_duration"] + 1.0, f"healthy replica waited {took:.2f}s"
        settled = len(attempts)
        time.sleep(2.0)
        assert healthy.is_leader
        assert len(attempts) == settled, "the broken replica kept taking the lease"
    finally:
        healthy.stop()
        broken.stop()


def test_raising_on_started_leading_alone_backs_off_instead_of_a_hot_loop() -> None:
    attempts: list[float] = []

    def broken_start() -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("still broken")

    elector = Elector(MemoryLeaseStore(), identity="alone", on_started_leading=broken_start,
                      **FAST)
    with elector:
        time.sleep(3.0)
    # One lease duration after the first failure, then two, then four: 1 + 0.5 + 1 + 2 s.
    assert 2 <= len(attempts) <= 5, attempts
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert all(gap >= FAST["lease_duration"] for gap in gaps), gaps


def test_two_concurrent_stops_leave_callbacks_working_after_the_next_start() -> None:
    started: list[int] = []
    elector = Elector(MemoryLeaseStore(), identity="a",
                      on_started_leading=lambda: started.append(1), **FAST)
    barrier = threading.Barrier(2)

    def stop() -> None:
        barrier.wait()
        elector.stop()

    for round_ in range(1, 4):
        elector.start()
        assert wait_until(lambda n=round_: len(started) >= n, 5), f"round {round_}: no callback"
        stoppers = [threading.Thread(target=stop) for _ in range(2)]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(10)
        assert not elector.running and not elector.is_leader


def test_stop_without_release_still_ends_leadership_for_every_observer() -> None:
    store = MemoryLeaseStore()
    seen: list[object] = []
    elector = Elector(store, identity="a", on_stopped_leading=lambda: seen.append("stopped"),
                      **FAST)
    elector.add_leadership_listener(seen.append)
    elector.start()
    assert elector.wait_for_leadership(5)
    elector.stop(release=False)
    assert not elector.is_leader
    assert seen == [True, "stopped", False]
    snapshot = store.get()
    assert snapshot is not None and snapshot[0].holder == "a"  # not released, as asked


class SlowRenewStore(MemoryLeaseStore):
    """A store whose writes block until the test lets them finish."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.release = threading.Event()
        self.held = threading.Event()

    def update(self, record: LeaseRecord, version: Any, *, timeout: float = 0.0) -> Any:
        if self.hold.is_set() and record.holder:
            self.held.set()
            self.release.wait(10)
        return super().update(record, version, timeout=timeout)


def test_a_renew_finishing_during_stop_cannot_make_is_leader_true_again() -> None:
    store = SlowRenewStore()
    elector = Elector(store, identity="a", lease_duration=5.0, renew_deadline=3.0,
                      retry_period=0.05)
    elector.start()
    assert elector.wait_for_leadership(5)
    store.hold.set()
    assert store.held.wait(5)
    stopper = threading.Thread(target=elector.stop, kwargs={"release": False})
    stopper.start()
    assert wait_until(lambda: not elector.is_leader, 5)
    store.release.set()  # the renew succeeds now, after stop() began
    stopper.join(10)
    assert not stopper.is_alive()
    samples = [elector.is_leader for _ in range(1000)]
    assert not any(samples)


def test_a_released_lease_is_taken_within_one_retry_period(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The largest jitter every time: a follower must still poll at least once per period.
    monkeypatch.setattr(election_module.random, "uniform", lambda low, high: high)
    store = MemoryLeaseStore()
    polls: list[float] = []
    get = store.get

    def counting_get(**kwargs: Any) -> Any:
        polls.append(time.monotonic())
        return get(**kwargs)

    store.get = counting_get  # type: ignore[method-assign]
    leader = Elector(store, identity="leader", lease_duration=30, renew_deadline=20,
                     retry_period=1.0)
    follower = Elector(store, identity="follower", lease_duration=30, renew_deadline=20,
                       retry_period=1.0)
    with leader:
        assert leader.wait_for_leadership(5)
        with follower:
            polls.clear()
            assert wait_until(lambda: len(polls) >= 4, 10)
            gaps = [b - a for a, b in zip(polls, polls[1:])]
            assert max(gaps) <= 1.0, f"follower polled every {gaps}"


def test_generator_functions_are_refused_by_leader_only() -> None:
    elector = Elector(MemoryLeaseStore(), identity="a", **FAST)

    def numbers() -> Iterator[int]:
        yield 1

    async def ticks() -> Any:
        yield 1
        await asyncio.sleep(0)

    for function in (numbers, ticks):
        with pytest.raises(ConfigurationError, match="generator function"):
            leader_only(elector)(function)


def test_guarded_function_on_an_elector_never_started_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    elector = Elector(MemoryLeaseStore(), identity="idle", **FAST)

    @leader_only(elector)
    def report() -> str:
        return "sent"

    with caplog.at_level(logging.DEBUG, logger="singleton_jobs"):
        assert [report(), report(), report()] == [None, None, None]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "is not running" in warnings[0].getMessage()
    assert "elector.start()" in warnings[0].getMessage()


def test_kubernetes_leader_keeps_leading_through_an_api_server_that_answers_in_3s(
        k8s_api: FakeKubernetesApi) -> None:
    stopped: list[float] = []
    elector = KubernetesElector(unique_lease_name("slow"), namespace="default",
                                api_client=k8s_api_client(k8s_api.url), identity="patient",
                                lease_duration=8, renew_deadline=5, retry_period=1,
                                on_stopped_leading=lambda: stopped.append(time.monotonic()))
    try:
        elector.start()
        assert elector.wait_for_leadership(10)
        k8s_api.add_fault("delay", methods=["PUT"], seconds=3.0)
        begin = time.monotonic()
        time.sleep(12.0)
        puts = [entry for entry in k8s_api.requests("PUT") if entry.started > begin]
        assert len([entry for entry in puts if entry.status == 200]) >= 2
        assert not stopped, "the leader stepped down although every renew succeeded"
        assert elector.is_leader or wait_until(lambda: elector.is_leader, 4)
    finally:
        k8s_api.clear_faults()
        elector.stop()


def test_multiprocessing_worker_that_started_an_elector_releases_it_when_it_exits(
        tmp_path: Path) -> None:
    # Pool workers and Processes leave through os._exit(), which skips atexit.
    script = tmp_path / "worker.py"
    script.write_text(f"""
import multiprocessing, sys
from singleton_jobs import FileElector, FileLeaseStore

def work(path):
    elector = FileElector(path, identity="worker", lease_duration=30, renew_deadline=20,
                          retry_period=1).start()
    assert elector.wait_for_leadership(10)

if __name__ == "__main__":
    for method in ("fork", "spawn"):
        path = {str(tmp_path)!r} + "/" + method + ".lease"
        process = multiprocessing.get_context(method).Process(target=work, args=(path,))
        process.start()
        process.join(60)
        record, _ = FileLeaseStore(path).get(timeout=5)
        print(method, process.exitcode, repr(record.holder))
""")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["fork 0 ''", "spawn 0 ''"], result.stdout


def test_lease_deleted_while_its_fencing_floor_is_unreadable_is_not_taken_at_once(
        tmp_path: Path) -> None:
    path = tmp_path / "lease"
    timings = {"lease_duration": 1.5, "renew_deadline": 1.0, "retry_period": 0.05}
    old = FileElector(path, identity="old", **timings)  # type: ignore[arg-type]
    old.start()
    assert old.wait_for_leadership(5)
    Path(str(path) + ".fence").write_bytes(b"\x00garbage")  # floor unknown, not "never held"
    path.unlink()
    # "old" may still believe it leads until it notices: a newcomer must wait a lease. So does
    # "old" after it noticed, and either may then create the lease first.
    newcomer = FileElector(path, identity="new", **timings)  # type: ignore[arg-type]
    began = time.monotonic()
    try:
        newcomer.start()
        assert wait_until(lambda: not old.is_leader, 5)  # it notices at its next renew
        assert wait_until(lambda: newcomer.is_leader or old.is_leader, 10)
        assert time.monotonic() - began >= 1.4, "took a deleted lease at once"
    finally:
        newcomer.stop()
        old.stop()


class AppliedButFailedStore(MemoryLeaseStore):
    """The first takeover write is applied, but the call fails (an answer lost on the way)."""

    failed = False

    def update(self, record: LeaseRecord, version: Any, *, timeout: float = 0.0) -> Any:
        new_version = super().update(record, version, timeout=timeout)
        if record.holder == "taker" and new_version is not None and not self.failed:
            self.failed = True
            raise OSError("connection reset after the write was applied")
        return new_version


def test_a_takeover_applied_although_its_call_failed_is_recognised_as_ours() -> None:
    store = AppliedButFailedStore()
    now = time.time()
    store.create(LeaseRecord("", 1.0, now, now, 3))  # released: may be taken at once
    taker = Elector(store, identity="taker", lease_duration=5, renew_deadline=3,
                    retry_period=0.1)
    began = time.monotonic()
    with taker:
        assert taker.wait_for_leadership(10)
        took = time.monotonic() - began
    assert store.failed
    # Not "an earlier run of this process": no whole lease duration without a leader.
    assert took < 2.0, f"waited {took:.2f}s for a record it wrote itself"
    assert taker.fencing_token is None  # stopped


def test_leadership_is_judged_after_a_slow_store_read() -> None:
    """A leader whose read outlasted its lease must not write its old term over garbage."""
    clock = [0.0]
    shared = MemoryLeaseStore()
    events: list[Callable[[], None]] = []

    class SlowReads(MemoryLeaseStore):
        def create(self, record: LeaseRecord, *, timeout: float = 0.0) -> Any:
            return shared.create(record)

        def update(self, record: LeaseRecord, version: Any, *, timeout: float = 0.0) -> Any:
            return shared.update(record, version)

        def get(self, *, timeout: float = 0.0) -> Any:
            while events:
                events.pop()()
            return shared.get()

    timings = {"lease_duration": 15, "renew_deadline": 10, "retry_period": 2}
    old = Elector(SlowReads(), identity="old", **timings)  # type: ignore[arg-type]
    new = Elector(shared, identity="new", **timings)  # type: ignore[arg-type]
    for elector in (old, new):
        elector._monotonic = lambda: clock[0]  # type: ignore[method-assign]
        elector._owner_pid = os.getpid()
    assert old._try_acquire_or_renew() == "leading"
    old._become_leader(old._write_started)
    assert new._try_acquire_or_renew() == "held"
    record, version = shared.get()  # type: ignore[misc]
    shared.update(record._replace(lease_duration=5.0), version)  # a CAS the old leader loses
    clock[0] = 0.5
    assert new._try_acquire_or_renew() == "held"

    def takeover_then_garbage() -> None:  # while the old leader's read is in flight
        clock[0] = 15.6
        assert new._try_acquire_or_renew() == "leading"
        new._become_leader(new._write_started)
        _, current = shared.get()  # type: ignore[misc]
        shared.update(LeaseRecord("\x00unknown", 0.0, 0.0, 0.0, 0), current)
        clock[0] = 16.0

    events.append(takeover_then_garbage)
    clock[0] = 9.9  # the old leader still leads when its renew starts
    assert old._try_acquire_or_renew() == "held"
    assert shared.get()[0].holder == "\x00unknown"  # type: ignore[index]
