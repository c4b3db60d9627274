"""examples/deploy/ under real servers: one job runner at a time, and in the right process.

Each test starts real software — gunicorn, uvicorn, uWSGI, a Celery prefork worker, Flask's and
Django's reloaders, process pools — on a lease file in ``tmp_path`` with second-scale timings.
Every run of the guarded job appends ``pid identity token start end`` (monotonic seconds,
comparable across processes on one Linux host) to a journal. The tests check on the journal
that runs of different processes never overlap and fencing tokens never go back, that the job
runs, and that it runs in the process meant to run it: a worker, never the pre-fork master or
the reloader's watcher. Every server gets its own process group, killed when the test ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import HERE, wait_until

DEPLOY = HERE.parent / "examples" / "deploy"
# As in test_processes.py: followers take over 2 s after the last change they saw, a leader
# gives up 1 s after its last good renew; the 1 s between is the margin on 2 noisy cores.
LEASE, RENEW, RETRY = 2.0, 1.0, 0.1
JOB_EVERY = 0.05
# Generous bounds for start-up and failover on a loaded 2-core machine.
START = 60.0
FAILOVER = LEASE + 30.0


class Run(NamedTuple):
    pid: int
    identity: str
    token: int
    start: float
    end: float


def read_runs(journal: Path) -> list[Run]:
    if not journal.exists():
        return []
    runs = []
    for line in journal.read_text().splitlines():
        pid, identity, token, start, end = line.split()
        runs.append(Run(int(pid), identity, int(token), float(start), float(end)))
    return sorted(runs, key=lambda run: run.start)


def wait_for_runs(journal: Path, count: int = 10, timeout: float = START,
                  where: Callable[[Run], bool] = lambda run: True) -> list[Run]:
    """Wait until the journal holds ``count`` runs matching ``where``; return those runs."""
    found: list[Run] = []

    def enough() -> bool:
        found[:] = [run for run in read_runs(journal) if where(run)]
        return len(found) >= count

    assert wait_until(enough, timeout, interval=0.05), \
        f"{len(found)} of {count} runs after {timeout}s: {read_runs(journal)[-5:]}"
    return found


def assert_one_runner_at_a_time(runs: list[Run]) -> None:
    """No two processes ran the job at once; tokens never went back; one identity per process,
    one holder per token."""
    identity_of: dict[int, str] = {}
    holder_of: dict[int, str] = {}
    latest_end: dict[int, float] = {}
    token = -1
    for run in runs:
        assert identity_of.setdefault(run.pid, run.identity) == run.identity, run
        assert holder_of.setdefault(run.token, run.identity) == run.identity, \
            f"token {run.token} used by {holder_of[run.token]} and {run.identity}"
        assert run.token >= token, f"fencing token went back: {run} after token {token}"
        token = run.token
        for pid, end in latest_end.items():
            assert pid == run.pid or run.start >= end, f"{run} overlaps a run of pid {pid}"
        latest_end[run.pid] = max(latest_end.get(run.pid, 0.0), run.end)
    assert len(set(identity_of.values())) == len(identity_of), f"shared identity: {identity_of}"


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def http_get(unix_socket: Path, timeout: float = 10.0) -> bytes:
    """The body of ``GET /`` over HTTP/1.0 on a Unix socket."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(timeout)
        connection.connect(str(unix_socket))
        connection.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
    return response.partition(b"\r\n\r\n")[2]


class Server:
    """A real server in its own process group, its output in a log file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with open(log, "wb") as output:
            self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                          stdout=output, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, predicate: Callable[[str], object], timeout: float = START) -> bool:
        return wait_until(lambda: predicate(self.log()), timeout, interval=0.05)

    def scheduler_pids(self) -> set[int]:
        """Processes that started a scheduler (each prints ``[pid] scheduler started``)."""
        return {int(pid) for pid in re.findall(r"\[(\d+)\] scheduler started", self.log())}

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers; every process of every server's group is killed when the test ends."""
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str], cwd: Path = DEPLOY) -> Server:
        server = Server(list(args), cwd, env, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The examples' settings (see examples/deploy/jobs.py), shrunk for tests."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_RUNTIME_DIR": str(tmp_path),
            "LEASE_PATH": str(tmp_path / "jobs.lease"), "JOURNAL": str(tmp_path / "journal"),
            "LEASE_DURATION": str(LEASE), "RENEW_DEADLINE": str(RENEW),
            "RETRY_PERIOD": str(RETRY), "JOB_EVERY": str(JOB_EVERY)}


def check_workers_fail_over(server: Server, journal: Path, workers: int = 3) -> None:
    """The job runs in exactly one worker, never in the master; kill the leading worker: another
    worker leads after it and the server replaces the killed one."""
    assert server.wait_for(lambda _: len(server.scheduler_pids()) >= workers), server.log()
    started = server.scheduler_pids()
    leader = wait_for_runs(journal)[-1].pid
    assert leader in started and leader != server.pid
    os.kill(leader, signal.SIGKILL)
    killed_at = time.monotonic()
    after = wait_for_runs(journal, timeout=FAILOVER, where=lambda run: run.start > killed_at)
    assert leader not in {run.pid for run in after}
    assert server.wait_for(lambda _: server.scheduler_pids() - started), \
        f"the killed worker was not replaced:\n{server.log()}"
    runs = read_runs(journal)
    assert_one_runner_at_a_time(runs)
    assert {run.pid for run in runs} <= server.scheduler_pids() - {server.pid}


# -- pre-fork servers -------------------------------------------------------------------------


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_elect_one_runner_and_a_killed_leader_is_replaced(
        launch: Callable[..., Server], env: dict[str, str], tmp_path: Path,
        preload: bool) -> None:
    server = launch(sys.executable, "-m", "gunicorn", "-w", "3",
                    "--bind", f"unix:{tmp_path / 'gunicorn.sock'}",
                    *(["--preload"] if preload else []), "gunicorn_app:app", env=env)
    check_workers_fail_over(server, tmp_path / "journal")


def test_gunicorn_preload_elector_started_in_the_master_never_runs_in_workers(
        launch: Callable[..., Server], env: dict[str, str], tmp_path: Path) -> None:
    """The wrong pattern (tests/deploy_preload_wrong.py): an elector started at import, in the
    master, and a scheduler in every worker using the elector it inherited. The inherited copies
    are dead: the master runs the job, the workers never do and never write its lease."""
    sock = tmp_path / "gunicorn.sock"
    journal = tmp_path / "journal"
    server = launch(sys.executable, "-m", "gunicorn", "-w", "3", "--preload",
                    "--bind", f"unix:{sock}", "-c", "deploy_preload_wrong_conf.py",
                    "deploy_preload_wrong:app", env=env, cwd=HERE)
    assert server.wait_for(lambda _: len(server.scheduler_pids()) >= 4), server.log()
    workers = server.scheduler_pids() - {server.pid}
    forked_at = time.monotonic()
    # Past the renew deadline after the fork, when a copy of the master's state would expire.
    master_runs = wait_for_runs(journal, where=lambda run: run.start > forked_at + RENEW)
    assert {run.pid for run in read_runs(journal)} == {server.pid}

    states: dict[int, dict[str, Any]] = {}

    def ask_every_worker() -> bool:
        state = json.loads(http_get(sock))
        states[state["pid"]] = state
        return set(states) >= workers

    assert wait_until(ask_every_worker, 30, interval=0), f"answers from {set(states)}"
    for state in states.values():
        assert state["identity"] == master_runs[0].identity  # a copy of the master's elector
        assert (state["is_leader"], state["fencing_token"], state["running"], state["ran"]) == \
            (False, None, False, False), state
        for call in ("start", "acquire_lease", "wait_for_leadership"):
            assert state[call].startswith("raised SingletonJobsError"), state
            assert "post_fork" in state[call], state[call]

    # A worker that exits runs atexit (which stops electors): the master's lease is not its own.
    victim = min(workers)
    os.kill(victim, signal.SIGTERM)
    assert server.wait_for(lambda log: f"Worker exiting (pid: {victim})" in log), server.log()
    exited_at = time.monotonic()
    wait_for_runs(journal, where=lambda run: run.start > exited_at)
    runs = read_runs(journal)
    assert {run.pid for run in runs} == {server.pid}
    # A release or takeover would have made the master acquire again, with a new token.
    assert {run.token for run in runs} == {master_runs[0].token}
    assert (tmp_path / "jobs.lease").read_text().startswith(master_runs[0].identity + ":")
    assert_one_runner_at_a_time(runs)


def test_gunicorn_workers_given_one_identity_never_both_lead(
        launch: Callable[..., Server], env: dict[str, str], tmp_path: Path) -> None:
    """Every worker campaigns as POD_NAME (tests/deploy_same_identity_conf.py): one leads, the
    others wait and log an error naming the identity."""
    server = launch(sys.executable, "-m", "gunicorn", "-w", "3",
                    "--bind", f"unix:{tmp_path / 'gunicorn.sock'}",
                    "-c", str(HERE / "deploy_same_identity_conf.py"), "gunicorn_app:app",
                    env={**env, "POD_NAME": "report-pod-7"})
    assert server.wait_for(lambda log: log.count("same identity 'report-pod-7'") >= 2), \
        server.log()
    runs = wait_for_runs(tmp_path / "journal", count=20)
    assert len({run.pid for run in runs}) == 1, runs
    assert_one_runner_at_a_time(runs)


def test_uvicorn_workers_elect_one_runner_and_a_killed_leader_is_replaced(
        launch: Callable[..., Server], env: dict[str, str], tmp_path: Path) -> None:
    server = launch(sys.executable, "-m", "uvicorn", "--workers", "3",
                    "--uds", str(tmp_path / "uvicorn.sock"), "uvicorn_app:app", env=env)
    check_workers_fail_over(server, tmp_path / "journal")


@pytest.mark.parametrize("lazy_apps", [False, True], ids=["postfork", "lazy-apps"])
def test_uwsgi_workers_elect_one_runner_and_a_killed_leader_is_replaced(
        launch: Callable[..., Server], env: dict[str, str], tmp_path: Path,
        lazy_apps: bool) -> None:
    uwsgi = shutil.which("uwsgi")
    if uwsgi is None:
        pytest.skip("uWSGI is not installed (pip install uwsgi compiles it)")
    server = launch(uwsgi, "--master", "--processes", "3", "--enable-threads",
                    *(["--lazy-apps"] if lazy_apps else []),
                    "--socket", str(tmp_path / "uwsgi.sock"), "--module", "uwsgi_app:app",
                    env=env)
    check_workers_fail_over(server, tmp_path / "journal")


# -- Celery -----------------------------------------------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def celery_queue() -> Iterator[str]:
    """A queue name of its own on the Redis at REDIS_URL; its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    queue = f"singleton-jobs-test-{uuid.uuid4().hex}"
    yield queue
    client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    # Messages a killed worker had fetched and not acknowledged: drop ours, not others'.
    for tag, message in client.hgetall("unacked").items():
        if queue.encode() in message:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    client.close()


def test_celery_schedules_in_the_main_process_of_one_worker_and_tasks_run_in_children(
        launch: Callable[..., Server], env: dict[str, str], tmp_path: Path,
        celery_queue: str) -> None:
    """Two prefork workers (two hosts' worth, -c 3 each): the job runs in the main process of
    one of them and enqueues a task that pool children execute; kill that worker, the other
    one's main process takes over."""
    env = {**env, "CELERY_BROKER_URL": REDIS_URL, "REPORT_QUEUE": celery_queue,
           "JOB_EVERY": "0.1"}
    journal = tmp_path / "journal"
    workers = {}
    for name in ("alpha", "beta"):
        worker = launch(sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-c", "3",
                        "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
                        "--without-heartbeat", "-l", "info", env=env)
        workers[worker.pid] = worker
    for worker in workers.values():
        assert worker.wait_for(lambda _, w=worker: w.pid in w.scheduler_pids()), worker.log()
    leader = wait_for_runs(journal)[-1].pid
    assert leader in workers

    def deliveries() -> list[tuple[int, int]]:
        return [(int(pid), int(token)) for worker in workers.values()
                for pid, token in re.findall(r"\[(\d+)\] delivered report (\d+)", worker.log())]

    assert wait_until(lambda: len(deliveries()) >= 5, START), \
        "\n".join(worker.log() for worker in workers.values())
    assert not {pid for pid, _ in deliveries()} & set(workers)  # children, not main processes

    workers[leader].kill()
    killed_at = time.monotonic()
    after = wait_for_runs(journal, timeout=FAILOVER, where=lambda run: run.start > killed_at)
    (successor,) = set(workers) - {leader}
    assert {run.pid for run in after} == {successor}
    runs = read_runs(journal)
    assert {run.pid for run in runs} <= set(workers)
    assert_one_runner_at_a_time(runs)
    assert wait_until(lambda: any(token == after[-1].token for _, token in deliveries()), START)


# -- reloaders --------------------------------------------------------------------------------


# A lease long enough to tell a released lease (taken at once) from an expired one.
RELOADER_LEASE = 6.0


def check_reloads(server: Server, journal: Path, reload: Callable[[], None]) -> None:
    """The job runs in the reloader's serving child, never in its watcher; on a reload the old
    child releases the lease at exit and the new child takes it over without waiting it out."""
    first = wait_for_runs(journal)
    child = first[-1].pid
    assert parent_of(child) == server.pid, f"{child} is not a child of {server.pid}"
    reload()
    reloaded_at = time.monotonic()
    after = wait_for_runs(journal, timeout=FAILOVER,
                          where=lambda run: run.start > reloaded_at and run.pid != child)
    successor = after[0].pid
    assert parent_of(successor) == server.pid, f"{successor} is not a child of {server.pid}"
    runs = read_runs(journal)
    assert server.pid not in {run.pid for run in runs}
    assert_one_runner_at_a_time(runs)
    assert after[0].token > first[-1].token
    last_of_old_child = max(run.end for run in runs if run.pid == child)
    # The gap is the new child's start-up; an unreleased lease would add RELOADER_LEASE to it.
    assert after[0].start - last_of_old_child < RELOADER_LEASE - 1, "the lease was not released"


def touch(path: Path) -> None:
    """Give ``path`` a new modification time that stat-based reloaders cannot miss."""
    later = time.time() + 10
    os.utime(path, (later, later))


def test_flask_reloader_runs_the_job_in_the_serving_child_only_across_reloads(
        launch: Callable[..., Server], env: dict[str, str], tmp_path: Path) -> None:
    trigger = tmp_path / "trigger.txt"
    trigger.write_text("watched by the reloader\n")
    server = launch(sys.executable, "-m", "flask", "--app", "flask_app", "run", "--debug",
                    "--port", "0", "--extra-files", str(trigger),
                    env={**env, "LEASE_DURATION": str(RELOADER_LEASE)})
    check_reloads(server, tmp_path / "journal", lambda: touch(trigger))


def test_django_runserver_runs_the_job_in_the_autoreloader_child_only_across_reloads(
        launch: Callable[..., Server], env: dict[str, str], tmp_path: Path) -> None:
    # A copy (with the jobs.py next to it that manage.py finds), so that the reload touches no
    # file of the repository.
    site = tmp_path / "django_site"
    shutil.copytree(DEPLOY / "django_site", site)
    shutil.copy(DEPLOY / "jobs.py", tmp_path)
    server = launch(sys.executable, "manage.py", "runserver", "127.0.0.1:0",
                    env={**env, "LEASE_DURATION": str(RELOADER_LEASE)}, cwd=site)
    check_reloads(server, tmp_path / "journal", lambda: touch(site / "reports.py"))


# -- process pools ----------------------------------------------------------------------------


def test_multiprocessing_parents_schedule_and_pool_workers_only_compute(
        launch: Callable[..., Server], env: dict[str, str], tmp_path: Path) -> None:
    """Two copies of examples/deploy/multiprocessing_pool.py on the default lease named
    "nightly-report": one parent runs the job and hands work to its pool workers; SIGTERM on it
    releases the lease, and the other parent takes over well before the lease would expire."""
    del env["LEASE_PATH"]
    env.update(LEASE_DURATION="6", JOB_EVERY="0.1")
    journal = tmp_path / "journal"
    parents = {}
    for _ in range(2):
        parent = launch(sys.executable, "multiprocessing_pool.py", env=env)
        parents[parent.pid] = parent
    leader = wait_for_runs(journal)[-1].pid
    assert leader in parents
    workers = {int(pid) for pid in re.findall(r"rendered in (\d+)", parents[leader].log())}
    assert workers and not workers & set(parents)
    parents[leader].popen.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    after = wait_for_runs(journal, where=lambda run: run.start > stopped_at)
    assert after[0].start - stopped_at < 4.0, "the lease was not released: it expired"
    assert parents[leader].popen.wait(30) == 143, parents[leader].log()  # exit_on_sigterm()
    runs = read_runs(journal)
    assert {run.pid for run in runs} <= set(parents)
    assert_one_runner_at_a_time(runs)
    assert (tmp_path / "singleton_jobs" / "nightly-report.lease").exists()


@pytest.fixture
def fork_children(tmp_path: Path) -> dict[str, Any]:
    """What tests/deploy_fork_children.py reports: a leading parent and its forked pool workers."""
    result = subprocess.run([sys.executable, str(HERE / "deploy_fork_children.py"),
                             str(tmp_path)], capture_output=True, text=True, timeout=120,
                            cwd=HERE)
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    report["stderr"] = result.stderr
    return report


def test_elector_inherited_by_pool_workers_is_dead_and_never_writes_the_lease(
        fork_children: dict[str, Any]) -> None:
    parent, workers = fork_children, fork_children["workers"]
    assert len({worker["pid"] for worker in workers}) >= 2
    for worker in workers:
        assert (worker["is_leader"], worker["fencing_token"], worker["running"],
                worker["guarded"]) == (False, None, False, None), worker
        for call in ("start", "acquire_lease", "wait_for_leadership"):
            assert worker[call].startswith("raised SingletonJobsError"), worker
            assert "after the fork" in worker[call], worker[call]
    # The parent led throughout, under one token, and the record is still its own.
    assert parent["is_leader"] and parent["token_after"] == parent["token_before"]
    assert parent["lease"].startswith(parent["identity"] + ":")


def test_elector_constructed_before_fork_can_be_started_in_a_pool_worker(
        fork_children: dict[str, Any]) -> None:
    for worker in fork_children["workers"]:
        assert worker["unstarted_identity_before"] == fork_children["unstarted_identity"]
        assert f"_{worker['pid']}_" in worker["unstarted_identity"]  # a fresh default identity
        assert worker["unstarted_led"], fork_children["stderr"]
