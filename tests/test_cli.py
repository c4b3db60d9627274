"""The ``singleton-jobs`` command: the demo's output, handover on Ctrl+C, clear errors."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Process
from servers import POSTGRES_URL, REDIS_URL, require_server

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
    assert "holder:      worker:7" in out and "transitions: 4" in out


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
    where = ["--backend", backend, "--url", url, "--lease-name", f"cli-demo-{time.time_ns()}"]
    first = spawn("-m", "singleton_jobs", "demo", *where, "--identity", "node-1", *FAST_DEMO)
    assert first.wait_for_line(lambda line: "BECAME LEADER" in line, 15), first.output()
    second = spawn("-m", "singleton_jobs", "demo", *where, "--identity", "node-2", *FAST_DEMO)
    assert second.wait_for_line(lambda line: "Status: FOLLOWER" in line, 15)
    out = run_cli("status", *where).stdout
    assert "holder:      node-1" in out and "transitions: 0" in out
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
