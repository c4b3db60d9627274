"""Celery beat on every replica with ``singleton_jobs.celery``: real beat and worker processes,
a real Redis broker, and what the worker received as the evidence."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HERE, Process, wait_until
from servers import REDIS_URL, process_tree, require_server

from singleton_jobs import ConfigurationError

INTERVAL = 0.5           # seconds between two sends of the periodic entry
LEASE_DURATION = 2.0
RETRY_PERIOD = 0.2


Receipt = tuple[float, int, str, float]  # sent_at, beat pid, fencing token, received_at


def receipts(journal: Path) -> list[Receipt]:
    if not journal.exists():
        return []
    rows = []
    for line in journal.read_text().splitlines():
        sent, pid, token, received = line.split()
        rows.append((float(sent), int(pid), token, float(received)))
    return sorted(rows)


def duplicates(rows: list[Receipt]) -> list[tuple[Receipt, Receipt]]:
    """Pairs of sends closer than half the interval: one due time sent twice."""
    return [(a, b) for a, b in zip(rows, rows[1:]) if b[0] - a[0] < INTERVAL / 2]


class Fleet:
    """Beat and worker processes of one Celery app (tests/celery_beat_app.py) with a queue and
    a lease of their own."""

    def __init__(self, spawn: Callable[..., Process], tmp_path: Path) -> None:
        require_server(REDIS_URL)
        self.spawn, self.tmp_path = spawn, tmp_path
        self.queue = f"beat-{uuid.uuid4().hex[:12]}"
        self.journal = tmp_path / "received"
        self.env = {
            **os.environ, "BEAT_BROKER": REDIS_URL, "BEAT_QUEUE": self.queue,
            "BEAT_LEASE": f"beat-{uuid.uuid4().hex[:12]}", "BEAT_JOURNAL": str(self.journal),
            "BEAT_INTERVAL": str(INTERVAL), "BEAT_LEASE_DURATION": str(LEASE_DURATION),
            "BEAT_RENEW_DEADLINE": "1", "BEAT_RETRY_PERIOD": str(RETRY_PERIOD),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(HERE.parent),
                                                        os.environ.get("PYTHONPATH")])),
        }
        self.beats: list[Process] = []

    def worker(self, *options: str) -> Process:
        process = self.spawn("-m", "celery", "-A", "celery_beat_app", "worker", "-Q",
                             self.queue, "--pool", "solo", "-l", "info",
                             "--hostname", f"w{len(self.beats)}-{uuid.uuid4().hex[:6]}@%h",
                             *options, env=self.env)
        assert process.wait_for_line(lambda line: "ready." in line, 60), process.output()
        return process

    def beat(self, scheduler: str = "singleton_jobs.celery:LeaderScheduler") -> Process:
        index = len(self.beats)
        process = self.spawn("-m", "celery", "-A", "celery_beat_app", "beat", "-S", scheduler,
                             "-s", str(self.tmp_path / f"schedule-{index}"), "-l", "info",
                             env=self.env)
        self.beats.append(process)
        return process

    def sender(self, since: float = 0.0) -> int:
        """The pid of the beat that sent the last message received after ``since``."""
        assert wait_until(lambda: any(r[0] > since for r in receipts(self.journal)), 30), \
            self.output()
        return receipts(self.journal)[-1][1]

    def start(self, beats: int) -> Process:
        """A worker and ``beats`` beats; returns the beat that sends."""
        self.worker()
        for _ in range(beats):
            self.beat()
        leader = self.sender()
        return next(b for b in self.beats if b.pid == leader)

    def taken_over(self, leader: Process, since: float) -> float:
        """Seconds from ``since`` to the first send of another beat (which must come)."""
        new = self.sender(since=since)
        assert new != leader.pid
        return min(r[0] for r in receipts(self.journal) if r[1] == new) - since

    def output(self) -> str:
        return "\n\n".join(f"beat {b.pid}:\n{b.output()[-3000:]}" for b in self.beats)


@pytest.fixture
def fleet(spawn: Callable[..., Process], tmp_path: Path) -> Fleet:
    return Fleet(spawn, tmp_path)


def test_three_beats_send_every_due_task_exactly_once(fleet: Fleet) -> None:
    fleet.worker()
    for _ in range(3):
        fleet.beat()
    assert wait_until(lambda: len(receipts(fleet.journal)) >= 16, 60), fleet.output()
    rows = receipts(fleet.journal)
    assert duplicates(rows) == []
    assert len({pid for _, pid, _, _ in rows}) == 1, rows  # one sender
    assert len({token for _, _, token, _ in rows}) == 1 and rows[0][2] != "None"
    gaps = [b[0] - a[0] for a, b in zip(rows, rows[1:])]
    assert max(gaps) < 2.5 * INTERVAL, gaps  # none lost
    followers = [b for b in fleet.beats if b.pid != rows[0][1]]
    assert all("not sending due task tick" in b.output() for b in followers)


def test_a_killed_leading_beat_is_replaced_within_about_one_lease(fleet: Fleet) -> None:
    leader = fleet.start(beats=3)
    leader.kill()
    took = fleet.taken_over(leader, since=time.time())
    # The lease expires lease_duration after the last renew; the next due time follows.
    assert took < LEASE_DURATION + INTERVAL + 1.5, took
    assert duplicates(receipts(fleet.journal)) == []


def test_sigterm_hands_over_within_one_retry_period(fleet: Fleet) -> None:
    leader = fleet.start(beats=2)
    leader.signal(signal.SIGTERM)
    stopped_at = time.time()
    assert leader.popen.wait(20) == 0, leader.output()
    assert "released" in leader.output()
    took = fleet.taken_over(leader, since=stopped_at)
    # Released, not expired (which takes lease_duration): a retry period and a due time.
    assert took < RETRY_PERIOD + INTERVAL + 0.8, took
    assert duplicates(receipts(fleet.journal)) == []


def test_a_paused_leading_beat_that_resumes_sends_nothing_stale(fleet: Fleet) -> None:
    paused = fleet.start(beats=2)
    leader = paused.pid
    paused.signal(signal.SIGSTOP)
    stopped_at = time.time()
    fleet.taken_over(paused, since=stopped_at + 0.1)
    time.sleep(LEASE_DURATION)
    paused.signal(signal.SIGCONT)  # its due entries are overdue now: it must not send them
    resumed_at = time.time()
    assert wait_until(lambda: len([r for r in receipts(fleet.journal) if r[0] > resumed_at]) >= 4,
                      30)
    assert paused.wait_for_line(lambda line: "not sending due task tick" in line, 10), \
        paused.output()
    rows = receipts(fleet.journal)
    assert [r for r in rows if r[1] == leader and r[0] > stopped_at] == []
    assert duplicates(rows) == []


def test_worker_with_embedded_beat_on_two_replicas_sends_once(fleet: Fleet) -> None:
    first = fleet.worker("-B", "--scheduler", "singleton_jobs.celery:LeaderScheduler",
                         "-s", str(fleet.tmp_path / "embedded-1"))
    second = fleet.worker("-B", "--scheduler", "singleton_jobs.celery:LeaderScheduler",
                          "-s", str(fleet.tmp_path / "embedded-2"))
    assert wait_until(lambda: len(receipts(fleet.journal)) >= 10, 60), \
        first.output() + second.output()
    rows = receipts(fleet.journal)
    assert duplicates(rows) == []
    assert len({pid for _, pid, _, _ in rows}) == 1
    # Stopping the worker whose embedded beat leads (its beat runs in a child process) hands
    # over at once: the beat releases the lease.
    beat_pid = rows[-1][1]
    leading = next(w for w in (first, second) if beat_pid in process_tree(w.pid))
    leading.signal(signal.SIGTERM)
    stopped_at = time.time()
    new = fleet.sender(since=stopped_at)
    assert new != beat_pid
    first_new = min(r[0] for r in receipts(fleet.journal) if r[1] == new)
    assert first_new - stopped_at < LEASE_DURATION, first_new - stopped_at
    assert leading.wait_for_line(lambda line: "released" in line, 10), leading.output()
    assert duplicates(receipts(fleet.journal)) == []


# -- configuration, in this process ------------------------------------------------------------


def elector_for(**settings: object) -> object:
    from celery import Celery

    from singleton_jobs.celery import elector_from_config

    app = Celery("configured", broker=str(settings.pop("broker", "redis://127.0.0.1:6379/0")))
    app.conf.update({f"singleton_jobs_{key}": value for key, value in settings.items()})
    return elector_from_config(app)


def test_configuration_builds_the_elector_from_the_celery_settings(tmp_path: Path) -> None:
    from singleton_jobs import FileElector, RedisElector

    redis_default = elector_for(lease_name="mail-beat", retry_period=0.5, renew_deadline=3,
                                lease_duration=4)
    assert isinstance(redis_default, RedisElector)
    assert redis_default.store.name == "redis://127.0.0.1:6379/0/singleton_jobs:{mail-beat}"
    assert (redis_default.lease_duration, redis_default.renew_deadline,
            redis_default.retry_period) == (4, 3, 0.5)
    file = elector_for(backend="file", lease_path=str(tmp_path / "beat.lease"),
                       identity="beat-1", broker="amqp://guest@localhost//")
    assert isinstance(file, FileElector) and file.identity == "beat-1"
    assert file.store.name.endswith("beat.lease")


def test_configuration_errors_name_the_setting_and_the_fix() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown Celery setting\(s\) "
                                                 r"singleton_jobs_lease_durration; the settings "
                                                 r"of singleton_jobs.celery are .*"
                                                 r"singleton_jobs_lease_duration"):
        elector_for(lease_durration=5)
    with pytest.raises(ConfigurationError, match=r"set singleton_jobs_backend to one of redis, "
                                                 r"sql, file, kubernetes .* needs a Redis "
                                                 r"broker, not 'amqp://"):
        elector_for(broker="amqp://guest@localhost//")
    with pytest.raises(ConfigurationError, match=r"singleton_jobs_backend \('zookeeper'\) must "
                                                 r"be one of"):
        elector_for(backend="zookeeper")
    with pytest.raises(ConfigurationError, match=r"set singleton_jobs_url to a SQLAlchemy"):
        elector_for(backend="sql")
    with pytest.raises(ConfigurationError, match=r"lease_duration \(5\) must be greater "
                                                 r"than renew_deadline \(10\.0\)"):
        elector_for(lease_duration=5)


# -- django-celery-beat: the schedule in the database ---------------------------------------------


def test_database_scheduler_sends_once_and_a_new_leader_continues_the_shared_schedule(
        spawn: Callable[..., Process], tmp_path: Path, fresh_postgres_database: str) -> None:
    import subprocess
    import sys

    fleet = Fleet(spawn, tmp_path)
    fleet.env["DJANGO_DATABASE"] = fresh_postgres_database
    subprocess.run([sys.executable, "-c", "import django_beat_app; django_beat_app.prepare()"],
                   env=fleet.env, check=True, timeout=120)
    worker = spawn("-m", "celery", "-A", "django_beat_app", "worker", "-Q", fleet.queue,
                   "--pool", "solo", "-l", "info", env=fleet.env)
    assert worker.wait_for_line(lambda line: "ready." in line, 60), worker.output()
    for index in range(2):
        fleet.beats.append(spawn("-m", "celery", "-A", "django_beat_app", "beat", "-S",
                                 "singleton_jobs.celery:LeaderDatabaseScheduler",
                                 "-s", str(tmp_path / f"unused-{index}"), "-l", "info",
                                 env=fleet.env))

    def rows() -> list[tuple[str, float]]:
        if not fleet.journal.exists():
            return []
        return sorted(((token, float(at)) for token, at in
                       (line.split() for line in fleet.journal.read_text().splitlines())),
                      key=lambda row: row[1])

    assert wait_until(lambda: len(rows()) >= 4, 60), fleet.output() + worker.output()
    leading = [b for b in fleet.beats if "reading the schedule from the database" in b.output()]
    assert len(leading) == 1, fleet.output()
    follower = next(b for b in fleet.beats if b is not leading[0])
    # The follower never read the schedule: it only looked at leadership.
    assert "DatabaseScheduler: Schedule changed" not in follower.output()
    leading[0].kill()
    killed_at = time.time()
    assert wait_until(lambda: any(at > killed_at + 0.5 for _, at in rows()), 30), \
        follower.output()
    assert "reading the schedule from the database" in follower.output()
    received = rows()
    tokens = [token for token, _ in received]
    assert tokens == sorted(tokens, key=int) and len(set(tokens)) == 2  # one token per leader
    times = [at for _, at in received]
    assert all(b - a > 0.5 for a, b in zip(times, times[1:])), received  # never twice
    first_new = min(at for token, at in received if token == tokens[-1])
    assert first_new - killed_at < LEASE_DURATION + 1 + 2.0
