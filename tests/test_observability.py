"""Operability: health checks, the application watchdog, Prometheus metrics, log fields.

Metrics and health are read the way an operator's tools read them: over real HTTP, parsed with
prometheus_client's own text parser. The watchdog and failover tests use real processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, Process, wait_until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from singleton_jobs import ConfigurationError, Elector, MemoryLeaseStore, leader_only
from singleton_jobs.lease import LeaseRecord
from singleton_jobs.observability import (
    make_asgi_app,
    register_metrics,
    start_http_server,
)
from singleton_jobs.store import Version

LEASE, RENEW, RETRY = 1.0, 0.6, 0.1
FAST = dict(lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY)


@pytest.fixture
def electors() -> Iterator[list[Elector]]:
    started: list[Elector] = []
    yield started
    for elector in started:
        elector.stop()


def scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a metrics page, by name and sorted labels, parsed by prometheus_client."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(page: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, /,
          **labels: str) -> float | None:
    return page.get((metric, tuple(sorted(labels.items()))))


def registry_page(registry: CollectorRegistry) -> dict[Any, float]:
    return samples(generate_latest(registry).decode())


# -- the application watchdog -------------------------------------------------------------------


class Heart:
    """Calls ``elector.heartbeat()`` from a thread while ``beating`` is set."""

    def __init__(self, elector: Elector) -> None:
        self.beating = threading.Event()
        self.beating.set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(elector,), daemon=True)
        self.thread.start()

    def _run(self, elector: Elector) -> None:
        while not self.done.wait(0.02):
            if self.beating.is_set():
                elector.heartbeat()


def test_liveness_timeout_steps_down_releases_follows_and_leads_again_when_heartbeats_resume(
        electors: list[Elector], caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryLeaseStore()
    watched = Elector(store, identity="watched", liveness_timeout=0.5, **FAST)
    electors.append(watched.start())
    heart = Heart(watched)
    try:
        assert watched.wait_for_leadership(5)
        other = Elector(store, identity="other", **FAST)
        electors.append(other.start())
        time.sleep(1.0)  # heartbeats keep it leading well past its liveness_timeout
        assert watched.is_leader and watched.healthy and not other.is_leader

        heart.beating.clear()  # the application hangs
        stuck_at = time.monotonic()
        assert other.wait_for_leadership(10)
        took_over = time.monotonic() - stuck_at
        # liveness_timeout, then at most one retry period to notice, one to take over.
        assert 0.5 <= took_over <= 0.5 + 2 * RETRY + 1.5, took_over
        assert not watched.is_leader
        errors = [r.getMessage() for r in caplog.records
                  if r.levelno == logging.ERROR and getattr(r, "identity", "") == "watched"]
        assert any("past liveness_timeout (0.5s)" in m and "stepping down and releasing" in m
                   for m in errors), errors
        assert not watched.healthy and "no heartbeat()" in (watched.health_problem or "")

        other.stop()  # nobody leads now, but the stuck replica keeps following
        time.sleep(4 * RETRY)
        assert not watched.is_leader and watched.running

        heart.beating.set()  # the application recovers
        assert watched.wait_for_leadership(5)
        assert watched.healthy
    finally:
        heart.done.set()


def test_a_follower_that_never_heartbeats_still_takes_over_and_is_healthy(
        electors: list[Elector]) -> None:
    """Applications that heartbeat only from leader code (a job loop, on_started_leading) or
    that block in acquire_lease(): a follower's silence is normal, and a new leader gets a
    whole liveness_timeout before its first heartbeat is due."""
    store = MemoryLeaseStore()
    first = Elector(store, identity="first", **FAST)
    electors.append(first.start())
    assert first.wait_for_leadership(5)
    silent = Elector(store, identity="silent", liveness_timeout=0.5, **FAST)
    electors.append(silent.start())
    time.sleep(1.0)  # twice its liveness_timeout without a heartbeat, as a follower
    assert silent.healthy and not silent.is_leader
    first.stop()
    assert silent.acquire_lease(timeout=5)
    assert silent.healthy
    # Leading without heartbeats: it steps down once its liveness_timeout passes.
    assert wait_until(lambda: not silent.is_leader, 0.5 + 2 * RETRY + 2)
    assert not silent.healthy


def test_heartbeat_without_liveness_timeout_changes_nothing(electors: list[Elector]) -> None:
    elector = Elector(MemoryLeaseStore(), **FAST)
    electors.append(elector.start())
    assert elector.wait_for_leadership(5)
    time.sleep(3 * RETRY)  # no heartbeat at all
    assert elector.is_leader and elector.healthy
    elector.heartbeat()
    assert elector.is_leader


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "60", True, 1e9])
def test_bad_liveness_timeout_is_a_configuration_error_naming_it(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="liveness_timeout"):
        Elector(MemoryLeaseStore(), liveness_timeout=bad)  # type: ignore[arg-type]


def test_deadlocked_leader_main_thread_hands_over_within_liveness_timeout(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    """A real leader's main thread deadlocks; its election thread would renew forever. With
    ``liveness_timeout`` it steps down and releases, and the other replica takes over."""
    lease, journal = str(tmp_path / "stuck.lease"), str(tmp_path / "journal")
    timings = ["--lease-duration", "2", "--renew-deadline", "1", "--retry-period", "0.1"]
    watched = spawn(str(HERE / "contender.py"), lease, journal, *timings,
                    "--liveness-timeout", "1", "--metrics-port", "0")
    assert watched.wait_for_line(lambda line: line.startswith("LEADER"), 20)
    other = spawn(str(HERE / "contender.py"), lease, journal, *timings)
    assert other.wait_for_line(lambda line: line.startswith("STARTED"), 20)
    port_line = watched.wait_for_line(lambda line: line.startswith("METRICS"), 10)
    assert port_line is not None
    base = f"http://127.0.0.1:{port_line.split()[1]}"
    assert scrape(f"{base}/healthz") == (200, "ok\n")

    watched.signal(signal.SIGUSR2)
    deadlocked = watched.wait_for_line(lambda line: line.startswith("DEADLOCKED"), 10)
    took_over = other.wait_for_line(lambda line: line.startswith("LEADER"), 20)
    assert deadlocked is not None and took_over is not None, watched.output()
    seconds = float(took_over.split()[-1]) - float(deadlocked.split()[-1])
    # liveness_timeout 1 s + up to one retry period to notice + the handover, with slack for a
    # loaded machine; without the watchdog the deadlocked leader would keep the lease forever.
    assert 1.0 <= seconds <= 1.0 + 2 * 0.1 + 2.0, seconds
    print(f"deadlocked leader replaced after {seconds:.2f}s (liveness_timeout 1s)")
    assert watched.wait_for_line(
        lambda line: line.startswith("LOG ERROR") and "past liveness_timeout (1s)" in line, 5)
    # The process is alive (its HTTP thread answers) but tells the liveness probe to restart it.
    code, body = scrape(f"{base}/healthz")
    assert code == 500 and "no heartbeat()" in body
    page = samples(scrape(f"{base}/metrics")[1])
    assert value(page, "leader_election_master_status", name=lease) == 0
    assert value(page, "singleton_jobs_step_downs_total", name=lease, reason="liveness") == 1


# -- health of the election thread ------------------------------------------------------------


class HangingStore(MemoryLeaseStore):
    """A store whose update() hangs, ignoring its timeout, while ``hang`` is set: an election
    thread stuck in a call that never returns."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = threading.Event()
        self.unblock = threading.Event()

    def update(self, record: LeaseRecord, version: Version, *,
               timeout: float = 0.0) -> Version | None:
        if self.hang.is_set():
            self.unblock.wait(60)
        return super().update(record, version, timeout=timeout)


def test_healthz_answers_500_while_the_election_thread_is_stuck_and_200_once_it_recovers(
        electors: list[Elector]) -> None:
    store = HangingStore()
    elector = Elector(store, identity="stuck-thread", **FAST)
    electors.append(elector.start())
    assert elector.wait_for_leadership(5)
    registry = CollectorRegistry()
    with start_http_server(0, elector, addr="127.0.0.1", registry=registry) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert scrape(f"{base}/healthz") == (200, "ok\n")
        store.hang.set()
        hung_at = time.monotonic()
        # Guards stop at once (is_leader is judged on the clock), ...
        assert wait_until(lambda: not elector.is_leader, RENEW + 1)
        # ... the probe fails once the call has outlasted the longest bounded attempt.
        assert wait_until(lambda: scrape(f"{base}/healthz")[0] == 500, 10)
        assert time.monotonic() - hung_at >= RETRY + 4 * RENEW - RETRY
        code, body = scrape(f"{base}/healthz")
        assert code == 500 and "has not returned" in body and "stuck" in body
        page = samples(scrape(f"{base}/metrics")[1])
        assert value(page, "singleton_jobs_healthy", name=store.name) == 0

        store.hang.clear()
        store.unblock.set()
        assert wait_until(lambda: scrape(f"{base}/healthz")[0] == 200, 10)
        assert elector.wait_for_leadership(5)
        assert value(samples(scrape(f"{base}/metrics")[1]), "singleton_jobs_healthy",
                     name=store.name) == 1
        assert scrape(f"{base}/nothing-here")[0] == 404


def test_stopped_and_following_electors_are_healthy(electors: list[Elector]) -> None:
    store = MemoryLeaseStore()
    leader = Elector(store, **FAST)
    electors.append(leader.start())
    assert leader.wait_for_leadership(5)
    follower = Elector(store, **FAST)
    electors.append(follower.start())
    time.sleep(3 * RETRY)
    assert follower.healthy and follower.health_problem is None and leader.healthy
    never_started = Elector(MemoryLeaseStore(), **FAST)
    assert never_started.healthy


# -- metrics ------------------------------------------------------------------------------------


class FlakyStore(MemoryLeaseStore):
    """Every third update fails, as a store that times out now and then."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def update(self, record: LeaseRecord, version: Version, *,
               timeout: float = 0.0) -> Version | None:
        self.calls += 1
        if self.calls % 3 == 0:
            raise TimeoutError("no answer within the deadline")
        return super().update(record, version, timeout=timeout)


def test_metrics_report_leadership_renews_failures_and_guarded_calls(
        electors: list[Elector]) -> None:
    registry = CollectorRegistry()
    assert register_metrics(registry) is register_metrics(registry)  # registered once
    store = FlakyStore()
    leader = Elector(store, identity="metrics-leader", **FAST)
    electors.append(leader.start())
    assert leader.wait_for_leadership(5)
    follower = Elector(MemoryLeaseStore(), identity="metrics-follower", **FAST)

    @leader_only(leader)
    def on_leader() -> str:
        return "ran"

    @leader_only(follower)
    def on_follower() -> str:
        return "ran"

    for _ in range(5):
        on_leader()
        on_follower()
    assert wait_until(lambda: store.calls >= 7, 10)
    page = registry_page(registry)
    name = store.name
    assert value(page, "leader_election_master_status", name=name) == 1
    assert value(page, "singleton_jobs_fencing_token", name=name) == leader.fencing_token == 0
    attempts = value(page, "singleton_jobs_renew_attempts_total", name=name)
    errors = value(page, "singleton_jobs_renew_failures_total", name=name, reason="error")
    assert attempts is not None and errors is not None and attempts >= 5 and errors >= 1
    assert value(page, "singleton_jobs_renew_failures_total", name=name, reason="taken") == 0
    assert value(page, "singleton_jobs_renew_duration_seconds_count", name=name) == attempts
    assert value(page, "singleton_jobs_renew_duration_seconds_bucket", name=name,
                 le="+Inf") == attempts
    since = value(page, "singleton_jobs_seconds_since_last_renew", name=name)
    assert since is not None and 0 <= since < 3 * RETRY + 1
    assert value(page, "singleton_jobs_leader_changes_total", name=name) == 1
    assert value(page, "singleton_jobs_healthy", name=name) == 1
    function = f"{__name__}.test_metrics_report_leadership_renews_failures_and_guarded_calls" \
               ".<locals>."
    assert value(page, "singleton_jobs_guarded_calls_total", function=function + "on_leader",
                 outcome="run") == 5
    assert value(page, "singleton_jobs_guarded_calls_total", function=function + "on_follower",
                 outcome="skipped") == 5
    assert on_leader.calls["run"] == 5 and on_follower.calls["skipped"] == 5  # type: ignore[attr-defined]
    # Reading does not change the counts.
    assert registry_page(registry)[("singleton_jobs_guarded_calls_total", (
        ("function", function + "on_leader"), ("outcome", "run")))] == 5

    leader.stop()
    page = registry_page(registry)
    assert value(page, "leader_election_master_status", name=name) == 0
    assert value(page, "singleton_jobs_fencing_token", name=name) is None
    assert value(page, "singleton_jobs_step_downs_total", name=name, reason="stopped") == 1
    later = value(page, "singleton_jobs_renew_attempts_total", name=name)
    assert later is not None and later >= attempts


def test_metrics_follow_the_lease_to_another_replica(electors: list[Elector]) -> None:
    registry = CollectorRegistry()
    register_metrics(registry)
    store = MemoryLeaseStore()
    first = Elector(store, identity="first", **FAST)
    electors.append(first.start())
    assert first.wait_for_leadership(5)
    # A second process would export its own page; here both share one: the status is the
    # highest of the two, the counters their sum.
    second = Elector(store, identity="second", **FAST)
    electors.append(second.start())
    first.stop()
    assert second.wait_for_leadership(5)
    page = registry_page(registry)
    assert value(page, "leader_election_master_status", name=store.name) == 1
    assert value(page, "singleton_jobs_fencing_token", name=store.name) == 1
    assert value(page, "singleton_jobs_step_downs_total", name=store.name, reason="stopped") == 1
    assert value(page, "singleton_jobs_leader_changes_total", name=store.name) == 2 + 1


def test_counters_never_go_down_when_guards_and_electors_are_garbage_collected(
        electors: list[Elector]) -> None:
    import gc

    registry = CollectorRegistry()
    register_metrics(registry)
    store = MemoryLeaseStore()
    elector = Elector(store, identity="collected", **FAST)
    elector.start()
    assert elector.wait_for_leadership(5)

    def make_guarded(chosen: Elector) -> Callable[[], None]:
        @leader_only(chosen)
        def task() -> None:
            pass

        return task

    for _ in range(3):  # a decorator applied in a factory: one label, three objects
        make_guarded(elector)()
    function = f"{__name__}.test_counters_never_go_down_when_guards_and_electors_are_garbage" \
               "_collected.<locals>.make_guarded.<locals>.task"
    assert wait_until(lambda: (value(registry_page(registry), "singleton_jobs_renew_attempts"
                                     "_total", name=store.name) or 0) >= 2, 5)
    elector.stop()
    before = registry_page(registry)
    del elector
    gc.collect()
    after = registry_page(registry)
    assert value(after, "singleton_jobs_guarded_calls_total", function=function,
                 outcome="run") == 3
    for metric, labels in [("singleton_jobs_renew_attempts_total", {}),
                           ("singleton_jobs_leader_changes_total", {}),
                           ("singleton_jobs_step_downs_total", {"reason": "stopped"})]:
        assert value(after, metric, name=store.name, **labels) == \
            value(before, metric, name=store.name, **labels), metric


def test_a_forked_child_counts_from_zero_and_scrapes_survive_concurrent_guards() -> None:
    script = """
import os, sys, threading
from prometheus_client import CollectorRegistry, generate_latest
from singleton_jobs import Elector, MemoryLeaseStore, leader_only
from singleton_jobs.observability import GuardCounts, register_metrics
elector = Elector(MemoryLeaseStore(), lease_duration=1, renew_deadline=0.6, retry_period=0.1)
elector.start()
assert elector.wait_for_leadership(5)
guarded = leader_only(elector)(lambda: None)
for _ in range(3):
    guarded()
registry = CollectorRegistry()
register_metrics(registry)
stop = threading.Event()
def churn():
    while not stop.is_set():
        GuardCounts("job", ("store", "churn"))
thread = threading.Thread(target=churn)
thread.start()
for _ in range(200):
    generate_latest(registry)  # raised while another thread added guards, before
stop.set()
thread.join()
pid = os.fork()
if pid == 0:
    os._exit(0 if guarded.calls["run"] == 0 and b'outcome="run"} 0.0' in
             [line for line in generate_latest(registry).splitlines()
              if b"guarded_calls" in line and b'outcome="run"' in line][0] else 1)
_, status = os.waitpid(pid, 0)
print("parent", guarded.calls["run"], "child exit", os.waitstatus_to_exitcode(status))
elector.stop()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "parent 3 child exit 0", result.stdout + result.stderr


def test_a_registry_refuses_the_collector_when_its_names_are_taken() -> None:
    from prometheus_client import Gauge

    registry = CollectorRegistry()
    Gauge("leader_election_master_status", "someone else's", ["name"], registry=registry)
    with pytest.raises(ValueError, match="leader_election_master_status"):
        register_metrics(registry)


def test_master_status_flips_on_the_replica_that_takes_over_after_sigkill(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    lease, journal = str(tmp_path / "flip.lease"), str(tmp_path / "journal")
    timings = ["--lease-duration", "2", "--renew-deadline", "1", "--retry-period", "0.1",
               "--metrics-port", "0"]
    replicas = [spawn(str(HERE / "contender.py"), lease, journal, *timings) for _ in range(2)]
    bases = []
    for replica in replicas:
        line = replica.wait_for_line(lambda text: text.startswith("METRICS"), 20)
        assert line is not None, replica.output()
        bases.append(f"http://127.0.0.1:{line.split()[1]}")

    def statuses() -> list[float | None]:
        return [value(samples(scrape(f"{base}/metrics")[1]), "leader_election_master_status",
                      name=lease) for base in bases]

    assert wait_until(lambda: sorted(statuses(), key=float) == [0, 1], 20, interval=0.05)
    leader = statuses().index(1)
    survivor = bases[1 - leader]
    # The follower has seen the leader (its first read may still be under way).
    assert wait_until(lambda: value(samples(scrape(f"{survivor}/metrics")[1]),
                                    "singleton_jobs_leader_changes_total", name=lease) == 1,
                      10, interval=0.05)
    before = samples(scrape(f"{survivor}/metrics")[1])
    assert value(before, "singleton_jobs_fencing_token", name=lease) is None
    replicas[leader].signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert wait_until(lambda: value(samples(scrape(f"{survivor}/metrics")[1]),
                                    "leader_election_master_status", name=lease) == 1,
                      20, interval=0.05)
    assert time.monotonic() - killed_at >= 2.0 - 0.2  # a dead leader's lease runs out first
    after = samples(scrape(f"{survivor}/metrics")[1])
    assert value(after, "singleton_jobs_fencing_token", name=lease) == 1
    changes_before = value(before, "singleton_jobs_leader_changes_total", name=lease)
    changes_after = value(after, "singleton_jobs_leader_changes_total", name=lease)
    assert changes_before is not None and changes_after == changes_before + 1
    assert scrape(f"{survivor}/healthz") == (200, "ok\n")


def test_apscheduler_runs_and_skips_are_counted_per_job(electors: list[Elector]) -> None:
    import datetime

    from apscheduler.schedulers.background import BackgroundScheduler

    from singleton_jobs.apscheduler import LeaderOnlyJobStore

    registry = CollectorRegistry()
    register_metrics(registry)
    store = MemoryLeaseStore()
    schedulers = []
    for identity in ("aps-leader", "aps-follower"):
        elector = Elector(store, identity=identity, **FAST)
        electors.append(elector.start())
        if identity == "aps-leader":
            assert elector.wait_for_leadership(5)
        scheduler = BackgroundScheduler(timezone=datetime.timezone.utc)
        scheduler.add_jobstore(LeaderOnlyJobStore(elector), "leader")
        scheduler.add_job(lambda: None, "interval", seconds=0.2, id="tick", jobstore="leader",
                          next_run_time=datetime.datetime.now(datetime.timezone.utc))
        scheduler.start()
        schedulers.append(scheduler)
    try:
        def counts() -> tuple[float | None, float | None]:
            page = registry_page(registry)
            return (value(page, "singleton_jobs_scheduled_runs_total", jobstore="leader",
                          job="tick", outcome="run"),
                    value(page, "singleton_jobs_scheduled_runs_total", jobstore="leader",
                          job="tick", outcome="skipped"))

        assert wait_until(lambda: all((count or 0) >= 3 for count in counts()), 10)
    finally:
        for scheduler in schedulers:
            scheduler.shutdown(wait=False)


def test_nothing_is_registered_and_prometheus_is_not_imported_until_asked() -> None:
    script = """
import sys
from singleton_jobs import Elector, MemoryLeaseStore, leader_only
from singleton_jobs.observability import start_http_server
elector = Elector(MemoryLeaseStore(), lease_duration=1, renew_deadline=0.6, retry_period=0.1)
elector.start()
leader_only(elector)(lambda: None)()
server = start_http_server(0, addr="127.0.0.1", metrics=False)  # /healthz only
assert "prometheus_client" not in sys.modules, "imported too early"
from prometheus_client import REGISTRY, generate_latest
assert b"leader_election_master_status" not in generate_latest(REGISTRY)
from singleton_jobs.observability import register_metrics
register_metrics()
assert b"leader_election_master_status" in generate_latest(REGISTRY)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_asgi_app_serves_healthz_and_metrics_under_a_mount_path(
        electors: list[Elector]) -> None:
    elector = Elector(MemoryLeaseStore(), **FAST)
    electors.append(elector.start())
    assert elector.wait_for_leadership(5)
    app = make_asgi_app(elector, registry=CollectorRegistry())

    def get(path: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        # Starlette 0.35+ passes the whole path and the mount as root_path; behind a proxy
        # that strips a prefix (FastAPI's root_path) the two no longer line up.
        scope = {"type": "http", "method": "GET", "path": f"/ops{path}",
                 "root_path": "/myapp/ops" if "proxied" in path else "/ops",
                 "headers": [(b"accept", b"text/plain")]}
        asyncio.run(app(scope, receive, send))
        return sent[0]["status"], sent[1]["body"]

    assert get("/healthz") == (200, b"ok\n")
    assert get("/proxied/healthz") == (200, b"ok\n")
    assert get("/healthzz")[0] == 404
    code, body = get("/metrics")
    assert code == 200
    assert value(samples(body.decode()), "leader_election_master_status",
                 name=elector.store.name) == 1


def test_readme_mounts_serve_healthz_and_metrics_in_flask_and_starlette_over_http(
        electors: list[Elector]) -> None:
    """The two snippets of the operating page, served by real servers: werkzeug's for Flask with its
    DispatcherMiddleware, uvicorn for a Starlette app with a Mount."""
    import uvicorn
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.serving import make_server

    from singleton_jobs.observability import make_wsgi_app

    elector = Elector(MemoryLeaseStore(), **FAST)
    electors.append(elector.start())
    assert elector.wait_for_leadership(5)
    registry = CollectorRegistry()

    flask_app = Flask("shop")
    flask_app.route("/")(lambda: "shop front")
    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/ops": make_wsgi_app(elector, registry=registry)})
    werkzeug_server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    threading.Thread(target=werkzeug_server.serve_forever, daemon=True).start()

    starlette_app = Starlette(routes=[Mount("/ops", app=make_asgi_app(elector,
                                                                      registry=registry))])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uvicorn_server = uvicorn.Server(uvicorn.Config(starlette_app, host="127.0.0.1", port=port,
                                                   log_level="warning", lifespan="off"))
    threading.Thread(target=uvicorn_server.run, daemon=True).start()
    try:
        assert wait_until(lambda: uvicorn_server.started, 10)
        for base in (f"http://127.0.0.1:{werkzeug_server.server_port}",
                     f"http://127.0.0.1:{port}"):
            assert scrape(f"{base}/ops/healthz") == (200, "ok\n")
            code, page = scrape(f"{base}/ops/metrics")
            assert code == 200
            assert value(samples(page), "leader_election_master_status",
                         name=elector.store.name) == 1
        assert scrape(f"http://127.0.0.1:{werkzeug_server.server_port}/") == (200, "shop front")
    finally:
        werkzeug_server.shutdown()
        uvicorn_server.should_exit = True


def test_start_http_server_refuses_a_bad_or_busy_port_with_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="port must be a number"):
        start_http_server("9090", metrics=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="check addr"):
        start_http_server(0, addr="192.0.2.1", metrics=False)  # not an address of this host
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}.*choose a free port"):
            start_http_server(port, addr="127.0.0.1", metrics=False)


# -- log fields ---------------------------------------------------------------------------------


def test_log_lines_carry_lease_identity_and_fencing_token_as_extra_fields(
        electors: list[Elector], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="singleton_jobs")
    store = MemoryLeaseStore()
    store.create(LeaseRecord("", 1.0, 0.0, 0.0, 6))  # a released lease at token 6
    elector = Elector(store, identity="logged", **FAST)
    electors.append(elector.start())
    assert elector.wait_for_leadership(5)
    records = [r for r in caplog.records if r.name == "singleton_jobs.election"]
    became = next(r for r in records if "became leader" in r.getMessage())
    fields = {key: getattr(became, key) for key in ("lease", "identity", "fencing_token")}
    assert fields == {"lease": store.name, "identity": "logged", "fencing_token": 7}
    follower = Elector(store, identity="follower", **FAST)
    electors.append(follower.start())
    assert wait_until(lambda: follower.leader == "logged", 5)
    seen = next(r for r in caplog.records if getattr(r, "identity", "") == "follower"
                and "new leader" in r.getMessage())
    assert seen.fencing_token is None  # type: ignore[attr-defined]  # a follower's line
    # What a JSON formatter does with them.
    assert json.loads(json.dumps(fields))["fencing_token"] == 7
    assert all(getattr(r, "identity", None) == "logged" for r in records)

