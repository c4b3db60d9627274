"""The test infrastructure of tests/servers.py does what the SQL and Redis backend tests rely on:
owned servers really start, crash, restart and freeze; the proxy really delays, drops,
partitions and refuses; require_server skips or fails with a useful reason."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servers import (
    REQUIRE_SERVERS_VARIABLE,
    Server,
    TcpProxy,
    own_mysql,
    own_postgres,
    own_redis,
    process_tree,
    require_server,
    tcp_proxy,
)

# The fixtures this module uses, whether or not conftest.py imports them too.
FIXTURES = (own_postgres, own_mysql, own_redis, tcp_proxy)
OWN_SERVER_FIXTURES = {"postgresql": "own_postgres", "mysql": "own_mysql", "redis": "own_redis"}

ProxyFactory = Callable[[str, int], TcpProxy]


@pytest.fixture(params=["postgresql", "mysql", "redis"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each kind of owned server, through its own_* fixture."""
    owned: Server = request.getfixturevalue(OWN_SERVER_FIXTURES[request.param])
    return owned


def sql(server: Server, statement: str) -> list[tuple[Any, ...]]:
    """Run ``statement`` in its own transaction through SQLAlchemy at ``server.url``."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(server.url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def answer_on_new_connection(server: Server, timeout: float) -> None:
    """Raise unless the server answers a trivial query on a new connection within ``timeout``."""
    if server.kind == "redis":
        import redis

        client = redis.Redis.from_url(
            server.url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            client.ping()
        finally:
            client.close()
    elif server.kind == "mysql":
        import pymysql

        connection = pymysql.connect(
            host=server.host, port=server.port, user="root", database="test",
            connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout,
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            connection.close()
    else:
        # libpq has no read timeout (and a 2 s minimum connect timeout): wait in a thread.
        outcome: list[Exception | None] = []

        def query() -> None:
            try:
                sql(server, "SELECT 1")
            except Exception as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        thread = threading.Thread(target=query, daemon=True)
        thread.start()
        thread.join(timeout)
        if not outcome:
            raise TimeoutError(f"no answer within {timeout} s")
        if outcome[0] is not None:
            raise outcome[0]


def assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while any(process_tree(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if process_tree(p)]}"
        time.sleep(0.01)


def test_owned_server_answers_and_keeps_committed_data_across_kill_and_stop(
    server: Server,
) -> None:
    require_server(server.url)
    if server.kind == "redis":
        import redis

        client = redis.Redis.from_url(server.url, socket_timeout=5)
        client.set("kept", "yes")
        assert client.get("kept") == b"yes"
    else:
        sql(server, "CREATE TABLE kept (n INTEGER)")
        sql(server, "INSERT INTO kept (n) VALUES (42)")
    first_pid = server.pid
    tree = process_tree(server.pid)
    if server.kind == "postgresql":
        assert len(tree) > 1, "a postmaster without children?"

    server.kill()
    assert_gone(tree)
    assert not server.running
    with pytest.raises(Exception):  # noqa: B017 - refused, in each driver's words
        answer_on_new_connection(server, timeout=2)

    server.start()
    assert server.pid != first_pid
    if server.kind == "redis":
        assert client.ping()  # no persistence: it answers, with nothing kept
    else:
        assert sql(server, "SELECT n FROM kept") == [(42,)]

    tree = process_tree(server.pid)
    server.stop()
    assert_gone(tree)
    server.start()
    if server.kind != "redis":
        assert sql(server, "SELECT n FROM kept") == [(42,)]


def test_paused_server_answers_nobody_until_resumed(server: Server) -> None:
    # An open connection, so that a stalled server process behind it (a PostgreSQL backend,
    # a child of the postmaster) shows too.
    results: list[object] = []
    if server.kind == "redis":
        import redis

        client = redis.Redis.from_url(server.url, socket_timeout=10)
        client.ping()

        def use_open_connection() -> None:
            results.append(client.ping())
    else:
        from sqlalchemy import create_engine, text

        engine = create_engine(server.url)
        connection = engine.connect()
        connection.execute(text("SELECT 1"))

        def use_open_connection() -> None:
            results.append(connection.execute(text("SELECT 2")).scalar())

    server.pause()
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - a timeout, in each driver's words
        answer_on_new_connection(server, timeout=1)
    assert time.monotonic() - started >= 0.9, "failed fast: it should hang, as if frozen"
    waiting = threading.Thread(target=use_open_connection, daemon=True)
    waiting.start()
    waiting.join(1)
    assert waiting.is_alive() and not results

    server.resume()
    waiting.join(10)
    assert results == [True] if server.kind == "redis" else results == [2]
    answer_on_new_connection(server, timeout=10)
    if server.kind != "redis":
        connection.close()
        engine.dispose()


def test_require_server_names_what_to_install_and_fails_where_servers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as placeholder:  # a port nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        urls = {
            "apt-get install postgresql": f"postgresql+psycopg://postgres@127.0.0.1:{port}/test",
            "apt-get install mariadb-server": f"mysql+pymysql://root@127.0.0.1:{port}/test",
            "apt-get install redis-server": f"redis://127.0.0.1:{port}/0",
        }
        for advice, url in urls.items():
            monkeypatch.delenv(REQUIRE_SERVERS_VARIABLE, raising=False)
            with pytest.raises(pytest.skip.Exception, match=advice):
                require_server(url)
            monkeypatch.setenv(REQUIRE_SERVERS_VARIABLE, "1")
            with pytest.raises(pytest.fail.Exception, match=advice):
                require_server(url)
    require_server("sqlite:///:memory:")


def test_require_server_gives_up_on_a_frozen_server_after_2_s(
    own_redis: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REQUIRE_SERVERS_VARIABLE, raising=False)
    own_redis.pause()
    started = time.monotonic()
    with pytest.raises(pytest.skip.Exception, match="no answer within 2 s"):
        require_server(own_redis.url)
    assert 1.9 <= time.monotonic() - started < 5


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A TCP echo server in threads; it closes its side when the client closes its own."""

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                while data := self.request.recv(65536):
                    self.request.sendall(data)
            except OSError:  # reset by the proxy: what some tests do on purpose
                pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield str(host), int(port)
    server.shutdown()
    server.server_close()


def connect(proxy: TcpProxy, timeout: float = 5) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=timeout)


def echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def assert_broken(sock: socket.socket) -> None:
    """The connection was closed or reset under the client."""
    sock.settimeout(5)
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass


def test_proxy_forwards_a_large_stream_both_ways_and_passes_the_close_on(
    tcp_proxy: ProxyFactory, echo_server: tuple[str, int]
) -> None:
    proxy = tcp_proxy(*echo_server)
    payload = os.urandom(2 * 1024 * 1024)
    with connect(proxy) as client:

        def send() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        while chunk := client.recv(65536):  # ends when the server's close comes through
            received += chunk
        sender.join()
    assert received == payload


def test_proxy_latency_delays_each_direction(
    tcp_proxy: ProxyFactory, echo_server: tuple[str, int]
) -> None:
    proxy = tcp_proxy(*echo_server)
    with connect(proxy) as client:
        assert echo(client, b"warm up") == b"warm up"
        proxy.latency = 0.25
        started = time.monotonic()
        assert echo(client, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.5  # there and back
        proxy.latency = 0
        started = time.monotonic()
        assert echo(client, b"fast") == b"fast"
        assert time.monotonic() - started < 0.25


def test_proxy_drop_connections_breaks_open_connections_only(
    tcp_proxy: ProxyFactory, echo_server: tuple[str, int]
) -> None:
    proxy = tcp_proxy(*echo_server)
    with connect(proxy) as first, connect(proxy) as second:
        assert echo(first, b"1") == b"1" and echo(second, b"2") == b"2"
        assert proxy.connections == 2
        proxy.drop_connections()
        assert_broken(first)
        assert_broken(second)
    assert proxy.connections == 0
    with connect(proxy) as third:
        assert echo(third, b"3") == b"3"


def test_proxy_blackhole_stalls_open_and_new_connections_until_it_ends(
    tcp_proxy: ProxyFactory, echo_server: tuple[str, int]
) -> None:
    proxy = tcp_proxy(*echo_server)
    with connect(proxy) as before:
        assert echo(before, b"before") == b"before"
        proxy.blackhole()
        with connect(proxy, timeout=1) as during:  # accepted, as a partition would not tell
            before.settimeout(1)
            for sock in (before, during):
                sock.sendall(b"held")
                with pytest.raises(socket.timeout):
                    sock.recv(16)
            proxy.blackhole(False)
            for sock in (before, during):  # what was sent meanwhile gets through now
                sock.settimeout(5)
                assert sock.recv(16) == b"held"


def test_proxy_refuse_resets_new_connections_only(
    tcp_proxy: ProxyFactory, echo_server: tuple[str, int]
) -> None:
    proxy = tcp_proxy(*echo_server)
    with connect(proxy) as open_before:
        assert echo(open_before, b"accepted") == b"accepted"
        proxy.refuse()
        try:
            refused = connect(proxy)
        except ConnectionError:  # the reset can beat connect() to returning, on loopback
            pass
        else:
            with refused:
                assert_broken(refused)
        assert echo(open_before, b"still here") == b"still here"
        proxy.refuse(False)
        with connect(proxy) as accepted:
            assert echo(accepted, b"back") == b"back"


def test_proxy_url_for_points_urls_at_the_proxy(tcp_proxy: ProxyFactory) -> None:
    proxy = tcp_proxy("127.0.0.1", 5432)
    at = f"127.0.0.1:{proxy.port}"
    assert proxy.url_for("postgresql+psycopg://postgres@127.0.0.1:5432/test") == (
        f"postgresql+psycopg://postgres@{at}/test"
    )
    assert proxy.url_for("mysql+pymysql://root:p%40ss@db.example:3306/test?charset=utf8mb4") == (
        f"mysql+pymysql://root:p%40ss@{at}/test?charset=utf8mb4"
    )
    assert proxy.url_for("redis://localhost/0") == f"redis://{at}/0"


def test_proxy_breaks_and_freezes_real_database_clients(
    own_postgres: Server, own_redis: Server, tcp_proxy: ProxyFactory
) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    proxy = tcp_proxy(own_postgres.host, own_postgres.port)
    engine = create_engine(proxy.url_for(own_postgres.url))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
        proxy.drop_connections()
        with pytest.raises(DBAPIError):
            connection.execute(text("SELECT 1"))
    with engine.connect() as connection:  # the pool noticed; a new connection works
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()

    import redis

    proxy = tcp_proxy(own_redis.host, own_redis.port)
    client = redis.Redis.from_url(proxy.url_for(own_redis.url), socket_timeout=1)
    assert client.ping()
    proxy.blackhole()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    proxy.blackhole(False)
    assert client.ping()
    client.close()
