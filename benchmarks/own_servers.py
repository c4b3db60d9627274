"""Database servers that a benchmark starts for itself, and what those servers count.

The servers are the test suite's (``tests/servers.py``: a real PostgreSQL, MariaDB or Redis
process in a temp dir on a free port), so that nothing else talks to them while a benchmark
counts: every statement a server counts, and every CPU second it spends, is the benchmark's.
This module adds what the benchmarks need on top:

* ``start_server(kind, directory)``: start one, or raise :class:`Unavailable` with the reason
  (binaries or client library missing) instead of skipping a test;
* ``persistent`` Redis (``appendonly yes``, ``appendfsync always``): a Redis that keeps every
  acknowledged write across a crash restart, as the Redis backend's docs advise where tokens
  matter (the test suite's own Redis runs without persistence);
* :class:`StatementCounter` per server kind: the server's own count of the statements (requests,
  commands) it ran, by kind, without the counter's own queries — PostgreSQL through
  ``pg_stat_statements``, MariaDB through ``SHOW GLOBAL STATUS``, Redis through ``MONITOR``
  (round trips, told apart from the commands a Lua script runs) or ``INFO commandstats``;
* CPU seconds of a process, or of a server's whole process tree, from ``/proc``.

Linux only (``/proc``), like the test suite's own servers.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import servers  # noqa: E402  (tests/servers.py, found through the path set just above)

KINDS = ("postgresql", "mysql", "redis")
NAMES = {"postgresql": "PostgreSQL", "mysql": "MariaDB", "redis": "Redis"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Unavailable(RuntimeError):
    """A server of this kind cannot run here; the message says why (what to install)."""


class _PersistentRedis(servers._RedisServer):
    """Redis with every acknowledged write in its append-only file before the answer."""

    def _command(self) -> list[str]:
        command = super()._command()
        index = command.index("--appendonly")
        command[index + 1] = "yes"
        return [*command, "--appendfsync", "always"]


def start_server(kind: str, directory: Path, *, persistent: bool = False) -> servers.Server:
    """A started server of ``kind`` that the caller must ``close()``; its log goes to
    ``directory``. ``persistent``: a Redis that survives a crash restart with its data.

    :raises Unavailable: the server cannot run here.
    """
    import pytest

    if kind == "redis" and persistent:
        reason = _PersistentRedis.missing()
        if reason is not None:
            raise Unavailable(reason)
        for attempt in (1, 2, 3):
            server = _PersistentRedis(directory / "redis-server.log")
            try:
                server.start()
            except servers.PortTakenError:
                server.close()
                if attempt == 3:
                    raise
            except BaseException:
                server.close()
                raise
            else:
                return server
    try:
        return servers.own_server(kind, directory)
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        raise Unavailable(str(getattr(exc, "msg", exc))) from None


# -- CPU ------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (0 if it is gone); with ``reaped_children``, plus
    those of the children it waited for."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root``, its live descendants and the children it reaped: all that a
    server such as PostgreSQL (one process per connection) spent."""
    return cpu_seconds(root, reaped_children=True) + sum(
        cpu_seconds(pid) for pid in servers.process_tree(root)[1:])


# -- statement counts -----------------------------------------------------------------------------


class StatementCounter:
    """The server's own cumulative count of what clients sent it, without this counter's
    own queries. ``snapshot()`` returns (total, by kind); differences of two snapshots are
    what happened between them."""

    #: What the numbers count, for table headings.
    unit = "statements"

    def snapshot(self) -> tuple[int, Counter[str]]:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the counter's connection."""


def counter_for(server: servers.Server, *, max_connections: int | None = None,
                redis_round_trips: bool = True) -> StatementCounter:
    """The statement counter that suits ``server``'s kind: a PostgreSQL is restarted to load
    pg_stat_statements (with ``max_connections`` if given); a Redis is counted through MONITOR
    (``redis_round_trips``) or INFO commandstats."""
    if server.kind == "postgresql":
        return PostgresCounter(server, max_connections=max_connections)
    if server.kind == "mysql":
        return MariaDBCounter(server)
    if server.kind == "redis":
        if redis_round_trips:
            return RedisMonitorCounter(server.url)
        return RedisCommandStats(server.url)
    raise ValueError(f"no statement counter for {server.kind!r}")


def statement_label(query: str) -> str:
    """A short name for an SQL statement: its verb and table (``UPDATE singleton_jobs_leases``),
    or the function a ``SELECT`` without a table calls (``SELECT pg_notify``)."""
    text = " ".join(query.split())
    verb = text.split(" ", 1)[0].upper()
    patterns = {"SELECT": r"\bFROM\s+([\w.\"]+)", "UPDATE": r"^UPDATE\s+([\w.\"]+)",
                "INSERT": r"\bINTO\s+([\w.\"]+)", "DELETE": r"\bFROM\s+([\w.\"]+)"}
    found = re.search(patterns[verb], text, re.IGNORECASE) if verb in patterns else None
    if found:
        return f"{verb} {found.group(1)}"
    if verb == "SELECT":
        called = re.search(r"SELECT\s+([\w.]+)\s*\(", text, re.IGNORECASE)
        if called:
            return f"SELECT {called.group(1)}"
    return text if len(text) <= 60 else text[:57] + "..."


class PostgresCounter(StatementCounter):
    """``pg_stat_statements`` on an own PostgreSQL: every statement's calls, as the server
    counts them when it finishes the statement (no stats flush delay, unlike
    ``pg_stat_database``). Loading the library takes a restart of the server, done here;
    ``max_connections`` can be raised in the same restart."""

    def __init__(self, server: servers.Server, *, max_connections: int | None = None) -> None:
        import psycopg

        self._psycopg = psycopg
        self.server = server
        with self._connect() as connection:
            connection.execute("ALTER SYSTEM SET shared_preload_libraries = "
                               "'pg_stat_statements'")
            if max_connections is not None:
                connection.execute(f"ALTER SYSTEM SET max_connections = {int(max_connections)}")
        server.restart()
        self._connection = self._connect()
        self._connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self._connection.execute("SELECT pg_stat_statements_reset()")

    def _connect(self) -> Any:
        return self._psycopg.connect(host=self.server.host, port=self.server.port,
                                     user="postgres", dbname="postgres", autocommit=True,
                                     connect_timeout=10)

    def snapshot(self) -> tuple[int, Counter[str]]:
        rows = self._connection.execute(
            "SELECT query, calls FROM pg_stat_statements").fetchall()
        counts: Counter[str] = Counter()
        for query, calls in rows:
            if "pg_stat_statements" not in query:  # this counter's own
                counts[statement_label(query)] += int(calls)
        return sum(counts.values()), counts

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()


class MariaDBCounter(StatementCounter):
    """``SHOW GLOBAL STATUS`` on an own MariaDB: ``Questions`` (every statement clients sent)
    and the ``Com_*`` counters by statement type. Each snapshot is one statement itself
    (one Question, one ``Com_show_status``): subtracted."""

    def __init__(self, server: servers.Server) -> None:
        import pymysql

        self._connection = pymysql.connect(host=server.host, port=server.port, user="root",
                                           database="test", autocommit=True, connect_timeout=10,
                                           read_timeout=30, write_timeout=30)
        self._taken = 0

    def snapshot(self) -> tuple[int, Counter[str]]:
        with self._connection.cursor() as cursor:
            cursor.execute("SHOW GLOBAL STATUS")
            rows = cursor.fetchall()
        self._taken += 1
        status = {name: value for name, value in rows}
        counts: Counter[str] = Counter()
        for name, value in status.items():
            if name.startswith("Com_") and name != "Com_show_status" and value.isdigit():
                if int(value):
                    counts[name[4:].upper().replace("_", " ")] = int(value)
        return int(status["Questions"]) - self._taken, counts

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()


class RedisMonitorCounter(StatementCounter):
    """Redis round trips, by command, seen through ``MONITOR``: commands that a Lua script
    runs (``[0 lua]``) are not round trips and are left out, unlike in ``INFO commandstats``.
    A snapshot sends ``ECHO <marker>`` and counts what the server ran before it, so snapshots
    are exact in the server's own order. Commands of connections that subscribed (release
    listeners: their keep-alive PINGs) are counted under ``listener: <command>``, apart.
    MONITOR costs the server CPU: use it to count, not to time."""

    unit = "requests"

    def __init__(self, url: str) -> None:
        import redis

        self._monitor_client = redis.Redis.from_url(url, socket_timeout=None)
        self._marker_client = redis.Redis.from_url(url, socket_timeout=10)
        self._monitor = self._monitor_client.monitor()
        self._monitor.__enter__()
        self._lock = threading.Condition()
        self._entries: list[tuple[str, str]] = []  # (client address, command name)
        self._markers: dict[str, int] = {}  # marker -> entries before it
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True, name="redis-monitor")
        self._thread.start()
        self._serial = 0
        self._own: str | None = None  # the marker client's address

    def _read(self) -> None:
        while True:
            try:
                entry = self._monitor.next_command()
            except Exception:  # noqa: BLE001 - closed: the end
                return
            if entry is None or entry["client_type"] == "lua":
                continue
            words = entry["command"].split(" ", 2)
            name = words[0].lower()
            if name in ("client", "script", "config", "cluster") and len(words) > 1:
                name = f"{name}|{words[1].lower()}"
            address = f"{entry['client_address']}:{entry['client_port']}"
            with self._lock:
                if name == "echo" and len(words) > 1 and words[1].startswith("bench-marker-"):
                    self._markers[words[1]] = len(self._entries)
                    self._own = address
                    self._lock.notify_all()
                    continue
                self._entries.append((address, name))

    def snapshot(self) -> tuple[int, Counter[str]]:
        self._serial += 1
        marker = f"bench-marker-{self._serial}"
        self._marker_client.echo(marker)
        with self._lock:
            if not self._lock.wait_for(lambda: marker in self._markers, 30):
                raise RuntimeError("MONITOR did not show the marker within 30 s")
            entries = self._entries[:self._markers[marker]]
            own = self._own
        listeners = {address for address, name in entries if name in ("subscribe", "psubscribe")}
        counts: Counter[str] = Counter()
        for address, name in entries:
            if address == own:
                continue
            counts[f"listener: {name}" if address in listeners else name] += 1
        total = sum(count for name, count in counts.items() if not name.startswith("listener"))
        return total, counts

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._monitor.__exit__(None, None, None)
        self._thread.join(5)
        for client in (self._monitor_client, self._marker_client):
            with contextlib.suppress(Exception):
                client.close()


#: Commands the Redis backend only ever sends from a client, never from its Lua scripts.
REDIS_CLIENT_ONLY = ("evalsha", "eval", "hgetall", "script|load", "ping", "subscribe",
                     "unsubscribe", "client|setinfo", "client|setname", "hello")


class RedisCommandStats(StatementCounter):
    """``INFO commandstats``: cheap enough to run while CPU is measured, but it counts the
    commands a Lua script runs as well. The total is the commands of :data:`REDIS_CLIENT_ONLY`
    (round trips; ``GET``/``TYPE``, which both clients and scripts send, are left out: a client
    sends them only to read a fencing floor, at a takeover); ``by kind`` has every command,
    script-internal ones included. The counter's own ``INFO`` calls are not counted."""

    unit = "requests"

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=10)

    def snapshot(self) -> tuple[int, Counter[str]]:
        stats = self._client.info("commandstats")
        counts: Counter[str] = Counter()
        for name, value in stats.items():
            command = name.removeprefix("cmdstat_")
            if command != "info":
                counts[command] = int(value["calls"])
        return sum(counts[name] for name in REDIS_CLIENT_ONLY), counts

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


def difference(after: Counter[str], before: Counter[str]) -> Counter[str]:
    """``after - before`` keeping only positive counts."""
    return Counter({key: after[key] - before.get(key, 0) for key in after
                    if after[key] - before.get(key, 0) > 0})


def client_ports(pid: int, server_port: int) -> list[int]:
    """Local ports of the TCP connections that process ``pid`` holds open to ``server_port``
    on this host (through /proc: its socket fds, matched in its network namespace's table)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                found = re.fullmatch(r"socket:\[(\d+)\]", target)
                if found:
                    inodes.add(found.group(1))
    ports = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if inode in inodes and state == "01" \
                        and int(remote.rsplit(":", 1)[1], 16) == server_port:
                    ports.append(int(local.rsplit(":", 1)[1], 16))
    return sorted(ports)


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.005) -> None:
    """Poll ``predicate()`` until it holds. :raises TimeoutError: it did not in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def describe(counts: Iterable[tuple[str, float]], *, digits: int = 2) -> str:
    """``name 1.00, other 0.02`` for the non-zero items, largest first."""
    items = sorted(((name, value) for name, value in counts if round(value, digits)),
                   key=lambda item: -item[1])
    return ", ".join(f"{name} {value:.{digits}f}" for name, value in items) or "-"
