from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_api import FakeKubernetesApi
from servers import own_mysql, own_postgres, own_redis, tcp_proxy  # noqa: F401 - fixtures

from singleton_jobs import FileLeaseStore, MemoryLeaseStore
from singleton_jobs.backends import LeaseStore

HERE = Path(__file__).resolve().parent

# Sub-second timings for in-process tests: a follower takes over 0.5 s after the last change
# it saw; the leader gives up 0.3 s after its last good renew.
FAST = {"lease_duration": 0.5, "renew_deadline": 0.3, "retry_period": 0.05}


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a background job (`cmd &` in a CI script) with SIGINT ignored, and every
    # process started from it inherits that: the tests' replicas would never see their Ctrl+C.
    # Python installs its KeyboardInterrupt handler only where SIGINT is not ignored, and a
    # handled signal is reset to its default in a child, so handling it here fixes both.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@pytest.fixture(scope="session")
def k8s_api_server() -> Iterator[FakeKubernetesApi]:
    """One fake Kubernetes API server (tests/k8s_api.py) for the session, on real HTTP."""
    with FakeKubernetesApi() as api:
        yield api


@pytest.fixture
def k8s_api(k8s_api_server: FakeKubernetesApi) -> Iterator[FakeKubernetesApi]:
    """The session's fake API server, without faults and with an empty request log."""
    k8s_api_server.clear_faults()
    k8s_api_server.clear_log()
    yield k8s_api_server
    k8s_api_server.clear_faults()


_lease_numbers = itertools.count(1)


def unique_lease_name(prefix: str = "lease") -> str:
    """A Lease name no other test of this session uses."""
    return f"{prefix}-{next(_lease_numbers)}"


def k8s_api_client(url: str, agent: str | None = None) -> Any:
    """A real ``kubernetes.client.ApiClient`` for the server at ``url``: only the host differs
    from a client for a real cluster. ``agent`` sets its User-Agent, to tell clients apart in
    the server's request log."""
    from kubernetes import client

    api_client = client.ApiClient(client.Configuration(host=url))
    if agent is not None:
        api_client.user_agent = agent
    return api_client


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(params=["memory", "file", "kubernetes", "postgresql", "mysql", "sqlite",
                        "redis"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], LeaseStore]:
    """Makes stores that all share one lease: the conformance suite runs against each backend."""
    if request.param == "memory":
        shared = MemoryLeaseStore()
        return lambda: shared
    if request.param == "kubernetes":
        from singleton_jobs import KubernetesLeaseStore

        api: FakeKubernetesApi = request.getfixturevalue("k8s_api")
        name = unique_lease_name("conformance")
        return lambda: KubernetesLeaseStore(name, namespace="default",
                                            api_client=k8s_api_client(api.url))
    if request.param in ("postgresql", "mysql", "sqlite"):
        from servers import MYSQL_URL, POSTGRES_URL, require_server

        from singleton_jobs import SQLLeaseStore

        url = {"postgresql": POSTGRES_URL, "mysql": MYSQL_URL,
               "sqlite": f"sqlite:///{tmp_path / 'leases.db'}"}[request.param]
        require_server(url)
        name = unique_lease_name(f"conformance-{os.getpid()}-{time.time_ns()}")
        return lambda: SQLLeaseStore(url, name)
    if request.param == "redis":
        from servers import REDIS_URL, require_server

        from singleton_jobs import RedisLeaseStore

        require_server(REDIS_URL)
        name = unique_lease_name(f"conformance-{os.getpid()}-{time.time_ns()}")
        return lambda: RedisLeaseStore(REDIS_URL, name)
    path = tmp_path / "conformance.lease"
    return lambda: FileLeaseStore(path)


@pytest.fixture
def store(store_factory: Callable[[], LeaseStore]) -> LeaseStore:
    return store_factory()


class Process:
    """A child process whose stdout lines are collected, with the monotonic time each arrived."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env=env, encoding="utf-8")
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float,
                      after: int = 0) -> str | None:
        found: list[str] = []

        def check() -> bool:
            for _, line in self.lines[after:]:
                if predicate(line):
                    found.append(line)
                    return True
            return False

        wait_until(check, timeout)
        return found[0] if found else None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.popen.wait(10)
        self._reader.join(5)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Process]]:
    """Start real child processes; every one is killed when the test ends."""
    started: list[Process] = []

    def start(*args: str, env: dict[str, str] | None = None,
              python: str = sys.executable) -> Process:
        process = Process([python, *args], env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def fresh_postgres_database() -> Iterator[str]:
    """The URL of a database of its own on the shared PostgreSQL server, dropped afterwards."""
    import sqlalchemy
    from servers import POSTGRES_URL, require_server

    require_server(POSTGRES_URL)
    name = f"fresh_{os.getpid()}_{time.time_ns()}"
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield sqlalchemy.engine.make_url(POSTGRES_URL).set(database=name).render_as_string(
            hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
