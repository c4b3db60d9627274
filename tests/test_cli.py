"""The ``singleton-jobs`` command: the demo's output, handover on Ctrl+C, the status of a lease
on every backend, clear errors."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Process, k8s_api_client, unique_lease_name
from k8s_api import FakeKubernetesApi
from servers import POSTGRES_URL, REDIS_URL, require_server

import singleton_jobs
from singleton_jobs import LeaseRecord, LeaseStore
from singleton_jobs.cli import main

STAMP = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d "
FAST_DEMO = ["--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.2",
             "--job-interval", "0.3", "--heartbeat", "0.2"]


def demo(spawn: Callable[..., Process], lease: Path, identity: str) -> Process:
    return spawn("-m", "singleton_jobs", "demo", "--lease-path", str(lease),
                 "--identity", identity, *FAST_DEMO)


def test_demo_prints_the_seed_lines_and_hands_over_on_ctrl_c(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    lease = tmp_path / "demo.lease"
    first = demo(spawn, lease, "node-1")
    assert first.wait_for_line(lambda line: "BECAME LEADER" in line, 10)
    second = demo(spawn, lease, "node-2")
    assert second.wait_for_line(lambda line: "Status: FOLLOWER" in line, 10)
    assert first.wait_for_line(lambda line: "warming cache" in line, 10)

    seen = len(second.lines)
    interrupted = time.monotonic()
    first.signal(signal.SIGINT)
    assert first.popen.wait(10) == 0
    became = second.wait_for_line(lambda line: "BECAME LEADER" in line, 5, after=seen)
    assert became is not None
    took_over = next(t for t, line in second.lines if line == became)
    assert took_over - interrupted < 2 * 0.2 + 1.0  # released: no need to wait 3 s
    assert second.wait_for_line(lambda line: "warming cache" in line, 5, after=seen)

    out1 = first.output().splitlines()
    assert re.fullmatch(STAMP + "Starting leader election demo for node: node-1", out1[0])
    assert re.fullmatch(STAMP + r"✅ \[node-1\] Leader election started\. Press Ctrl\+C to stop",
                        out1[1])
    for pattern in [r"\[node-1\] Successfully acquired leadership",
                    r"🎉 \[node-1\] BECAME LEADER - Starting leadership duties",
                    r"👑 \[node-1\] Status: LEADER - Heartbeat at \d\d:\d\d:\d\d",
                    r"🔥 \[node-1\] Running leader-only job: warming cache \(fencing token 0\)",
                    r"🛑 \[node-1\] Shutting down: releasing the lease"]:
        assert any(re.fullmatch(STAMP + pattern, line) for line in out1), pattern
    out2 = second.output().splitlines()
    assert any(re.fullmatch(STAMP + r" \[node-2\] Status: FOLLOWER - Heartbeat at "
                                    r"\d\d:\d\d:\d\d", line) for line in out2)
    assert any(re.fullmatch(STAMP + r"\[node-2\] New leader elected: node-1", line)
               for line in out2)
    # The follower never ran the job before it led; then it ran with a higher fencing token.
    before = out2[:next(i for i, line in enumerate(out2) if "BECAME LEADER" in line)]
    assert not [line for line in before if "warming cache" in line]
    assert any("warming cache (fencing token 1)" in line for line in out2)


def test_demo_node_id_defaults_to_the_pid(spawn: Callable[..., Process], tmp_path: Path) -> None:
    process = spawn("-m", "singleton_jobs", "demo", "--lease-path", str(tmp_path / "l"),
                    *FAST_DEMO)
    assert process.wait_for_line(lambda line: "Status: LEADER" in line, 10)
    assert f"[{process.pid}] Status: LEADER" in process.output()
    assert (tmp_path / "l").read_text().startswith(f"{process.pid}:")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "singleton_jobs", *args], capture_output=True,
                          text=True, timeout=60)


def test_bad_timings_are_reported_without_a_traceback(tmp_path: Path) -> None:
    result = run_cli("demo", "--lease-path", str(tmp_path / "l"), "--lease-duration", "1",
                     "--renew-deadline", "2")
    assert result.returncode == 2
    assert "ConfigurationError: lease_duration (1.0) must be greater than renew_deadline (2.0)" \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_lease_path_is_reported_without_a_traceback(tmp_path: Path) -> None:
    result = run_cli("demo", "--lease-path", str(tmp_path))
    assert result.returncode == 2
    assert f"lease path {tmp_path} is a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_shows_the_holder(tmp_path: Path) -> None:
    lease = tmp_path / "s.lease"
    assert "no lease yet" in run_cli("status", "--lease-path", str(lease)).stdout
    lease.write_text(f"worker:7:{time.time()}\ntransitions=4\n")
    out = run_cli("status", "--lease-path", str(lease)).stdout
    assert "holder:      worker:7" in out and "fencing token: 4" in out


def test_console_script_is_installed() -> None:
    script = shutil.which("singleton-jobs")
    assert script is not None
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "demo" in result.stdout


def test_importing_the_package_loads_no_backend_dependency() -> None:
    code = ("import sys, singleton_jobs; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'filelock', 'kubernetes', 'apscheduler', 'sqlalchemy', 'redis'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "[]"


def test_make_demo_parallel_explains_a_missing_tmux(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(["make", "-s", "-C", str(root), "demo-parallel",
                             "TMUX_BIN=/nonexistent/tmux"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "MAKEFLAGS": ""})
    assert result.returncode != 0
    assert "tmux is not installed" in result.stdout + result.stderr


def test_make_kill_demo_stops_every_replica_quietly_and_each_releases(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    lease = tmp_path / "kill.lease"
    # An interpreter path of this test's own, so that kill-demo (which stops every demo of
    # that interpreter) cannot reach demos other tests run at the same time.
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.symlink_to(sys.executable)
    replicas = []
    for index, ready in ((1, "BECAME LEADER"), (2, "Leader election started")):
        replica = spawn("-m", "singleton_jobs", "demo", "--lease-path", str(lease), "--identity",
                        f"node-{index}", *FAST_DEMO, python=str(python))
        assert replica.wait_for_line(lambda line, ready=ready: ready in line, 10), \
            replica.output()
        replicas.append(replica)
    result = subprocess.run(["make", "-C", str(root), "--no-print-directory", "kill-demo",
                             f"PYTHON={python}", "TMUX_BIN=/nonexistent/tmux"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MAKEFLAGS": ""})
    output = result.stdout + result.stderr
    assert result.returncode == 0 and output.strip() == "demo stopped", output
    for replica in replicas:
        assert replica.popen.wait(10) == 0
        assert "Stopped" in replica.output()
    held = run_cli("status", "--lease-path", str(lease))
    assert held.returncode == 1 and "released" in held.stdout  # the leader released on Ctrl+C
    again = subprocess.run(["make", "-C", str(root), "--no-print-directory", "kill-demo",
                            f"PYTHON={python}", "TMUX_BIN=/nonexistent/tmux"],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "MAKEFLAGS": ""})
    assert (again.returncode, (again.stdout + again.stderr).strip()) == (0, "demo stopped")


def test_demo_without_apscheduler_runs_its_job_from_a_plain_timer(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "apscheduler"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('APScheduler is not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    process = spawn("-m", "singleton_jobs", "demo", "--lease-path", str(tmp_path / "l"),
                    *FAST_DEMO, env=env)
    assert process.wait_for_line(lambda line: "warming cache" in line, 10), process.output()
    assert "the job runs from a plain timer" in process.output()


@pytest.mark.parametrize("backend", ["sql", "redis"])
def test_demo_and_status_on_a_database_backend(spawn: Callable[..., Process],
                                               backend: str) -> None:
    url = POSTGRES_URL if backend == "sql" else REDIS_URL
    require_server(url)
    # A table and a key prefix of their own: the demo and status both honour them.
    where = ["--backend", backend, "--url", url, "--lease-name", f"cli-demo-{time.time_ns()}",
             *(["--table", "cli_demo_leases"] if backend == "sql" else
               ["--key-prefix", "singleton_jobs_cli_demo:"])]
    first = spawn("-m", "singleton_jobs", "demo", *where, "--identity", "node-1", *FAST_DEMO)
    assert first.wait_for_line(lambda line: "BECAME LEADER" in line, 15), first.output()
    second = spawn("-m", "singleton_jobs", "demo", *where, "--identity", "node-2", *FAST_DEMO)
    assert second.wait_for_line(lambda line: "Status: FOLLOWER" in line, 15)
    status = run_cli("status", *where)
    assert "holder:      node-1" in status.stdout and "fencing token: 0" in status.stdout
    assert status.returncode == 0
    seen = len(second.lines)
    first.signal(signal.SIGINT)
    assert first.popen.wait(10) == 0
    assert second.wait_for_line(lambda line: "BECAME LEADER" in line, 5, after=seen)
    assert "holder:      node-2" in run_cli("status", *where).stdout


@pytest.mark.parametrize("backend", ["sql", "redis"])
def test_database_backend_without_url_says_what_to_pass(backend: str) -> None:
    result = run_cli("status", "--backend", backend)
    assert result.returncode == 2
    assert f"ConfigurationError: --backend {backend} needs --url, e.g. --url" in result.stderr
    assert "Traceback" not in result.stderr


# -- status: what it prints and how it exits -----------------------------------------------------


def status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    """Exit status and stdout lines of ``singleton-jobs status ARGS``; stderr must be empty."""
    code = main(["status", *args])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out.splitlines()


def status_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, lines = status(capsys, *args, "--json")
    assert len(lines) == 1
    document = json.loads(lines[0])
    assert isinstance(document, dict)
    return code, document


def lease_record(holder: str, renewed_ago: float, transitions: int = 3) -> LeaseRecord:
    """A record with a 15 s lease, acquired 100 s ago and renewed ``renewed_ago`` s ago."""
    now = time.time()
    return LeaseRecord(holder, 15.0, now - 100.0, now - renewed_ago, transitions)


def parse_utc(text: str) -> float:
    assert text.endswith("Z")
    return datetime.datetime.fromisoformat(text[:-1] + "+00:00").timestamp()


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(json.dumps({  # JSON is YAML
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}]}))
    return path


@pytest.fixture
def kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], None]:
    """Point this process's kubeconfig at an API server URL, as a user's kubectl would be."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)

    def use(server: str) -> None:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", server)))

    return use


@pytest.fixture(params=["file", "sqlite", "postgresql", "redis", "kubernetes"])
def lease_on_backend(request: pytest.FixtureRequest, tmp_path: Path,
                     kubeconfig: Callable[[str], None]) -> tuple[list[str], LeaseStore, str]:
    """The status options for a lease on one backend, a store on that lease, and the lease
    name ``status --json`` reports. The SQL and Redis leases are in a table and under a key
    prefix of their own, so a status that ignored --table or --key-prefix would find nothing."""
    name = unique_lease_name(f"cli-status-{os.getpid()}-{time.time_ns()}")
    if request.param == "file":
        from singleton_jobs import FileLeaseStore

        path = str(tmp_path / "status.lease")
        return ["--lease-path", path], FileLeaseStore(path), path
    if request.param in ("sqlite", "postgresql"):
        from singleton_jobs import SQLLeaseStore

        url = POSTGRES_URL if request.param == "postgresql" else f"sqlite:///{tmp_path / 'l.db'}"
        require_server(url)
        return (["--backend", "sql", "--url", url, "--lease-name", name, "--table",
                 "cli_status_leases"], SQLLeaseStore(url, name, table="cli_status_leases"), name)
    if request.param == "redis":
        from singleton_jobs import RedisLeaseStore

        require_server(REDIS_URL)
        return (["--backend", "redis", "--url", REDIS_URL, "--lease-name", name,
                 "--key-prefix", "singleton_jobs_cli:"],
                RedisLeaseStore(REDIS_URL, name, key_prefix="singleton_jobs_cli:"), name)
    from singleton_jobs import KubernetesLeaseStore

    api: FakeKubernetesApi = request.getfixturevalue("k8s_api")
    kubeconfig(api.url)
    return (["--backend", "kubernetes", "--namespace", "default", "--lease-name", name],
            KubernetesLeaseStore(name, namespace="default", api_client=k8s_api_client(api.url)),
            f"default/{name}")


def test_status_exits_0_only_while_a_valid_holder_exists_on_every_backend(
        capsys: pytest.CaptureFixture[str],
        lease_on_backend: tuple[list[str], LeaseStore, str]) -> None:
    options, store, name = lease_on_backend
    backend = options[1] if options[0] == "--backend" else "file"

    code, document = status_json(capsys, *options)
    assert code == 1
    assert document == {
        "backend": backend, "lease": name, "location": document["location"], "holder": None,
        "fencing_token": None, "acquire_time": None, "renew_time": None,
        "renewed_seconds_ago": None, "lease_duration": None, "expires_in_seconds": None,
        "valid": False, "state": "absent", "judged_by": document["judged_by"]}
    assert "writer's wall clock" in document["judged_by"]
    code, lines = status(capsys, *options)
    assert code == 1 and lines[1:] == ["  holder:      nobody (no lease yet)",
                                       "  lease:       absent: no replica has taken it yet"]
    assert lines[0] == document["location"]

    held = lease_record("node-1", renewed_ago=1.0)
    version = store.create(held, timeout=5)
    assert version is not None
    code, lines = status(capsys, *options)
    assert code == 0, lines
    assert lines[0] == document["location"]
    assert lines[1:3] == ["  holder:      node-1", "  fencing token: 3"]
    assert re.fullmatch(r"  renewed:     1\.\ds ago \(by the writer's clock\)", lines[3])
    assert re.fullmatch(r"  lease:       valid for 1[34]\.\ds more \(by the writer's clock; "
                        r"clock skew shifts it\)", lines[4])
    code, document = status_json(capsys, *options)
    assert code == 0
    assert (document["holder"], document["fencing_token"], document["state"],
            document["valid"], document["lease_duration"]) == ("node-1", 3, "held", True, 15.0)
    assert abs(parse_utc(document["renew_time"]) - held.renew_time) < 0.001
    assert abs(parse_utc(document["acquire_time"]) - held.acquire_time) < 0.001
    assert 1.0 <= document["renewed_seconds_ago"] < 2.0
    assert 13.0 < document["expires_in_seconds"] <= 14.0

    version = store.update(lease_record("node-1", renewed_ago=60.0), version, timeout=5)
    assert version is not None
    code, lines = status(capsys, *options)
    assert code == 1
    assert lines[1] == "  holder:      node-1"
    assert re.fullmatch(r"  lease:       expired 45\.\ds ago \(by the writer's clock; clock "
                        r"skew shifts it\): nobody leads until a replica takes it over", lines[4])
    code, document = status_json(capsys, *options)
    assert code == 1
    assert (document["holder"], document["state"], document["valid"]) == \
        ("node-1", "expired", False)
    assert -46.0 < document["expires_in_seconds"] <= -45.0

    assert store.update(lease_record("", renewed_ago=0.5), version, timeout=5) is not None
    code, lines = status(capsys, *options)
    assert code == 1
    assert lines[1:3] == ["  holder:      nobody (released)", "  fencing token: 3"]
    assert lines[4] == "  lease:       released: nobody leads; a replica may take it at once"
    code, document = status_json(capsys, *options)
    assert code == 1
    assert (document["holder"], document["fencing_token"], document["state"],
            document["valid"]) == (None, 3, "released", False)


def test_status_follows_the_demo_from_no_lease_to_held_to_released(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    lease = str(tmp_path / "demo.lease")
    absent = run_cli("status", "--lease-path", lease)
    assert absent.returncode == 1 and "  holder:      nobody (no lease yet)" in absent.stdout
    first = demo(spawn, tmp_path / "demo.lease", "node-1")
    assert first.wait_for_line(lambda line: "BECAME LEADER" in line, 10), first.output()
    held = run_cli("status", "--lease-path", lease)
    assert held.returncode == 0, held.stdout + held.stderr
    assert held.stdout.splitlines()[:3] == [f"Lease file: {lease}", "  holder:      node-1",
                                            "  fencing token: 0"]
    assert "  lease:       valid for " in held.stdout
    first.signal(signal.SIGINT)
    assert first.popen.wait(10) == 0
    released = run_cli("status", "--lease-path", lease, "--json")
    assert released.returncode == 1 and released.stderr == ""
    document = json.loads(released.stdout)
    assert (document["state"], document["holder"], document["fencing_token"]) == \
        ("released", None, 0)


def test_status_of_an_unreadable_or_undated_lease_file_exits_1(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lease = tmp_path / "s.lease"
    lease.write_bytes(b"\x00garbage")
    code, lines = status(capsys, "--lease-path", str(lease))
    assert code == 1 and lines[1:] == [
        "  holder:      unreadable content (treated as held by nobody valid)",
        "  lease:       unreadable: a replica takes it over one lease duration after it saw it"]
    assert status_json(capsys, "--lease-path", str(lease))[1]["state"] == "unreadable"
    # The seed's format states no lease duration: whether its holder is alive cannot be told.
    lease.write_text(f"worker:7:{time.time()}\n")
    code, lines = status(capsys, "--lease-path", str(lease))
    assert code == 1 and lines[1] == "  holder:      worker:7"
    assert lines[4] == ("  lease:       not valid: the record states no lease duration or "
                        "renew time, so its expiry cannot be judged")
    code, document = status_json(capsys, "--lease-path", str(lease))
    assert (code, document["state"], document["lease_duration"]) == (1, "expired", None)


def test_status_with_a_lease_name_reads_that_file_in_the_lease_directory(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from singleton_jobs import FileElector

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    elector = FileElector(name="report-mailer", identity="mailer-1", lease_duration=5,
                          renew_deadline=3, retry_period=0.5).start()
    try:
        assert elector.wait_for_leadership(5)
        code, document = status_json(capsys, "--lease-name", "report-mailer")
    finally:
        elector.stop()
    assert code == 0 and document["holder"] == "mailer-1"
    assert document["lease"] == str(tmp_path / "singleton_jobs" / "report-mailer.lease")


@pytest.mark.parametrize(("options", "message"), [
    (["--table", "leases"], "ConfigurationError: --table is an option of --backend sql, not "
                            "of --backend file; drop it, or pass --backend sql"),
    (["--backend", "sql", "--url", "sqlite:///l.db", "--key-prefix", "p:"],
     "ConfigurationError: --key-prefix is an option of --backend redis, not of --backend sql"),
    (["--backend", "redis", "--url", REDIS_URL, "--namespace", "team-a"],
     "ConfigurationError: --namespace is an option of --backend kubernetes, not of --backend "
     "redis"),
    (["--backend", "kubernetes", "--url", REDIS_URL],
     "ConfigurationError: --url is an option of --backend sql or --backend redis, not of "
     "--backend kubernetes"),
    (["--lease-path", "a.lease", "--lease-name", "a"],
     "ConfigurationError: --lease-path and --lease-name both name the file lease"),
    (["--backend", "sql", "--url", "postgresql+psycopg://postgres@127.0.0.1:1/test"],
     "check --url and that the database answers from here (--timeout SECONDS waits longer)"),
    (["--backend", "redis", "--url", "redis://127.0.0.1:1/0"],
     "check --url and that the Redis server answers from here"),
    (["--backend", "kubernetes", "--namespace", "default"],
     "check that the API server answers from here"),
], ids=["table-for-file", "key-prefix-for-sql", "namespace-for-redis", "url-for-kubernetes",
        "path-and-name", "postgresql-unreachable", "redis-unreachable",
        "kubernetes-unreachable"])
@pytest.mark.parametrize("output", ["lines", "json"])
def test_status_errors_exit_2_with_one_line_on_stderr(
        capsys: pytest.CaptureFixture[str], kubeconfig: Callable[[str], None],
        options: list[str], message: str, output: str) -> None:
    kubeconfig("http://127.0.0.1:1")  # nothing listens on port 1
    code = main(["status", *options, *(["--json"] if output == "json" else [])])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("singleton-jobs: ") and err.count("\n") == 1
    assert message in err


def test_status_without_the_backends_extra_names_it(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "redis"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named redis')\n")
    result = subprocess.run(
        [sys.executable, "-m", "singleton_jobs", "status", "--backend", "redis", "--url",
         REDIS_URL, "--json"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("singleton-jobs: the Redis backend needs the redis package: "
                             'pip install "singleton_jobs[redis]"\n')


def test_version_option_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"singleton-jobs {singleton_jobs.__version__}\n"


def test_demo_serves_metrics_and_healthz_and_its_status_loop_feeds_the_watchdog(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    replica = spawn("-m", "singleton_jobs", "demo", "--lease-path", str(tmp_path / "m.lease"),
                    "--identity", "node-m", *FAST_DEMO, "--metrics-port", "0",
                    "--liveness-timeout", "1")
    line = replica.wait_for_line(lambda text: "Serving /metrics and /healthz" in text, 20)
    assert line is not None, replica.output()
    base = f"http://127.0.0.1:{line.split()[-1]}"
    assert replica.wait_for_line(lambda text: "BECAME LEADER" in text, 10), replica.output()
    # Past its liveness_timeout it still leads: the status loop calls heartbeat().
    time.sleep(1.5)
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
        assert (response.status, response.read()) == (200, b"ok\n")
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        page = response.read().decode()
    status = [sample.value for family in text_string_to_metric_families(page)
              for sample in family.samples if sample.name == "leader_election_master_status"]
    assert status == [1.0]
    assert "LOST LEADERSHIP" not in replica.output()
    replica.signal(signal.SIGINT)
    assert replica.popen.wait(10) == 0
