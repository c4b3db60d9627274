"""Database servers and network faults for the SQL and Redis backend tests.

Two kinds of server:

* Shared servers that already run (a developer's or CI's PostgreSQL, MariaDB and Redis), named
  by ``POSTGRES_URL``, ``MYSQL_URL`` and ``REDIS_URL``. A test calls ``require_server(url)``
  first: it skips when the server does not answer, or fails when
  ``SINGLETON_JOBS_REQUIRE_SERVERS=1`` (CI sets it, so a missing server cannot pass as a skip).
  Tests must not stop, pause or reconfigure these.
* Servers a test owns (``Server``, ``own_server`` and the fixtures ``own_postgres``,
  ``own_mysql``, ``own_redis``): a real server process in a temp dir on a free port, which the
  test may stop, kill, restart and pause.

``TcpProxy`` sits between clients and a server to inject network faults: latency, dropped
connections, a partition, refused connections.

Linux only for owned servers (processes are found and signalled through /proc). To look into
one while a test runs (``server.port``, ``server.dir``):

* PostgreSQL: ``psql -h 127.0.0.1 -p PORT -U postgres postgres`` (trust auth). PostgreSQL refuses
  to run as root, so when the tests run as root the server runs as the ``postgres`` system user
  (``nobody`` where there is none); its unix socket is in ``server.dir``.
* MariaDB: ``mariadb -h 127.0.0.1 -P PORT -u root test`` (no password), or
  ``--socket=DIR/mysqld.sock``.
* Redis: ``redis-cli -p PORT``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = [
    "MYSQL_URL",
    "POSTGRES_URL",
    "PortTakenError",
    "REDIS_URL",
    "REQUIRE_SERVERS_VARIABLE",
    "Server",
    "TcpProxy",
    "own_mysql",
    "own_postgres",
    "own_redis",
    "own_server",
    "process_tree",
    "require_server",
    "tcp_proxy",
]

POSTGRES_URL = os.environ.get(
    "SINGLETON_JOBS_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("SINGLETON_JOBS_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("SINGLETON_JOBS_REDIS_URL", "redis://127.0.0.1:6379/0")

REQUIRE_SERVERS_VARIABLE = "SINGLETON_JOBS_REQUIRE_SERVERS"

# require_server(): a shared server that has not answered within this is missing.
ANSWER_TIMEOUT = 2.0
# The drivers' own timeouts, a second longer: only a backstop for the probing thread, so that
# a silent server is always reported as not answering within ANSWER_TIMEOUT (with the same
# value, the driver's timer and the join raced, and either message could come first).
DRIVER_TIMEOUT = ANSWER_TIMEOUT + 1.0
# Bounds for an owned server to answer after start (crash recovery included) and to exit after
# stop; generous because CI machines have two busy cores, and only a failing start waits this long.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# How long a signalled process may take to show as stopped in /proc.
SIGNAL_TIMEOUT = 10.0

_KIND_NAMES = {"postgresql": "PostgreSQL", "mysql": "MariaDB/MySQL", "redis": "Redis"}
_URL_VARIABLES = {
    "postgresql": "SINGLETON_JOBS_POSTGRES_URL",
    "mysql": "SINGLETON_JOBS_MYSQL_URL",
    "redis": "SINGLETON_JOBS_REDIS_URL",
}
_HOW_TO_START = {
    "postgresql": "apt-get install postgresql && service postgresql start",
    "mysql": "apt-get install mariadb-server && service mariadb start",
    "redis": "apt-get install redis-server && redis-server --daemonize yes",
}


def _servers_required() -> bool:
    return os.environ.get(REQUIRE_SERVERS_VARIABLE) == "1"


def _unavailable(reason: str) -> NoReturn:
    """Skip the calling test, or fail it where servers are required (CI)."""
    if _servers_required():
        pytest.fail(f"{reason} [{REQUIRE_SERVERS_VARIABLE}=1: servers are required]", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# Shared servers

# URL -> why it did not answer. A server that did not answer once is not asked again in this
# session, so that a missing server costs 2 s once instead of 2 s per test.
_unanswered: dict[str, str] = {}


def require_server(url: str) -> None:
    """Skip the calling test when the server at ``url`` (an SQLAlchemy URL or a ``redis://``
    URL) does not answer a query within 2 s, with a reason that says what to install and
    start; fail it instead when ``SINGLETON_JOBS_REQUIRE_SERVERS=1``. SQLite URLs need no
    server and always pass."""
    reason = _unanswered.get(url)
    if reason is None:
        reason = _probe(url)
        if reason is None:
            return
        _unanswered[url] = reason
    _unavailable(reason)


def _kind_of_url(url: str) -> str:
    scheme = url.split(":", 1)[0].lower()
    backend = scheme.split("+", 1)[0]
    if backend in ("redis", "rediss", "unix"):
        return "redis"
    if backend in ("mysql", "mariadb"):
        return "mysql"
    return backend


def _probe(url: str) -> str | None:
    """None when the server at ``url`` answers a query in time, else why it does not."""
    kind = _kind_of_url(url)
    if kind == "sqlite":
        return None
    try:
        query = _redis_query(url) if kind == "redis" else _sql_query(url)
    except ImportError as exc:
        scheme = url.split(":", 1)[0]
        return f"a client library for {scheme} is missing ({exc}): pip install -e '.[test]'"
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            query()
        except BaseException as exc:  # reported to the test, whatever it is
            outcome.append(exc)
        else:
            outcome.append(None)

    # The drivers' own timeouts are set too; the thread bounds the whole exchange (DNS,
    # connect, authentication, query) whatever the driver does.
    thread = threading.Thread(target=ask, name=f"require_server {_where(url)}", daemon=True)
    thread.start()
    thread.join(ANSWER_TIMEOUT)
    if not outcome:
        error = f"no answer within {ANSWER_TIMEOUT:g} s"
    elif outcome[0] is None:
        return None
    else:
        failure = outcome[0]
        first_line = (str(failure).strip().splitlines() or [""])[0]
        error = f"{type(failure).__name__}: {first_line}" if first_line else type(failure).__name__
    name = _KIND_NAMES.get(kind, kind)
    how = _HOW_TO_START.get(kind, "start it")
    variable = _URL_VARIABLES.get(kind)
    elsewhere = f", or set {variable} to a server that runs" if variable else ""
    return f"{name} at {_where(url)} does not answer ({error}): {how}{elsewhere}"


def _where(url: str) -> str:
    """host:port of ``url``, without credentials."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.hostname}:{port}" if port else f"{parts.hostname}"


def _redis_query(url: str) -> Callable[[], None]:
    import redis

    def ping() -> None:
        client = redis.Redis.from_url(
            url, socket_timeout=DRIVER_TIMEOUT, socket_connect_timeout=DRIVER_TIMEOUT
        )
        try:
            client.ping()
        finally:
            client.close()

    return ping


def _sql_query(url: str) -> Callable[[], None]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    seconds = int(DRIVER_TIMEOUT)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in (
        "psycopg",
        "psycopg2",
    ):
        connect_args = {"connect_timeout": seconds}
    elif parsed.get_driver_name() == "pymysql":
        connect_args = {
            "connect_timeout": seconds,
            "read_timeout": seconds,
            "write_timeout": seconds,
        }
    # Built here, not in the thread: a missing driver is an ImportError for the caller.
    engine = create_engine(parsed, poolclass=NullPool, connect_args=connect_args)

    def select_one() -> None:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()

    return select_one


# ---------------------------------------------------------------------------------------------
# Processes, through /proc


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.append(int(entry))
    return sorted(found)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants, parents before children (empty if ``pid`` is gone)."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] == "Z":
        return []
    tree = [pid]
    index = 0
    while index < len(tree):  # breadth first
        tree.extend(_children(tree[index]))
        index += 1
    return tree


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _send(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_stopped(pid: int) -> bool:
    """Wait until ``pid`` shows as stopped; False if it is gone instead."""
    deadline = time.monotonic() + SIGNAL_TIMEOUT
    while True:
        stat = _proc_stat(pid)
        if stat is None or stat[0] == "Z":
            return False
        if stat[0] in "Tt":
            return True
        if time.monotonic() >= deadline:
            raise RuntimeError(f"process {pid} did not stop within {SIGNAL_TIMEOUT:g} s of SIGSTOP")
        time.sleep(0.002)


def _stop_tree(root: int) -> list[int]:
    """SIGSTOP ``root`` and all its descendants, each parent before its children are listed so
    that none forks a child that escapes; return the stopped processes, parents first."""
    stopped: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop(0)
        _send(pid, signal.SIGSTOP)
        if _wait_stopped(pid):
            stopped.append(pid)
            # A stopped parent cannot reap, so these pids cannot be reused under our feet.
            pending.extend(_children(pid))
    return stopped


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _find_binary(name: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in (*extra_dirs, "/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"):
        candidate = Path(directory, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# ---------------------------------------------------------------------------------------------
# Owned servers

# One initialised data dir per kind and pytest session, copied for each server: initdb and
# mariadb-install-db cost far more than a copy. Removed at exit.
_templates: dict[str, Path] = {}
_template_lock = threading.Lock()
_scratch_dirs: list[Path] = []
_live_servers: set[Server] = set()
_owner_pid = os.getpid()


@atexit.register
def _clean_up_at_exit() -> None:
    # A forked test process inherits these; only the process that made them cleans them up.
    if os.getpid() != _owner_pid:
        return
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.close()
    for directory in _scratch_dirs:
        shutil.rmtree(directory, ignore_errors=True)


def _scratch_dir(prefix: str) -> Path:
    # Short and directly under /tmp, not in pytest's tmp_path: unix socket paths are limited to
    # ~100 bytes, and pytest's /tmp/pytest-of-root is closed to the postgres user.
    return Path(tempfile.mkdtemp(prefix=f"singleton-jobs-{prefix}-"))


class PortTakenError(RuntimeError):
    """The server could not listen on its port: someone else took it since it was picked."""


class Server:
    """A database server process this test owns, in a temp dir, on a free port.

    Build one with ``own_server`` (or the ``own_*`` fixtures). Its data dir lives in a
    short-named temp dir under /tmp, removed by ``close()``; its log (stdout and stderr of every
    start) is ``log_path``, in the test's ``tmp_path``, kept for inspection. ``pid`` is the main
    process of the latest start (0 before the first).
    """

    kind = ""
    _stop_signal = signal.SIGTERM

    def __init__(self, log_path: Path) -> None:
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.pid = 0
        self.log_path = log_path
        self.dir = _scratch_dir(self.kind)
        self.url = self._url()
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._paused = False
        self._closed = False
        _live_servers.add(self)
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "running" if self.running else "not running"
        return f"<{type(self).__name__} {self.url} pid={self.pid} {state}>"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """The main process exists (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again, after ``stop()`` or ``kill()``: same port and data) and wait
        until it answers a query; a no-op when it runs.

        :raises RuntimeError: it exited or did not answer within ``START_TIMEOUT``; the message
            holds the tail of its log. ``PortTakenError`` when its port was taken meanwhile.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self.running:
            return
        self._before_start()
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"==== {time.strftime('%H:%M:%S')} starting {self.kind} ====\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self._environment(),
                # Its own session: a Ctrl+C in the terminal goes to pytest, which then closes the
                # server in teardown, instead of straight to the server.
                start_new_session=True,
                **self._user_arguments(),
            )
        self.pid = self._process.pid
        self._paused = False
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "not asked yet"
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                log_tail = _tail(self.log_path, self._log_offset)
                error = PortTakenError if "Address already in use" in log_tail else RuntimeError
                raise error(
                    f"{self.kind} server on port {self.port} exited with {returncode} before it "
                    f"answered; log {self.log_path}:\n{log_tail}"
                )
            try:
                self._answer(timeout=2.0)
            except Exception as exc:  # not up yet, whatever the driver says
                last_error = f"{type(exc).__name__}: {exc}".strip()
            else:
                # Its port may be one that an earlier server of this session had, which
                # require_server() then remembered as not answering.
                _unanswered.pop(self.url, None)
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(
                    f"{self.kind} server on port {self.port} did not answer within "
                    f"{START_TIMEOUT:g} s (last error: {last_error}); log {self.log_path}:\n"
                    f"{_tail(self.log_path, self._log_offset)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Shut the server down cleanly and wait until all its processes are gone.

        :raises RuntimeError: it did not exit within ``STOP_TIMEOUT`` (it is killed then).
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        self.resume()  # a stopped process does not act on SIGTERM until continued
        tree = process_tree(process.pid)
        process.send_signal(self._stop_signal)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"{self.kind} server did not shut down within {STOP_TIMEOUT:g} s, killed it; "
                f"log {self.log_path}:\n{_tail(self.log_path, self._log_offset)}"
            ) from None
        _wait_gone(tree, STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL every process of the server (a crash) and wait until they are gone."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        # Stop the whole tree first, so that no process forks or restarts a child meanwhile,
        # then kill children before parents: nothing outlives the kill.
        try:
            tree = _stop_tree(process.pid)
        except RuntimeError:  # something would not stop (uninterruptible sleep): kill anyway
            tree = process_tree(process.pid)
        for pid in reversed(tree):
            _send(pid, signal.SIGKILL)
        _send(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)
        self._paused = False
        if not _wait_gone(tree, STOP_TIMEOUT):
            raise RuntimeError(f"{self.kind} server processes {tree} outlived SIGKILL")

    def restart(self) -> None:
        """A crash restart: ``kill()`` then ``start()``."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP every process of the server: connections stay open, nothing answers."""
        if self._paused or not self.running:
            return
        assert self._process is not None
        _stop_tree(self._process.pid)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT every process of the server, after ``pause()``."""
        if not self._paused:
            return
        self._paused = False
        if not self.running:
            return
        assert self._process is not None
        # Children first: the parent, still stopped, cannot fork new ones while we list them.
        for pid in reversed(process_tree(self._process.pid)):
            _send(pid, signal.SIGCONT)

    def close(self) -> None:
        """Resume and kill the server, then remove its temp dir; idempotent. The data is
        thrown away, so a kill is as good as a clean stop, and faster."""
        if self._closed:
            return
        self._closed = True
        try:
            self.kill()
        finally:
            self._after_close()
            shutil.rmtree(self.dir, ignore_errors=True)
            _live_servers.discard(self)

    # The hooks each kind fills in.

    @classmethod
    def missing(cls) -> str | None:
        """Why servers of this kind cannot run here (what to install), or None."""
        raise NotImplementedError

    def _url(self) -> str:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Fill ``self.dir`` (data dir, ownership) before the first start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _answer(self, timeout: float) -> None:
        """Connect and run a trivial query; raise if that fails."""
        raise NotImplementedError

    def _before_start(self) -> None:
        """Clean up what a killed server left behind, if it does not do that itself."""

    def _after_close(self) -> None:
        """Release what the server's data dir does not hold (e.g. shared memory)."""

    def _user_arguments(self) -> dict[str, Any]:
        return {}

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)


def _postgres_bindir() -> Path | None:
    """The directory with initdb and postgres: the newest /usr/lib/postgresql/N/bin, else PATH."""
    versions = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        if candidate.parent.name.isdigit():
            versions.append((int(candidate.parent.name), candidate))
    for _, bindir in sorted(versions, reverse=True):
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    initdb = shutil.which("initdb")
    if initdb and Path(initdb).with_name("postgres").is_file():
        return Path(initdb).parent
    return None


def _postgres_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: it refuses to run as root, so root hands it to the
    ``postgres`` system user, or to ``nobody`` where there is none. None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists")


def _as_account(account: pwd.struct_passwd | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _give_to(path: Path, account: pwd.struct_passwd | None) -> None:
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)


def _run(command: list[str], what: str, input: bytes = b"", **kwargs: Any) -> None:
    result = subprocess.run(
        command, input=input, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=300, check=False, **kwargs,
    )
    if result.returncode != 0:
        output = result.stdout.decode(errors="replace")
        raise RuntimeError(f"{what} failed with {result.returncode}: {command}\n{output[-4000:]}")


def _template(kind: str, build: Callable[[Path], None]) -> Path:
    """The session's initialised data dir of ``kind``, built by ``build(data_dir)`` once."""
    with _template_lock:
        data = _templates.get(kind)
        if data is None:
            root = _scratch_dir(f"{kind}-template")
            _scratch_dirs.append(root)
            data = root / "data"
            build(data)
            _templates[kind] = data
        return data


def _copy_data(template: Path, destination: Path) -> None:
    # cp -a keeps owners and modes (PostgreSQL insists on a 0700 data dir it owns) and is quick.
    _run(["cp", "-a", str(template), str(destination)], "copying a template data dir")


class _PostgresServer(Server):
    """PostgreSQL: the postmaster (``pid``) and its children, each in its own process group."""

    kind = "postgresql"
    _stop_signal = signal.SIGINT  # "fast" shutdown: ends sessions instead of waiting for them

    @classmethod
    def missing(cls) -> str | None:
        if _postgres_bindir() is None:
            return (
                "PostgreSQL server binaries (initdb, postgres) not found: "
                "apt-get install postgresql"
            )
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg (3) is not installed: pip install -e '.[test]'"
        return None

    def _url(self) -> str:
        # The driver of POSTGRES_URL: a run with SQLAlchemy 1.4 (no psycopg 3 dialect) sets
        # SINGLETON_JOBS_POSTGRES_URL to a postgresql+psycopg2:// URL.
        driver = POSTGRES_URL.split("://", 1)[0]
        return f"{driver}://postgres@{self.host}:{self.port}/postgres"

    @property
    def _data(self) -> Path:
        return self.dir / "data"

    def _prepare(self) -> None:
        account = _postgres_account()
        bindir = _postgres_bindir()
        assert bindir is not None

        def initdb(data: Path) -> None:
            _give_to(data.parent, account)
            _run(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--locale=C", "--no-sync"],
                "initdb", cwd=data.parent, env=self._environment(), **_as_account(account),
            )

        _give_to(self.dir, account)
        _copy_data(_template(self.kind, initdb), self._data)

    def _command(self) -> list[str]:
        bindir = _postgres_bindir()
        assert bindir is not None
        settings = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.dir),
            # Throwaway data: no fsync (writes still reach the OS, so a killed server keeps
            # every committed row; only a machine crash would lose them).
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "100",
            "huge_pages": "off",
            # Dynamic shared memory in files of the data dir, not /dev/shm: nothing to leak
            # when the server is killed and its dir removed.
            "dynamic_shared_memory_type": "mmap",
            "logging_collector": "off",
        }
        command = [str(bindir / "postgres"), "-D", str(self._data), "-p", str(self.port)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _environment(self) -> dict[str, str]:
        # Client variables (PGHOST, PGDATA, ...) are not the template's or this server's business.
        return {k: v for k, v in os.environ.items() if not k.startswith("PG")}

    def _user_arguments(self) -> dict[str, Any]:
        return _as_account(_postgres_account())

    def _answer(self, timeout: float) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname="postgres",
            connect_timeout=max(2, round(timeout)),  # libpq's minimum is 2 s
        ) as connection:
            connection.execute("SELECT 1")

    def _before_start(self) -> None:
        # A killed postmaster leaves postmaster.pid and the socket's lock file behind.
        # PostgreSQL removes them itself when the pid in them is dead, and also frees the old
        # shared memory named there; but if that pid has been reused meanwhile it would think
        # the old server still runs, so remove them only in that case.
        for lock in (self._data / "postmaster.pid", self.dir / f".s.PGSQL.{self.port}.lock"):
            try:
                pid = int(lock.read_text().split("\n", 1)[0])
            except (OSError, ValueError):
                continue
            if _alive(pid):
                lock.unlink()

    def _after_close(self) -> None:
        # A killed postmaster leaves its System V shared memory segment (a few bytes, but the
        # number of segments is limited); postmaster.pid names it on line 7: "key shmid".
        try:
            lines = (self._data / "postmaster.pid").read_text().splitlines()
            shmid = int(lines[6].split()[1])
        except (OSError, IndexError, ValueError):
            return
        ipcrm = shutil.which("ipcrm")
        if ipcrm:
            subprocess.run([ipcrm, "-m", str(shmid)], capture_output=True, check=False)


class _MySQLServer(Server):
    """MariaDB: one ``mariadbd`` process; user root without a password, database ``test``."""

    kind = "mysql"

    @staticmethod
    def _binaries() -> tuple[str | None, str | None]:
        server = _find_binary("mariadbd") or _find_binary("mysqld")
        install = _find_binary("mariadb-install-db") or _find_binary("mysql_install_db")
        return server, install

    @classmethod
    def missing(cls) -> str | None:
        if None in cls._binaries():
            return (
                "MariaDB server binaries (mariadbd, mariadb-install-db) not found: "
                "apt-get install mariadb-server"
            )
        try:
            import pymysql  # noqa: F401
        except ImportError:
            return "PyMySQL is not installed: pip install -e '.[test]'"
        return None

    def _url(self) -> str:
        return f"mysql+pymysql://root@{self.host}:{self.port}/test"

    # Options for both mariadb-install-db and the server (the redo log size must agree).
    _options = (
        "--innodb-buffer-pool-size=16M",
        "--innodb-log-file-size=8M",
        "--skip-name-resolve",
    )

    def _as_root(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _prepare(self) -> None:
        server, install = self._binaries()
        assert server is not None and install is not None

        def install_db(data: Path) -> None:
            # root@localhost, root@127.0.0.1 and root@::1 without password, the 'test' database.
            common = ["--no-defaults", f"--datadir={data}", *self._as_root()]
            _run(
                [install, *common, "--auth-root-authentication-method=normal", *self._options],
                "mariadb-install-db", cwd=data.parent,
            )
            # Without the anonymous users it also makes: ''@localhost would shadow users that
            # tests create for connections through the socket (as a fresh secure install does).
            _run(
                [server, *common, "--bootstrap", *self._options],
                "removing MariaDB's anonymous users", cwd=data.parent,
                input=b"DELETE FROM mysql.global_priv WHERE User = '';\n",
            )

        _copy_data(_template(self.kind, install_db), self.dir / "data")

    def _command(self) -> list[str]:
        server, _ = self._binaries()
        assert server is not None
        return [
            server, "--no-defaults", f"--datadir={self.dir / 'data'}", *self._as_root(),
            f"--port={self.port}", f"--bind-address={self.host}",
            f"--socket={self.dir / 'mysqld.sock'}", f"--pid-file={self.dir / 'mysqld.pid'}",
            f"--tmpdir={self.dir}", *self._options,
            # Commits reach the OS at once (a killed server keeps them), fsync once a second.
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
            "--skip-log-bin", "--performance-schema=OFF",
        ]

    def _answer(self, timeout: float) -> None:
        import pymysql

        connection = pymysql.connect(
            host=self.host, port=self.port, user="root", database="test",
            connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout,
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            connection.close()


class _RedisServer(Server):
    """Redis: one ``redis-server`` process, without persistence (a restart starts empty)."""

    kind = "redis"

    @classmethod
    def missing(cls) -> str | None:
        if _find_binary("redis-server") is None:
            return "redis-server not found: apt-get install redis-server"
        return None

    def _url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        server = _find_binary("redis-server")
        assert server is not None
        return [
            server, "--port", str(self.port), "--bind", self.host, "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
            "--logfile", "", "--protected-mode", "no",
        ]

    def _answer(self, timeout: float) -> None:
        # Plain RESP, so that starting a server does not need redis-py.
        with socket.create_connection((self.host, self.port), timeout=timeout) as connection:
            connection.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = connection.recv(64)
                if not chunk:
                    raise ConnectionError("connection closed before the reply to PING")
                reply += chunk
        if reply != b"+PONG\r\n":  # e.g. -LOADING while it starts
            raise ConnectionError(f"PING answered {reply!r}")


_SERVER_CLASSES: dict[str, type[Server]] = {
    "postgresql": _PostgresServer,
    "mysql": _MySQLServer,
    "redis": _RedisServer,
}


def own_server(kind: str, tmp_path: Path) -> Server:
    """Build and start a server of ``kind`` ("postgresql", "mysql" or "redis") that the caller
    owns and must ``close()``; its log goes to ``tmp_path``. Skips the test (fails it where
    servers are required) when the server binaries or the client library are missing.

    :raises RuntimeError: the server would not start (the message has its log tail).
    """
    server_class = _SERVER_CLASSES.get(kind)
    if server_class is None:
        raise ValueError(f"unknown server kind {kind!r}: one of {sorted(_SERVER_CLASSES)}")
    if not Path("/proc/self/stat").exists():
        _unavailable("owned servers need Linux (/proc)")
    reason = server_class.missing()
    if reason is not None:
        _unavailable(reason)
    log_path = tmp_path / f"{kind}-server.log"
    number = 1
    while log_path.exists():
        number += 1
        log_path = tmp_path / f"{kind}-server-{number}.log"
    attempts = 3
    for attempt in range(1, attempts + 1):
        server = server_class(log_path)
        try:
            server.start()
        except PortTakenError:
            # The free port was taken between picking it and the server binding it: rare, so
            # try again on another one.
            server.close()
            if attempt == attempts:
                raise
        except BaseException:
            server.close()
            raise
        else:
            return server
    raise AssertionError("unreachable")


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[Server]:
    """A PostgreSQL server of this test's own (user postgres, database postgres)."""
    with own_server("postgresql", tmp_path) as server:
        yield server


@pytest.fixture
def own_mysql(tmp_path: Path) -> Iterator[Server]:
    """A MariaDB server of this test's own (user root, database test)."""
    with own_server("mysql", tmp_path) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Server]:
    """A Redis server of this test's own."""
    with own_server("redis", tmp_path) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# Network faults


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` at once: wake any thread blocked on it, and send a reset, not a goodbye."""
    with contextlib.suppress(OSError):
        # Linger 0: close() sends RST and drops unsent data.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        # Wakes threads blocked in recv() or sendall() on it, which close() alone does not.
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class _Link:
    """One proxied connection: a client socket, its upstream socket and four threads (a reader
    and a writer per direction). Readers queue what they read with the time it is due; writers
    forward it when due and when the network is not blackholed."""

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.dead = False
        self.ended = 0  # directions whose end of stream has been forwarded
        self.to_upstream: deque[tuple[float, bytes | None]] = deque()
        self.to_client: deque[tuple[float, bytes | None]] = deque()

    def start(self) -> None:
        self._spawn(self._read, self.client, self.to_upstream)
        self._spawn(self._connect_and_forward)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        name = f"tcp-proxy-{self.proxy.port}-{target.__name__.strip('_')}"
        threading.Thread(target=target, args=args, name=name, daemon=True).start()

    def _connect_and_forward(self) -> None:
        cond = self.proxy._cond
        with cond:
            # A partitioned network does not let the connection through either.
            while self.proxy._blackholed and not self.dead:
                cond.wait()
            if self.dead:
                return
        try:
            upstream = socket.create_connection(
                (self.proxy.target_host, self.proxy.target_port), timeout=10
            )
        except OSError:
            self.abort()  # as the server would: the client sees its connection reset
            return
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with cond:
            if self.dead:
                _reset(upstream)
                return
            self.upstream = upstream
        self._spawn(self._read, upstream, self.to_client)
        self._spawn(self._write, self.client, self.to_client)
        self._write(upstream, self.to_upstream)

    def _read(self, source: socket.socket, queue: deque[tuple[float, bytes | None]]) -> None:
        cond = self.proxy._cond
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                self.abort()
                return
            with cond:
                if self.dead:
                    return
                queue.append((time.monotonic() + self.proxy.latency, data or None))
                cond.notify_all()
            if not data:
                return

    def _write(self, target: socket.socket, queue: deque[tuple[float, bytes | None]]) -> None:
        cond = self.proxy._cond
        while True:
            with cond:
                while True:
                    if self.dead:
                        return
                    if queue and not self.proxy._blackholed:
                        due, data = queue[0]
                        delay = due - time.monotonic()
                        if delay <= 0:
                            queue.popleft()
                            break
                        cond.wait(delay)
                    else:
                        cond.wait()
            if data is None:  # end of stream: pass the half-close on
                try:
                    target.shutdown(socket.SHUT_WR)
                except OSError:
                    self.abort()
                    return
                with cond:
                    self.ended += 1
                    both_ended = self.ended == 2
                if both_ended:
                    self._finish()
                return
            try:
                target.sendall(data)
            except OSError:
                self.abort()
                return

    def _finish(self) -> None:
        """Both sides said goodbye and heard the other's: close quietly."""
        with self.proxy._cond:
            if self.dead:
                return
            self.dead = True
            self.proxy._cond.notify_all()
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()
        self.proxy._forget(self)

    def abort(self) -> None:
        """Break the connection on both sides, at once."""
        with self.proxy._cond:
            if self.dead:
                return
            self.dead = True
            sockets = [s for s in (self.client, self.upstream) if s is not None]
            self.proxy._cond.notify_all()
        for sock in sockets:
            _reset(sock)
        self.proxy._forget(self)


class TcpProxy:
    """A TCP proxy in threads between clients and (host, port), for fault injection.

    Listens on 127.0.0.1 on a free port (``port``); point a client at ``url_for(url)``.

    * ``latency``: seconds added to each chunk forwarded, in either direction (settable at any
      time; applies to what is read from then on).
    * ``drop_connections()``: reset every open connection, both sides; new ones still work.
    * ``blackhole()``: a partitioned network. Connections are accepted and both sides are read,
      but nothing is forwarded, existing connections included, and new connections do not reach
      the server. What was read meanwhile is delivered when the blackhole ends, as TCP would
      retransmit it after a partition heals (if nobody gave up on the connection by then).
    * ``refuse()``: new connections are reset as soon as they are accepted; open ones go on.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = "127.0.0.1"
        self.latency: float = 0.0
        self._cond = threading.Condition()
        self._blackholed = False
        self._refusing = False
        self._closed = False
        self._links: set[_Link] = set()
        self._listener = socket.create_server((self.host, 0), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept, name=f"tcp-proxy-{self.port}-accept", daemon=True
        )
        self._acceptor.start()

    def __repr__(self) -> str:
        return (
            f"<TcpProxy {self.host}:{self.port} -> {self.target_host}:{self.target_port}"
            f" connections={len(self._links)}>"
        )

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def url_for(self, url: str) -> str:
        """``url`` (SQLAlchemy or redis) with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        credentials, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{credentials}{at}{self.host}:{self.port}"))

    @property
    def connections(self) -> int:
        """Open proxied connections."""
        with self._cond:
            return len(self._links)

    def drop_connections(self) -> None:
        """Reset every open proxied connection, both sides, at once; new ones still work."""
        with self._cond:
            links = list(self._links)
        for link in links:
            link.abort()

    def blackhole(self, on: bool = True) -> None:
        """While on, forward nothing in either direction (a network partition)."""
        with self._cond:
            self._blackholed = on
            self._cond.notify_all()

    def refuse(self, on: bool = True) -> None:
        """While on, reset new connections as soon as they are accepted."""
        with self._cond:
            self._refusing = on

    def close(self) -> None:
        """Stop listening and reset every connection; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self._listener.close()
        self.drop_connections()
        self._acceptor.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                if self._closed:
                    _reset(client)
                    return
                if self._refusing:
                    _reset(client)
                    continue
                link = _Link(self, client)
                self._links.add(link)
            link.start()

    def _forget(self, link: _Link) -> None:
        with self._cond:
            self._links.discard(link)


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    """Factory ``tcp_proxy(host, port) -> TcpProxy``; every proxy is closed at teardown."""
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
