"""The SQL backend on real PostgreSQL, MariaDB and SQLite: elections, operator actions, faults.

The conformance suite (test_conformance.py) and the real-process scenarios (test_processes.py)
run on these databases too; this file covers what is particular to SQL. Tests that restart,
pause or cut off a server run their own server (tests/servers.py) on a free port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import unique_lease_name, wait_until
from servers import MYSQL_URL, POSTGRES_URL, Server, TcpProxy, require_server

from singleton_jobs import (
    ConfigurationError,
    LeaseRecord,
    LeaseStoreError,
    SQLElector,
    SQLLeaseStore,
)

# Sub-second, but with room for a database round trip on a noisy 2-core machine.
TIMINGS = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.1}
SLACK = 2.0


def lease_name() -> str:
    return unique_lease_name(f"sql-{time.time_ns()}")


def psycopg2_url(url: str) -> str:
    """The same PostgreSQL database through the other driver."""
    return str(sa.engine.make_url(url).set(drivername="postgresql+psycopg2"))


@pytest.fixture(params=["postgresql", "psycopg2", "mysql", "sqlite"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = {"postgresql": POSTGRES_URL, "psycopg2": psycopg2_url(POSTGRES_URL),
           "mysql": MYSQL_URL, "sqlite": f"sqlite:///{tmp_path / 'leases.db'}"}[request.param]
    require_server(url)
    return url


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> str:
    """A database reached over the network (not SQLite)."""
    url = {"postgresql": POSTGRES_URL, "mysql": MYSQL_URL}[request.param]
    require_server(url)
    return url


@pytest.fixture(params=["postgresql", "mysql"])
def own_server(request: pytest.FixtureRequest) -> Server:
    """A database server of this test's own, to restart, pause or cut off."""
    return request.getfixturevalue({"postgresql": "own_postgres", "mysql": "own_mysql"}[
        request.param])


class Fleet:
    """Electors on one lease, watched by a sampler: never two leaders, tokens only grow."""

    def __init__(self, url: str, name: str, count: int, table: str = "singleton_jobs_leases",
                 **timings: float) -> None:
        self.electors = [SQLElector(url, name, table=table, identity=f"replica-{i}",
                                    **{**TIMINGS, **timings}) for i in range(count)]
        self.tokens: list[tuple[str, int]] = []  # (identity, token) at every change seen
        self.violations: list[str] = []
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Fleet:
        for elector in self.electors:
            elector.start()
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._sampler.join(5)
        for elector in self.electors:
            elector.stop()

    def _sample(self) -> None:
        while not self._done.is_set():
            leaders = [e for e in self.electors if e.is_leader]
            if len(leaders) > 1:
                self.violations.append(f"two leaders: {[e.identity for e in leaders]}")
            for elector in leaders:
                token = elector.fencing_token
                if token is not None and (not self.tokens or self.tokens[-1] !=
                                          (elector.identity, token)):
                    if self.tokens and token <= self.tokens[-1][1]:
                        self.violations.append(f"token {token} of {elector.identity} after "
                                               f"{self.tokens[-1]}")
                    self.tokens.append((elector.identity, token))
            time.sleep(0.002)

    def leader(self, timeout: float = 10.0) -> SQLElector:
        found: list[SQLElector] = []

        def check() -> bool:
            found[:] = [e for e in self.electors if e.is_leader]
            return len(found) == 1

        assert wait_until(check, timeout), "no leader"
        return found[0]

    def seen_by_all(self, leader: SQLElector, timeout: float = 5.0) -> None:
        """Wait until every elector has read the leader's record (followers poll)."""
        assert wait_until(lambda: all(e.leader == leader.identity for e in self.electors),
                          timeout)

    def check(self) -> None:
        assert not self.violations, self.violations


def sql(url: str, *statements: str, **params: Any) -> None:
    """Run ``statements`` on one autocommit connection, as an operator at a SQL prompt."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), params)
    finally:
        engine.dispose()


# -- configuration ------------------------------------------------------------------------------

def test_import_singleton_jobs_does_not_import_sqlalchemy() -> None:
    code = "import sys, singleton_jobs; print('sqlalchemy' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "False"


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("sqlite://", ""), {}, "lease name '' must be non-empty"),
    (("sqlite://", "x" * 256), {}, "at most 255"),
    (("sqlite://", "a\tb"), {}, "control character"),
    (("sqlite://", "jobs"), {"table": "leases; DROP TABLE x"}, "not a plain SQL identifier"),
    (("not a url", "jobs"), {}, "database URL 'not a url' is not usable"),
    (("nosuchdb://host/db", "jobs"), {}, "is not usable"),
    (("mysql+mysqldb://root:secret@host/db", "jobs"), {}, "driver for"),
    ((42, "jobs"), {}, "must be a database URL or a SQLAlchemy Engine, not int"),
])
def test_bad_configuration_is_refused_with_the_fix(args: tuple[Any, ...], kwargs: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")) as caught:
        SQLElector(*args, **kwargs)
    assert "secret" not in str(caught.value)


def test_unreachable_database_is_a_store_error_not_a_traceback() -> None:
    driver = POSTGRES_URL.split("://", 1)[0]
    store = SQLLeaseStore(f"{driver}://nobody@127.0.0.1:1/none", lease_name())
    with pytest.raises(LeaseStoreError, match="could not read lease postgresql"):
        store.get(timeout=1)


def test_tables_are_created_once_with_the_documented_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'leases.db'}"
    SQLLeaseStore(url, "jobs").get(timeout=1)
    inspector = sa.inspect(sa.create_engine(url))
    assert [c["name"] for c in inspector.get_columns("singleton_jobs_leases")] == [
        "name", "holder", "lease_duration", "acquire_time_us", "renew_time_us", "transitions",
        "version"]
    assert [c["name"] for c in inspector.get_columns("singleton_jobs_leases_fence")] == [
        "name", "transitions"]
    page = (Path(__file__).parent.parent / "docs" / "backends" / "sql.md").read_text()
    assert "CREATE TABLE singleton_jobs_leases (" in page
    assert "CREATE TABLE singleton_jobs_leases_fence (" in page


def test_many_leases_share_one_table_without_interfering(sql_url: str) -> None:
    base = lease_name()
    with Fleet(sql_url, base + "-a", 2) as a, Fleet(sql_url, base + "-b", 2) as b:
        assert a.leader().fencing_token == 0
        assert b.leader().fencing_token == 0
    a.check()
    b.check()


def test_a_table_of_your_own_naming_mixed_case_included(sql_url: str) -> None:
    table = f"Leases_{time.time_ns() % 10**9}"
    name = lease_name()
    with Fleet(sql_url, name, 3, table=table) as fleet:
        first = fleet.leader()
        first.stop()  # a release, then a takeover: the statements written by hand on PostgreSQL
        second = fleet.leader()
        assert second.fencing_token == 1
    fleet.check()
    quote = "`" if sql_url.startswith("mysql") else '"'
    sql(sql_url, f"DROP TABLE {quote}{table}{quote}", f"DROP TABLE {quote}{table}_fence{quote}")


def test_lease_names_differing_only_in_case_are_different_leases(sql_url: str) -> None:
    name = lease_name()
    with Fleet(sql_url, name.upper(), 1) as upper, Fleet(sql_url, name.lower(), 1) as lower:
        assert upper.leader() and lower.leader()


def test_user_engine_is_used_and_left_as_it_was(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'leases.db'}")
    with SQLElector(engine, "jobs", **TIMINGS) as elector:
        assert elector.wait_for_leadership(10)
    assert engine.get_execution_options() == {}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT holder FROM singleton_jobs_leases")).scalar() == ""


# -- elections ----------------------------------------------------------------------------------

def test_one_leader_and_failover_after_a_crash(sql_url: str) -> None:
    with Fleet(sql_url, lease_name(), 3) as fleet:
        first = fleet.leader()
        token = first.fencing_token
        assert token is not None
        first.stop(release=False)  # as if the process died: the lease runs out
        stopped = time.monotonic()
        second = fleet.leader(timeout=TIMINGS["lease_duration"] + SLACK)
        took = time.monotonic() - stopped
        assert second is not first
        assert second.fencing_token == token + 1
        assert took >= TIMINGS["lease_duration"] - TIMINGS["renew_deadline"]
    fleet.check()


def test_release_hands_over_within_a_retry_period(sql_url: str) -> None:
    with Fleet(sql_url, lease_name(), 2, lease_duration=8.0, renew_deadline=5.0,
               retry_period=1.0) as fleet:
        first = fleet.leader()
        time.sleep(0.3)
        started = time.monotonic()
        first.stop()
        fleet.leader(timeout=3.0)
        handover = time.monotonic() - started
    fleet.check()
    assert handover <= 1.0 + 0.5, f"handover took {handover:.2f}s"


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_postgresql_notify_hands_over_in_a_fraction_of_the_retry_period(driver: str) -> None:
    url = POSTGRES_URL if driver == "psycopg" else psycopg2_url(POSTGRES_URL)
    require_server(url)
    handovers = []
    for _ in range(3):
        with Fleet(url, lease_name(), 2, lease_duration=8.0, renew_deadline=5.0,
                   retry_period=2.0) as fleet:
            first = fleet.leader()
            time.sleep(0.5)  # the follower is asleep in its 2 s poll interval now
            started = time.monotonic()
            first.stop()
            fleet.leader(timeout=3.0)
            handovers.append(time.monotonic() - started)
        fleet.check()
    # Polling alone would take up to 2 s; a notification takes a round trip.
    assert sorted(handovers)[1] < 0.2, handovers


def test_tokens_go_up_by_one_per_new_holder_while_followers_race(sql_url: str) -> None:
    """Every follower is woken by the release at once (NOTIFY on PostgreSQL): the losers of
    each race must leave no trace in the fence, or the next token would skip a number."""
    with Fleet(sql_url, lease_name(), 6) as fleet:
        tokens = []
        leader = fleet.leader()
        for _ in range(5):
            tokens.append(leader.fencing_token)
            leader.stop()
            leader = fleet.leader()
        tokens.append(leader.fencing_token)
    fleet.check()
    assert tokens == list(range(6)), tokens


def test_renew_and_poll_are_one_statement_each(sql_url: str) -> None:
    store = SQLLeaseStore(sql_url, lease_name())
    statements: list[str] = []
    record = LeaseRecord("a", 15.0, 1_767_000_000.0, 1_767_000_000.0, 0)
    version = store.create(record, timeout=5)
    store.get(timeout=5)
    engine = store._engine(5)
    sa.event.listen(engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: statements.append(statement))
    for i in range(5):
        version = store.update(record._replace(renew_time=1_767_000_001.0 + i), version,
                               timeout=5)
    assert len(statements) == 5 and all(s.lstrip().upper().startswith("UPDATE")
                                        for s in statements)
    statements.clear()
    for _ in range(5):
        store.get(timeout=5)
    assert len(statements) == 5 and all(s.lstrip().upper().startswith("SELECT")
                                        for s in statements)
    with engine.connect() as conn:  # and the driver adds no BEGIN/COMMIT: autocommit
        dbapi = conn.connection.dbapi_connection
        if sql_url.startswith("postgresql"):
            assert dbapi.autocommit is True
        elif sql_url.startswith("mysql"):
            assert dbapi.get_autocommit() is True
        else:
            assert dbapi.isolation_level is None  # sqlite3's autocommit


def test_mariadb_counts_one_statement_per_renew_and_per_poll(own_mysql: Server) -> None:
    # A server of its own: 'Questions' counts every client's statements, and other tests may
    # use a shared server at the same time.
    url = own_mysql.url
    monitor = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    store = SQLLeaseStore(url, lease_name())
    record = LeaseRecord("a", 15.0, 1_767_000_000.0, 1_767_000_000.0, 0)
    version = store.create(record, timeout=5)
    store.get(timeout=5)
    with monitor.connect() as conn:
        def questions() -> int:
            return int(conn.execute(sa.text("SHOW GLOBAL STATUS LIKE 'Questions'")).one()[1])

        before = questions()
        for i in range(20):
            version = store.update(record._replace(renew_time=1_767_000_001.0 + i), version,
                                   timeout=5)
        after_renews = questions()
        for _ in range(20):
            store.get(timeout=5)
        after_polls = questions()
    monitor.dispose()
    # Each SHOW is a statement too.
    assert (after_renews - before - 1) / 20 == 1.0
    assert (after_polls - after_renews - 1) / 20 == 1.0


# -- what operators do --------------------------------------------------------------------------

def test_deleted_row_makes_the_leader_step_down_and_tokens_keep_growing(sql_url: str) -> None:
    name = lease_name()
    with Fleet(sql_url, name, 3) as fleet:
        first = fleet.leader()
        token = first.fencing_token
        assert token is not None
        sql(sql_url, "DELETE FROM singleton_jobs_leases WHERE name = :name", name=name)
        deleted = time.monotonic()
        assert wait_until(lambda: not first.is_leader, TIMINGS["renew_deadline"] + SLACK)
        successor = fleet.leader(timeout=TIMINGS["lease_duration"] + 2 * SLACK)
        # Whoever held it may have led until its renew deadline: nobody takes over earlier.
        assert time.monotonic() - deleted >= TIMINGS["renew_deadline"]
        assert successor.fencing_token is not None and successor.fencing_token > token
    fleet.check()


def test_row_rewritten_by_hand_never_gives_two_leaders(sql_url: str) -> None:
    name = lease_name()
    with Fleet(sql_url, name, 3) as fleet:
        first = fleet.leader()
        token = first.fencing_token
        assert token is not None
        sql(sql_url, "UPDATE singleton_jobs_leases SET holder = 'operator', transitions = 0, "
                     "version = version + 7 WHERE name = :name", name=name)
        assert wait_until(lambda: not first.is_leader, TIMINGS["renew_deadline"] + SLACK)
        successor = fleet.leader(timeout=TIMINGS["lease_duration"] + 2 * SLACK)
        assert successor.fencing_token is not None and successor.fencing_token > token
    fleet.check()


def test_dropped_tables_come_back_and_the_election_recovers(sql_url: str) -> None:
    name = lease_name()
    # Tables of its own: dropping the default ones would pull them from under other tests
    # running at the same time against the same database.
    table = f"dropped_{uuid.uuid4().hex[:12]}"
    with Fleet(sql_url, name, 3, table=table) as fleet:
        first = fleet.leader()
        token = first.fencing_token
        assert token is not None
        # Replicas that saw the lease wait out its holder; a replica started after the drop
        # could not know of it (the documentation says so: drop the tables with the fleet stopped).
        fleet.seen_by_all(first)
        sql(sql_url, f"DROP TABLE {table}")
        sql(sql_url, f"DROP TABLE {table}_fence")
        assert wait_until(lambda: not first.is_leader, TIMINGS["renew_deadline"] + SLACK)
        successor = fleet.leader(timeout=TIMINGS["lease_duration"] + 3 * SLACK)
        assert successor.fencing_token is not None and successor.fencing_token > token
    fleet.check()


def test_store_that_saw_the_fence_reports_it_unknown_once_it_is_gone(sql_url: str) -> None:
    store = SQLLeaseStore(sql_url, lease_name())
    assert store.transitions_floor(timeout=5) == -1
    store.create(LeaseRecord("a", 15.0, 1.0, 1.0, 4), timeout=5)
    assert store.transitions_floor(timeout=5) == 4
    sql(sql_url, "DELETE FROM singleton_jobs_leases_fence WHERE name = :name",
        name=store.lease_name)
    assert store.transitions_floor(timeout=5) is None
    # A fresh process knows nothing of it: the lease looks new, as on a fleet's first start.
    assert SQLLeaseStore(sql_url, store.lease_name).transitions_floor(timeout=5) == -1


def test_killed_connections_cost_one_attempt_not_the_leadership(own_server: Server) -> None:
    # A server of its own: it kills every other connection to the database.
    sql_url = own_server.url
    with Fleet(sql_url, lease_name(), 2) as fleet:
        leader = fleet.leader()
        token = leader.fencing_token
        engine = sa.create_engine(sql_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for _ in range(3):
                if sql_url.startswith("postgresql"):
                    conn.execute(sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        "datname = current_database() AND pid <> pg_backend_pid() AND "
                        "backend_type = 'client backend'"))
                else:
                    ids = conn.execute(sa.text(
                        "SELECT id FROM information_schema.processlist WHERE "
                        "id <> CONNECTION_ID() AND db = DATABASE()")).scalars().all()
                    for id_ in ids:
                        try:
                            conn.execute(sa.text(f"KILL {int(id_)}"))
                        except sa.exc.DBAPIError:
                            pass  # gone already
                time.sleep(0.3)
        engine.dispose()
        time.sleep(0.3)
        assert fleet.leader() is leader and leader.fencing_token == token
    fleet.check()


# -- server faults ------------------------------------------------------------------------------

def test_server_restart_under_a_leader_recovers_with_growing_tokens(own_server: Server) -> None:
    with Fleet(own_server.url, lease_name(), 3) as fleet:
        token = fleet.leader().fencing_token
        assert token is not None
        own_server.restart()  # SIGKILL and start again: every connection dies
        leader = fleet.leader(timeout=TIMINGS["lease_duration"] + 4 * SLACK)
        assert leader.fencing_token is not None and leader.fencing_token >= token
        time.sleep(0.5)
    fleet.check()


def test_paused_server_makes_the_leader_step_down_in_time_and_recovers(
        own_server: Server) -> None:
    with Fleet(own_server.url, lease_name(), 3) as fleet:
        leader = fleet.leader()
        own_server.pause()
        try:
            paused = time.monotonic()
            # is_leader is a clock comparison: it turns False at the renew deadline even while
            # the renew call hangs on the stopped server.
            assert wait_until(lambda: not any(e.is_leader for e in fleet.electors),
                              TIMINGS["renew_deadline"] + 0.5)
            assert time.monotonic() - paused <= TIMINGS["renew_deadline"] + 0.5
            time.sleep(2 * TIMINGS["lease_duration"])
        finally:
            own_server.resume()
        fleet.leader(timeout=TIMINGS["lease_duration"] + 4 * SLACK)
        assert leader is not None
    fleet.check()


def test_statement_on_a_partitioned_network_fails_within_its_timeout(
        own_server: Server, tcp_proxy: Callable[[str, int], TcpProxy]) -> None:
    proxy = tcp_proxy(own_server.host, own_server.port)
    store = SQLLeaseStore(proxy.url_for(own_server.url), lease_name())
    assert store.get(timeout=2) is None  # a pooled connection exists now
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(LeaseStoreError):
        store.get(timeout=2)
    assert time.monotonic() - started < 2 + 1.5
    proxy.blackhole(False)
    assert wait_until(lambda: _answers(store), 10)


def _answers(store: SQLLeaseStore) -> bool:
    try:
        store.get(timeout=2)
    except LeaseStoreError:
        return False
    return True


def test_latency_past_the_renew_deadline_ends_leadership_and_recovers(
        own_server: Server, tcp_proxy: Callable[[str, int], TcpProxy]) -> None:
    proxy = tcp_proxy(own_server.host, own_server.port)
    with Fleet(proxy.url_for(own_server.url), lease_name(), 2) as fleet:
        fleet.leader()
        proxy.latency = 0.05  # well within the deadline: leadership holds
        time.sleep(1.0)
        leader = fleet.leader(timeout=1)
        proxy.latency = 1.0   # every round trip outlives the 0.6 s renew deadline
        assert wait_until(lambda: not leader.is_leader, TIMINGS["renew_deadline"] + SLACK)
        proxy.latency = 0.0
        fleet.leader(timeout=TIMINGS["lease_duration"] + 4 * SLACK)
    fleet.check()


def test_dropped_connections_cost_no_leadership(
        own_server: Server, tcp_proxy: Callable[[str, int], TcpProxy]) -> None:
    proxy = tcp_proxy(own_server.host, own_server.port)
    with Fleet(proxy.url_for(own_server.url), lease_name(), 2) as fleet:
        leader = fleet.leader()
        token = leader.fencing_token
        for _ in range(3):
            proxy.drop_connections()
            time.sleep(0.3)
        assert fleet.leader() is leader and leader.fencing_token == token
    fleet.check()


def test_read_only_database_ends_leadership_until_it_is_writable(own_postgres: Server) -> None:
    url = own_postgres.url
    with Fleet(url, lease_name(), 2) as fleet:
        leader = fleet.leader()
        sql(url, "ALTER SYSTEM SET default_transaction_read_only = on")
        sql(url, "SELECT pg_reload_conf()")
        try:
            assert wait_until(lambda: not leader.is_leader, TIMINGS["renew_deadline"] + SLACK)
            time.sleep(TIMINGS["lease_duration"])
            assert not any(e.is_leader for e in fleet.electors)
        finally:
            sql(url, "SET default_transaction_read_only = off",
                "ALTER SYSTEM RESET default_transaction_read_only")
            sql(url, "SELECT pg_reload_conf()")
        fleet.leader(timeout=TIMINGS["lease_duration"] + 2 * SLACK)
    fleet.check()


def test_full_database_costs_leadership_never_safety_and_recovers(own_postgres: Server) -> None:
    """The lease table's tablespace on a real 512 KiB tmpfs, filled up before the lease exists:
    nobody can write it, so nobody leads and nothing raises; room made, a leader follows."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root (CI runs as root)")
    # Outside pytest's root-only temporary directory: the server's user must reach it.
    space = Path(tempfile.mkdtemp(prefix="singleton-jobs-tablespace-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(space)], check=True)
    try:
        owner = os.stat(f"/proc/{own_postgres.pid}").st_uid  # the user the server runs as
        os.chown(space, owner, -1)
        url = own_postgres.url
        sql(url, f"CREATE TABLESPACE small LOCATION '{space}'",
            "ALTER DATABASE postgres SET default_tablespace = small",
            "CREATE TABLE filler (x text) TABLESPACE small")
        filled = False
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for _ in range(10_000):
                try:
                    conn.execute(sa.text("INSERT INTO filler SELECT repeat('x', 2000) "
                                         "FROM generate_series(1, 20)"))
                except sa.exc.OperationalError as exc:
                    filled = "No space left on device" in str(exc)
                    break
        engine.dispose()
        assert filled
        with Fleet(url, lease_name(), 2) as fleet:
            time.sleep(TIMINGS["lease_duration"] + 1.0)
            assert not any(e.is_leader for e in fleet.electors)
            assert all(e.running for e in fleet.electors)
            sql(url, "DROP TABLE filler")
            fleet.leader(timeout=TIMINGS["lease_duration"] + 2 * SLACK)
        fleet.check()
    finally:
        subprocess.run(["umount", "-l", str(space)], check=True)
        space.rmdir()


def test_elector_created_before_fork_leads_in_the_child_on_connections_of_its_own(
        sql_url: str) -> None:
    """A pre-fork server builds the elector in its master, which already used the database
    (its pool holds a connection); a worker starts it. The worker must open its own
    connections: two processes on one socket would read each other's answers."""
    code = f"""
import os, sys
from singleton_jobs import SQLElector
elector = SQLElector({sql_url!r}, {lease_name()!r}, lease_duration=2, renew_deadline=1,
                     retry_period=0.1)
assert elector.store.get(timeout=5) is None      # the master's pool holds a connection now
pid = os.fork()
if pid == 0:
    elector.start()
    led = elector.wait_for_leadership(10)
    print("child", led, elector.fencing_token, flush=True)
    elector.stop()
    os._exit(0)
os.waitpid(pid, 0)
record, _ = elector.store.get(timeout=5)          # the master's connection still answers it
print("parent", repr(record.holder), record.transitions, flush=True)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["child True 0", "parent '' 0"], result.stdout


def test_killed_listen_connection_comes_back_and_still_wakes_followers(
        own_postgres: Server) -> None:
    url = own_postgres.url  # a server of its own: it kills every LISTEN connection there
    with Fleet(url, lease_name(), 2, lease_duration=8.0, renew_deadline=5.0,
               retry_period=2.0) as fleet:
        first = fleet.leader()
        time.sleep(0.5)
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            killed = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                "datname = current_database() AND pid <> pg_backend_pid() AND "
                "query LIKE 'LISTEN%'")).scalar()
        engine.dispose()
        assert killed >= 1
        time.sleep(1.0)  # the listener reconnects within a fraction of a second
        started = time.monotonic()
        first.stop()
        fleet.leader(timeout=3.0)
        handover = time.monotonic() - started
    fleet.check()
    assert handover < 0.5, f"handover took {handover:.2f}s: the follower polled"
