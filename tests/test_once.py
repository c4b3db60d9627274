"""``run_once``: one-off jobs run once per fleet, on every backend and with real processes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import HERE, Process, wait_until
from servers import REDIS_URL, require_server

from singleton_jobs import (
    ConfigurationError,
    Elector,
    LeaseStore,
    MemoryLeaseStore,
    RunOnceFailed,
    RunOnceTimeout,
    current_term,
    run_once,
)
from singleton_jobs.lease import COMPLETED_MARK, FAILED_MARK

TIMINGS = {"lease_duration": 1.0, "renew_deadline": 0.5, "retry_period": 0.05}


def fleet(store_factory: Callable[[], LeaseStore], size: int) -> list[Elector]:
    """``size`` electors of one service, each with its own store object on the same lease."""
    return [Elector(store_factory(), identity=f"replica-{index}", **TIMINGS)  # type: ignore[arg-type]
            for index in range(size)]


def call_together(electors: list[Elector], key: str, func: Callable[[], object],
                  **options: object) -> dict[int, object]:
    """Call run_once from one thread per elector at the same moment; outcome per index."""
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(len(electors))

    def call(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = run_once(electors[index], key, func, **options)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[index] = exc

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(electors))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


# -- every backend, in one process -------------------------------------------------------------


def test_one_caller_runs_it_the_others_wait_and_later_callers_return_at_once(
        store_factory: Callable[[], LeaseStore]) -> None:
    electors = fleet(store_factory, 3)
    runs: list[tuple[str, int]] = []
    done = threading.Event()

    def migrate() -> None:
        term = current_term()
        runs.append((term.elector.identity, term.fencing_token))
        time.sleep(0.3)
        done.set()

    outcomes = call_together(electors, "migrate:0042", migrate)
    assert sorted(outcomes.values(), key=str) == [False, False, True]
    assert len(runs) == 1 and done.is_set()
    # The mark lives in the service's own storage, beside its lease: it survives every
    # process (a new store object here), and nobody can hold or take it.
    sibling = store_factory().sibling("migrate:0042")
    snapshot = sibling.get(timeout=5)
    assert snapshot is not None and snapshot[0].holder == COMPLETED_MARK
    assert snapshot[0].mark and not snapshot[0].released and snapshot[0].readable
    started = time.monotonic()
    late = Elector(store_factory(), identity="late", **TIMINGS)  # type: ignore[arg-type]
    assert run_once(late, "migrate:0042", migrate) is False
    assert time.monotonic() - started < 2.0  # one read, no wait
    assert len(runs) == 1


def test_a_failed_run_fails_its_waiters_once_and_the_next_call_runs_it_again(
        store_factory: Callable[[], LeaseStore], caplog: pytest.LogCaptureFixture) -> None:
    electors = fleet(store_factory, 3)
    attempts: list[str] = []

    def migrate() -> None:
        attempts.append(current_term().elector.identity)
        time.sleep(0.3)
        raise RuntimeError("column already exists")

    with caplog.at_level(logging.ERROR, logger="singleton_jobs.once"):
        outcomes = call_together(electors, "migrate:0043", migrate)
    errors = sorted(type(outcome).__name__ for outcome in outcomes.values())
    assert errors == ["RunOnceFailed", "RunOnceFailed", "RuntimeError"]  # no retry storm
    assert len(attempts) == 1
    assert "marked failed" in caplog.text
    failed = [o for o in outcomes.values() if isinstance(o, RunOnceFailed)][0]
    assert "the next call of run_once() for 'migrate:0043' runs it again" in str(failed)
    snapshot = store_factory().sibling("migrate:0043").get(timeout=5)
    assert snapshot is not None and snapshot[0].holder == FAILED_MARK
    # The next call (a restart, the next deploy) runs it again, and this time it works.
    assert run_once(electors[1], "migrate:0043", attempts.append, "retry") is True
    assert attempts[1:] == ["retry"]


@contextlib.contextmanager
def running(store: MemoryLeaseStore, identity: str, key: str) -> Iterator[None]:
    """``identity`` runs ``key`` in a thread until the block ends."""
    runner = Elector(store, identity=identity, **TIMINGS)  # type: ignore[arg-type]
    release = threading.Event()
    thread = threading.Thread(target=run_once, args=(runner, key, release.wait, 10))
    thread.start()
    try:
        assert wait_until(lambda: store.sibling(key).get() is not None, 5)
        yield
    finally:
        release.set()
        thread.join(10)


def test_different_keys_do_not_wait_for_each_other() -> None:
    store = MemoryLeaseStore()
    quick = Elector(store, identity="quick", **TIMINGS)  # type: ignore[arg-type]
    with running(store, "slow", "warm:a"):
        started = time.monotonic()
        assert run_once(quick, "warm:b", lambda: None) is True
        assert time.monotonic() - started < 1.0


def test_a_timeout_names_who_is_running_it() -> None:
    store = MemoryLeaseStore()
    waiter = Elector(store, identity="waiter", **TIMINGS)  # type: ignore[arg-type]
    with running(store, "runner", "migrate:1"):
        started = time.monotonic()
        with pytest.raises(RunOnceTimeout, match=r"migrate:1 was not completed within the "
                                                 r"timeout \(0.3s\); runner is running it"):
            run_once(waiter, "migrate:1", lambda: None, timeout=0.3)
        assert 0.25 < time.monotonic() - started < 2.0
    assert run_once(waiter, "migrate:1", lambda: None, timeout=0) is False


def test_bad_input_gets_a_clear_error() -> None:
    elector = Elector(MemoryLeaseStore(), **TIMINGS)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="run_once.. needs a non-empty key string"):
        run_once(elector, "  ", lambda: None)
    with pytest.raises(ConfigurationError, match=r"run_once\(\) needs an Elector"):
        run_once("elector", "k", lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"timeout \(-1\) must be a number of seconds"):
        run_once(elector, "k", lambda: None, timeout=-1)

    class Bare(LeaseStore):
        get = create = update = None  # type: ignore[assignment]

    bare = Elector(Bare(), **TIMINGS)  # type: ignore[abstract, arg-type]
    with pytest.raises(ConfigurationError, match=r"Bare cannot keep other leases beside its "
                                                 r"own, which run_once\(\) needs"):
        run_once(bare, "k", lambda: None)


# -- real processes ------------------------------------------------------------------------------


def journal_entries(path: Path) -> list[tuple[str, int, int, float]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        event, pid, token, at = line.split()
        entries.append((event, int(pid), int(token), float(at)))
    return entries


def started_by(path: Path, pid: int) -> bool:
    return any(e[0] == "start" and e[1] == pid for e in journal_entries(path))


def outcome(process: Process) -> tuple[str, float] | None:
    for _, line in process.lines:
        words = line.split()
        if words and words[0] in ("RETURNED", "FAILED", "TIMEOUT"):
            return line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1])
    return None


class Replicas:
    """Starts once_replica.py processes of one service (main lease + key)."""

    def __init__(self, spawn: Callable[..., Process], tmp_path: Path, backend: str,
                 key: str) -> None:
        self.spawn, self.key, self.backend = spawn, key, backend
        self.journal = tmp_path / "journal"
        if backend == "redis":
            require_server(REDIS_URL)
            self.lease = f"once-{os.getpid()}-{time.time_ns()}"
            self.backend_args = ["--redis-url", REDIS_URL]
        else:
            self.lease = str(tmp_path / "service.lease")
            self.backend_args = []

    def start(self, *options: str) -> Process:
        return self.spawn(str(HERE / "once_replica.py"), self.lease, self.key, str(self.journal),
                          *self.backend_args, *options)


def wait_for_outcome(process: Process, timeout: float = 30) -> tuple[str, float]:
    assert wait_until(lambda: outcome(process) is not None, timeout), process.output()
    result = outcome(process)
    assert result is not None
    return result


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_three_replicas_the_runner_killed_mid_way_another_completes_and_a_fourth_returns(
        backend: str, spawn: Callable[..., Process], tmp_path: Path) -> None:
    replicas = Replicas(spawn, tmp_path, backend, "migrate:0042")
    fleet = [replicas.start("--work-seconds", "1.5") for _ in range(3)]
    assert wait_until(lambda: any(started_by(replicas.journal, p.pid) for p in fleet), 30), \
        "\n".join(p.output() for p in fleet)
    runner = next(p for p in fleet if started_by(replicas.journal, p.pid))
    runner.kill()  # SIGKILL half-way through
    others = [p for p in fleet if p is not runner]
    results = [wait_for_outcome(p) for p in others]
    entries = journal_entries(replicas.journal)
    ends = [e for e in entries if e[0] == "end"]
    assert len(ends) == 1 and ends[0][1] in {p.pid for p in others}, entries
    assert sorted(r[0] for r in results) == ["RETURNED False", "RETURNED True"]
    # Nobody returned before the run completed; the second run has a higher fencing token.
    assert all(at >= ends[0][3] for _, at in results)
    starts = [e for e in entries if e[0] == "start"]
    assert [e[1] for e in starts] == [runner.pid, ends[0][1]]
    assert starts[1][2] > starts[0][2]
    late = replicas.start("--work-seconds", "1.5")
    assert wait_for_outcome(late)[0] == "RETURNED False"
    assert not started_by(replicas.journal, late.pid)


def test_a_runner_that_lost_its_lease_does_not_mark_the_key_completed(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    # Redis: a paused process holds no lock of a one-host store that others would wait on.
    replicas = Replicas(spawn, tmp_path, "redis", "migrate:0044")
    first = replicas.start("--work-seconds", "2", "--no-check")
    assert wait_until(lambda: started_by(replicas.journal, first.pid), 30), first.output()
    second = replicas.start("--work-seconds", "2", "--no-check")
    assert second.wait_for_line(lambda line: "waiting for migrate:0044" in line, 30), \
        second.output()
    first.signal(signal.SIGSTOP)  # loses the key's lease while its run goes on
    assert wait_until(lambda: started_by(replicas.journal, second.pid), 30), second.output()
    first.signal(signal.SIGCONT)  # finishes its run, after the second one took the key over
    assert wait_for_outcome(first)[0] == "RETURNED False"
    assert wait_for_outcome(second)[0] == "RETURNED True"
    assert first.wait_for_line(lambda line: "another replica took it over meanwhile" in line, 5)
    entries = journal_entries(replicas.journal)
    first_end = next(e for e in entries if e[0] == "end" and e[1] == first.pid)
    second_end = next(e for e in entries if e[0] == "end" and e[1] == second.pid)
    assert first_end[3] < second_end[3]  # the first one finished first, and still lost
    assert outcome(first)[1] >= second_end[3]  # type: ignore[index] - it waited for that run


def test_a_rolling_deploy_whose_leader_never_calls_the_key_does_not_hang(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    replicas = Replicas(spawn, tmp_path, "file", "migrate:0045")
    old = spawn(str(HERE / "contender.py"), replicas.lease, str(tmp_path / "old-journal"))
    assert old.wait_for_line(lambda line: line.startswith("LEADER"), 30), old.output()
    new = [replicas.start("--work-seconds", "0.5") for _ in range(3)]
    results = sorted(wait_for_outcome(p)[0] for p in new)
    assert results == ["RETURNED False", "RETURNED False", "RETURNED True"]
    assert "FOLLOWER" not in old.output()  # the old version led the service all along


def test_different_keys_run_at_the_same_time_in_different_processes(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    slow = Replicas(spawn, tmp_path, "file", "warm:slow")
    quick = Replicas(spawn, tmp_path, "file", "warm:quick")
    quick.journal = tmp_path / "quick-journal"
    first = slow.start("--work-seconds", "5")
    assert wait_until(lambda: started_by(slow.journal, first.pid), 30), first.output()
    second = quick.start("--work-seconds", "0.1")
    result, at = wait_for_outcome(second, 30)
    assert result == "RETURNED True"
    assert outcome(first) is None  # the slow key is still running


def test_status_reads_the_lease_of_a_key(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from singleton_jobs import FileElector

    path = tmp_path / "service.lease"
    elector = FileElector(path, **TIMINGS)  # type: ignore[arg-type]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}

    def status(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "singleton_jobs", "status", "--lease-path",
                               str(path), *options], capture_output=True, text=True, env=env,
                              timeout=60)

    assert run_once(elector, "migrate:0042", lambda: None) is True
    done = status("--once", "migrate:0042")
    assert done.returncode == 0, done.stderr
    assert "service.lease-once-migrate-0042-" in done.stdout
    assert "completed:   the job of this key ran to its end" in done.stdout
    with pytest.raises(ZeroDivisionError):
        run_once(elector, "migrate:0043", lambda: 1 / 0)
    failed = status("--once", "migrate:0043", "--json")
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["state"] == "failed"
    assert status("--once", "never-called").returncode == 1


# -- found in review: races around failures and marks ---------------------------------------------


class SlowReads(MemoryLeaseStore):
    """A key lease whose reads take a while, so that concurrent callers interleave."""

    def get(self, *, timeout: float = 0.0) -> object:  # type: ignore[override]
        time.sleep(0.03)
        return super().get(timeout=timeout)


class Service(MemoryLeaseStore):
    def __init__(self, key_store: Callable[[], MemoryLeaseStore]) -> None:
        super().__init__()
        self.key_store = key_store

    def sibling(self, key: str) -> MemoryLeaseStore:
        with self._lock:
            return self._siblings.setdefault(key, self.key_store())


def test_callers_that_waited_for_a_failed_run_never_run_it_again() -> None:
    for _ in range(5):
        shared = Service(SlowReads)
        runs: list[int] = []

        def migrate(runs: list[int] = runs) -> None:
            runs.append(1)
            raise RuntimeError("fails at once")

        electors = [Elector(shared, identity=f"r{index}", **TIMINGS)  # type: ignore[arg-type]
                    for index in range(4)]
        outcomes = call_together(electors, "k", migrate)
        assert len(runs) == 1
        assert sorted(type(o).__name__ for o in outcomes.values()) == [
            "RunOnceFailed", "RunOnceFailed", "RunOnceFailed", "RuntimeError"]


def test_a_runner_that_gets_the_key_back_later_does_not_mark_its_first_run() -> None:
    from singleton_jobs import LeaseRecord

    shared = MemoryLeaseStore()
    elector = Elector(shared, identity="A", **TIMINGS)  # type: ignore[arg-type]
    key_store = shared.sibling("migrate")
    tokens: list[int] = []

    def migrate() -> None:
        tokens.append(current_term().fencing_token)
        if len(tokens) > 1:
            return
        # Replica B takes the key over while this run goes on, then gives it up half-way;
        # this replica's keeper takes it again, in a new term, before this run ends.
        record, version = key_store.get()  # type: ignore[misc]
        now = time.time()
        version = key_store.update(LeaseRecord("B", 1.0, now, now, record.transitions + 1),
                                   version)
        time.sleep(0.3)
        record, version = key_store.get()  # type: ignore[misc]
        key_store.update(record._replace(holder="", lease_duration=1.0), version)
        assert wait_until(lambda: key_store.get()[0].holder == "A", 5)  # type: ignore[index]

    assert run_once(elector, "migrate", migrate) is True
    assert len(tokens) == 2 and tokens[1] > tokens[0]  # the first run was not marked: rerun
    stored = key_store.get()
    assert stored is not None and stored[0].holder == COMPLETED_MARK
    assert stored[0].transitions == tokens[1]


def test_a_mark_that_went_through_although_its_call_failed_completes_the_key(
        caplog: pytest.LogCaptureFixture) -> None:
    from singleton_jobs import LeaseRecord, LeaseStoreError

    class LosesAnswer(MemoryLeaseStore):
        lost = False

        def update(self, record: LeaseRecord, version: object, *,
                   timeout: float = 0.0) -> object:
            stored = super().update(record, version, timeout=timeout)
            if record.holder == COMPLETED_MARK and stored is not None and not self.lost:
                self.lost = True
                raise LeaseStoreError("read timed out (the write was applied)")
            return stored

    elector = Elector(Service(LosesAnswer), identity="a", **TIMINGS)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        assert run_once(elector, "k", lambda: None) is True
    assert "another replica took it over" not in caplog.text


def test_run_once_in_a_forked_child_needs_an_elector_of_its_own(tmp_path: Path) -> None:
    from singleton_jobs import FileElector, SingletonJobsError

    started = FileElector(tmp_path / "started.lease", **TIMINGS).start()  # type: ignore[arg-type]
    created = FileElector(tmp_path / "created.lease", **TIMINGS)  # type: ignore[arg-type]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            try:
                run_once(started, "k", lambda: None)
                answer = "ran with the inherited elector"
            except SingletonJobsError as exc:
                answer = "refused: " + str(exc)[:200]
            # Created before the fork, never started: the child runs under its own identity.
            identities: list[str] = []
            run_once(created, "k", lambda: identities.append(current_term().elector.identity))
            answer += f"|{identities[0] != created.identity}"
        finally:
            os.write(write, answer.encode())
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1000).decode()
    os.waitpid(pid, 0)
    started.stop()
    refused, fresh = answer.split("|")
    assert refused.startswith("refused: ") and "inherited by fork()" in refused
    assert fresh == "True"
