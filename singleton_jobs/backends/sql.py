"""Lease in a SQL table: PostgreSQL, MySQL/MariaDB or SQLite, through SQLAlchemy Core (1.4, 2.x).

One table holds any number of named leases, one row each; a second table keeps each lease's
fencing floor apart from it, so that deleting or rewriting a lease row never lets a token repeat::

    CREATE TABLE singleton_jobs_leases (
        name            VARCHAR(255) PRIMARY KEY,
        holder          VARCHAR(253) NOT NULL,
        lease_duration  DOUBLE PRECISION NOT NULL,
        acquire_time_us BIGINT NOT NULL,
        renew_time_us   BIGINT NOT NULL,
        transitions     BIGINT NOT NULL,
        version         BIGINT NOT NULL
    );
    CREATE TABLE singleton_jobs_leases_fence (
        name            VARCHAR(255) PRIMARY KEY,
        transitions     BIGINT NOT NULL
    );

Both are created if missing (MySQL: ``utf8mb4`` with the binary collation, so that lease names
compare exactly).

Guarantees: every change is a compare-and-swap on ``version``: a leader's renew is one
conditional ``UPDATE``, a follower's poll one ``SELECT`` (which reads the fence too), a creation
an ``INSERT`` that loses on the primary key. A record starts at a random version, so a row
deleted and created again never repeats a version an old leader still holds. Statements run in
autocommit mode, one round trip each; the fence and the record change together or not at all:
a takeover raises the fence in the same transaction (on PostgreSQL, the same statement), and a
creation claims the fence and inserts the row in one transaction, refused once the fence reached
its token. So tokens go up by one per new holder, and never repeat. Expiry is never the
database's clock: the engine judges it on its own.

Bounds: each call's ``timeout`` bounds it. On an engine built here from a URL, the driver's
connect timeout and the server's statement and lock timeouts are set from it; on every engine, a
watchdog shuts a connection's socket down when a statement outlives its time (a paused server, a
partitioned network), which fails the call, and the connection is thrown away. A failed call is
a :class:`~singleton_jobs.errors.LeaseStoreError`: the elector retries with a fresh connection.
Connections are checked out for one call and returned at once, never held across a sleep.

On PostgreSQL a release sends ``NOTIFY`` in the statement that releases; followers ``LISTEN`` on
one extra connection per process and database, and try at once instead of at their next poll.

Caveats: dropping both tables while replicas run loses the fencing floor; stores that had seen
it then wait one lease duration before creating the lease again, but a process started in that
window cannot know. Delete or rewrite rows freely; drop the tables only with the fleet stopped.
An :class:`~sqlalchemy.engine.Engine` passed in is used as it is (connect timeout, pool), so
its own connect timeout applies to connecting.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import logging
import math
import os
import random
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..election import Elector
from ..errors import ConfigurationError, LeaseStoreError
from ..lease import LeaseRecord, holder_problem, unreadable_record
from ..store import LeaseStore, Snapshot, Version, once_name

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the SQL lease backend needs SQLAlchemy: pip install "
                      "'singleton_jobs[sql]' (and the driver for your database)") from exc

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection, Engine

logger = logging.getLogger(__name__)

DEFAULT_TABLE = "singleton_jobs_leases"
MAX_NAME_LENGTH = 255
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,56}")
#: Random initial versions stay far below BIGINT's limit: a lease renewed every 10 ms for a
#: thousand years still fits.
_VERSION_BITS = 52


def lease_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a lease row, or None when it can."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not name or name != name.strip():
        return "must be non-empty, without leading or trailing whitespace"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed"
    if any(not ch.isprintable() for ch in name):
        return "contains a control character"
    return None


def _tables(table: str) -> tuple[sa.Table, sa.Table]:
    metadata = sa.MetaData()
    options: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
    leases = sa.Table(
        table, metadata,
        sa.Column("name", sa.String(MAX_NAME_LENGTH), primary_key=True),
        sa.Column("holder", sa.String(253), nullable=False),
        sa.Column("lease_duration", sa.Float(53), nullable=False),
        sa.Column("acquire_time_us", sa.BigInteger, nullable=False),
        sa.Column("renew_time_us", sa.BigInteger, nullable=False),
        sa.Column("transitions", sa.BigInteger, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        **options)
    fence = sa.Table(
        f"{table}_fence", metadata,
        sa.Column("name", sa.String(MAX_NAME_LENGTH), primary_key=True),
        sa.Column("transitions", sa.BigInteger, nullable=False),
        **options)
    return leases, fence


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _parse_row(row: Any) -> LeaseRecord:
    """The record in a row; garbage written by hand reads as unreadable, never raises."""
    holder, duration, acquired, renewed, transitions = row[:5]
    counter = transitions if isinstance(transitions, int) and transitions >= 0 else 0
    try:
        if not isinstance(holder, str) or holder_problem(holder) is not None:
            raise ValueError("bad holder")
        duration = float(duration)
        if not all(isinstance(v, int) and v >= 0 for v in (acquired, renewed, transitions)):
            raise ValueError("bad number")
        if not math.isfinite(duration) or duration < 0:
            raise ValueError("bad duration")
    except (TypeError, ValueError):
        return unreadable_record(counter)
    return LeaseRecord(holder, duration, acquired / 1_000_000, renewed / 1_000_000, transitions)


# -- engines ------------------------------------------------------------------------------------

#: SQLAlchemy 1.4 commits after data-changing statements outside its own transactions.
_LIBRARY_AUTOCOMMIT = sa.__version__.startswith("1.")

_engines: dict[tuple[str, int, int], Engine] = {}
_engines_lock = threading.Lock()


def _connect_args(url: URL, timeout: float) -> dict[str, Any]:
    """Driver and server timeouts for an engine built here, from one call's time budget."""
    seconds = max(1, math.ceil(timeout))
    millis = max(1, round(timeout * 1000))
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend == "postgresql" and driver in ("psycopg", "psycopg2", "psycopg2cffi"):
        return {"connect_timeout": max(2, seconds),  # libpq's minimum
                "options": f"-c statement_timeout={millis} -c lock_timeout={millis} "
                           f"-c idle_in_transaction_session_timeout={millis * 2}",
                "keepalives": 1, "keepalives_idle": seconds, "keepalives_interval": 1,
                "keepalives_count": 3, "tcp_user_timeout": millis}
    if backend in ("mysql", "mariadb") and driver in ("pymysql", "mysqldb"):
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds,
                "init_command": f"SET SESSION innodb_lock_wait_timeout = {seconds}"}
    if backend == "sqlite":
        return {"timeout": timeout}
    return {}


def _shared_engine(url: str | URL, timeout: float) -> Engine:
    """One engine per database URL, call budget and process: electors share a small pool."""
    key = (str(url) if isinstance(url, str) else url.render_as_string(hide_password=False),
           os.getpid(), max(1, round(timeout * 1000)))
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            parsed = sa.engine.make_url(url)
            # SQLite's default pool has no size (SQLAlchemy 1.4: NullPool for files).
            sizes = ({} if parsed.get_backend_name() == "sqlite" else
                     {"pool_size": 5, "max_overflow": 20, "pool_timeout": timeout})
            engine = sa.create_engine(
                parsed, connect_args=_connect_args(parsed, timeout), isolation_level="AUTOCOMMIT",
                # Autocommit leaves nothing to roll back: no ROLLBACK round trip per call.
                pool_reset_on_return=None, **sizes)
            # Nor at the end of each call: SQLAlchemy ends its implicit transaction with a
            # DB-API rollback() (1.4: commit()), which PyMySQL sends to the server even in
            # autocommit mode, where every statement committed itself already.
            engine.dialect.do_rollback = _no_round_trip  # type: ignore[method-assign]
            engine.dialect.do_commit = _no_round_trip  # type: ignore[method-assign]
            _engines[key] = engine
        return engine


def _no_round_trip(dbapi_connection: Any) -> None:
    """Every statement of an autocommit connection committed itself: nothing to end."""


def _dbapi_connection(conn: Connection) -> Any:
    fairy = conn.connection
    return getattr(fairy, "dbapi_connection", None) or getattr(fairy, "connection", None)


def _socket_fd(dbapi: Any) -> int | None:
    """The socket under a DB-API connection, for the watchdog; None for SQLite and unknowns."""
    sock = getattr(dbapi, "_sock", None)  # PyMySQL
    if sock is not None:
        try:
            return int(sock.fileno())
        except (OSError, ValueError):
            return None
    fileno = getattr(dbapi, "fileno", None)  # psycopg, psycopg2, MySQLdb
    if callable(fileno):
        try:
            fd = fileno()
        except Exception:  # noqa: BLE001 - closed or not a socket connection
            return None
        return fd if isinstance(fd, int) and fd >= 0 else None
    return None


class _Watchdog:
    """One thread per process that breaks the socket of a statement past its deadline.

    Shutting a socket down wakes a thread blocked reading it with an error, whatever the
    driver; a paused server or a partitioned network then costs one call's budget, not forever.
    """

    def __init__(self) -> None:
        self._tickets = itertools.count()
        self._reset()

    def _reset(self) -> None:
        """A fresh state: at creation, and in a forked child (the parent's thread and the state
        of its lock did not come along)."""
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, int]] = []
        self._armed: dict[int, int] = {}  # ticket -> fd
        self._fired: set[int] = set()
        self._started = False

    def arm(self, fd: int, seconds: float) -> int:
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, daemon=True,
                                 name="singleton_jobs-sql-watchdog").start()
            ticket = next(self._tickets)
            self._armed[ticket] = fd
            heapq.heappush(self._heap, (time.monotonic() + seconds, ticket, fd))
            self._lock.notify()
            return ticket

    def disarm(self, ticket: int) -> bool:
        """Stop watching; True if the deadline had passed and the socket was shut down."""
        with self._lock:
            self._armed.pop(ticket, None)
            if ticket in self._fired:
                self._fired.discard(ticket)
                return True
            return False

    def _run(self) -> None:
        with self._lock:
            while True:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._lock.wait()
                    continue
                deadline, ticket, fd = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._lock.wait(delay)
                    continue
                heapq.heappop(self._heap)
                del self._armed[ticket]
                self._fired.add(ticket)
                # Under the lock: the caller cannot return the connection (and its fd cannot be
                # closed and reused) before this is done.
                try:
                    with socket.socket(fileno=os.dup(fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


_watchdog = _Watchdog()


def _after_fork_in_child() -> None:
    global _engines_lock
    _engines_lock = threading.Lock()
    _watchdog._reset()
    _listeners.clear()  # their threads stayed in the parent


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the store ----------------------------------------------------------------------------------

class SQLLeaseStore(LeaseStore):
    """The lease ``name`` in ``table`` of the database at ``url_or_engine``.

    ``url_or_engine`` is a SQLAlchemy URL (``postgresql+psycopg://app@db/app``,
    ``mysql+pymysql://app@db/app``, ``sqlite:////var/lib/app/leases.db``) or an
    :class:`~sqlalchemy.engine.Engine`. Stores of one process built from the same URL share one
    engine and its pool.

    :raises ConfigurationError: an unusable name, table name or URL; the message says which.
    """

    def __init__(self, url_or_engine: str | URL | Engine, name: str, *,
                 table: str = DEFAULT_TABLE) -> None:
        problem = lease_name_problem(name)
        if problem is not None:
            raise ConfigurationError(f"lease name {name!r} {problem}; pass the name every "
                                     "replica of this program shares, e.g. 'report-mailer'")
        if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
            raise ConfigurationError(f"table {table!r} is not a plain SQL identifier; use letters, "
                                     "digits and '_' (at most 57), e.g. 'singleton_jobs_leases'")
        self._engine_given: Engine | None = None
        self._url: str | URL | None = None
        if isinstance(url_or_engine, sa.engine.Engine):
            # Autocommit on a copy that shares the user's pool: the user's engine is unchanged.
            self._engine_given = url_or_engine.execution_options(isolation_level="AUTOCOMMIT")
            url = url_or_engine.url
        elif isinstance(url_or_engine, (str, sa.engine.URL)):
            try:
                url = sa.engine.make_url(url_or_engine)
                dialect = url.get_dialect()
                # Import the driver now: a missing one is a setting to fix, not a failed renew.
                load_driver: Any = getattr(dialect, "import_dbapi", None) or dialect.dbapi
                load_driver()
            except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ValueError) as exc:
                raise ConfigurationError(
                    f"database URL {_safe_url(url_or_engine)!r} is not usable: {exc}; pass a "
                    "SQLAlchemy URL such as 'postgresql+psycopg://user@host/db', "
                    "'mysql+pymysql://user@host/db' or 'sqlite:////path/leases.db'") from exc
            except ImportError as exc:
                raise ConfigurationError(
                    f"the driver for {_safe_url(url_or_engine)!r} is not installed ({exc}); "
                    "install it, e.g. pip install 'psycopg[binary]' or PyMySQL") from exc
            self._url = url_or_engine
        else:
            raise ConfigurationError(f"url_or_engine must be a database URL or a SQLAlchemy "
                                     f"Engine, not {type(url_or_engine).__name__}")
        self._target = url_or_engine
        self.lease_name = name
        self.table_name = table
        self.dialect = url.get_backend_name()
        self._display = f"{url.render_as_string(hide_password=True)} {table}/{name}"
        self._leases, self._fence = _tables(table)
        self._tables_ready = False
        self._fence_written = -1
        self._fence_seen = False        # a fence row was read or written by this store
        self._pid = os.getpid()
        self._select_fence = sa.select(self._fence.c.transitions).where(
            self._fence.c.name == name)
        # A poll reads the fence too, in the same statement: a takeover right after it needs
        # no second read, and the floor is consistent with the record it was read with.
        self._select = sa.select(
            self._leases.c.holder, self._leases.c.lease_duration, self._leases.c.acquire_time_us,
            self._leases.c.renew_time_us, self._leases.c.transitions, self._leases.c.version,
            self._select_fence.scalar_subquery().label("fence"),
        ).where(self._leases.c.name == name)
        self._floor_read: int | None | _Unset = _UNSET  # the fence of the last get(), once
        self._statements = _Statements(self._leases, self._fence, self.dialect)

    def sibling(self, key: str) -> SQLLeaseStore:
        """The row ``<name>-once-<key>-<hash>`` of the same table, on the same engine."""
        return SQLLeaseStore(self._target, once_name(self.lease_name, key, MAX_NAME_LENGTH),
                             table=self.table_name)

    @property
    def name(self) -> str:
        return self._display

    def after_fork(self) -> None:
        """Pooled connections belong to the parent: the child opens its own."""
        if self._engine_given is not None:
            try:
                self._engine_given.dispose(close=False)  # SQLAlchemy >= 1.4.33
            except TypeError:  # pragma: no cover - older 1.4
                self._engine_given.pool = self._engine_given.pool.recreate()
        # Engines built from a URL are per process already (see _shared_engine).
        self._fence_written = -1
        self._pid = os.getpid()

    # -- LeaseStore ---------------------------------------------------------------------------

    def get(self, *, timeout: float = 10.0) -> Snapshot | None:
        """One ``SELECT``, which reads the fence as well (see :meth:`transitions_floor`)."""
        self._floor_read = _UNSET
        with self._connection(timeout, "read") as conn:
            row = self._execute(conn, timeout, self._select).first()
        if row is None:
            return None
        self._floor_read = self._floor(row[6])
        return _parse_row(row), row[5]

    def transitions_floor(self, *, timeout: float = 10.0) -> int | None:
        """The fence row's counter: -1 if there is none, None if it vanished or is garbage.

        Right after a :meth:`get` that found the record, the fence that ``get`` read with it:
        fence and record only ever change together, in one transaction.
        """
        floor, self._floor_read = self._floor_read, _UNSET
        if not isinstance(floor, _Unset):
            return floor
        with self._connection(timeout, "read the fence of") as conn:
            row = self._execute(conn, timeout, self._select_fence).first()
        return self._floor(None if row is None else row[0])

    def create(self, record: LeaseRecord, *, timeout: float = 10.0) -> Version | None:
        """Insert the row; None if it exists, or if the fence already reached the token.

        One transaction: the fence is claimed (raised to the token, or the creation refused)
        and the row inserted together, so of two creations with one token after a deletion
        only one gets it, and a refused creation leaves no trace.
        """
        self._floor_read = _UNSET
        version = random.getrandbits(_VERSION_BITS)
        insert = sa.insert(self._leases).values(name=self.lease_name, version=version,
                                                **self._values(record))

        def body(conn: Connection) -> bool:
            if not self._claim_fence(conn, timeout, record.transitions):
                return False
            try:
                self._execute(conn, timeout, insert)
            except sa_exc.IntegrityError:
                return False
            return True

        with self._connection(timeout, "create") as conn:
            # A fence row to lock, made beforehand in its own statement: on InnoDB, creators
            # that lock the gap where a missing row would go and then insert it deadlock.
            try:
                self._execute(conn, timeout, sa.insert(self._fence).values(
                    name=self.lease_name, transitions=_NO_TOKEN))
            except sa_exc.IntegrityError:
                pass  # it exists
            if not self._transaction(conn, timeout, body):
                return None
        self._wrote_fence(record.transitions)
        return version

    def update(self, record: LeaseRecord, version: Version, *,
               timeout: float = 10.0) -> Version | None:
        """A renew is one ``UPDATE``; a new term raises the fence in the same transaction (on
        PostgreSQL in the same statement), and a release sends ``NOTIFY`` in the same statement.
        """
        self._floor_read = _UNSET
        if version is not None and not isinstance(version, int):
            return None  # a version from another store: it cannot match
        new_version = 0 if version is None else version + 1
        values = {**self._values(record), "version": new_version}
        statements = self._statements
        new_term = record.transitions > self._fence_written
        with self._connection(timeout, "write") as conn:
            if new_term and statements.update_raising_fence is not None and version is not None:
                done = self._execute(conn, timeout, statements.update_raising_fence, {
                    **values, "name": self.lease_name, "expected": version}).rowcount == 1
            elif new_term:
                def body(conn: Connection) -> bool:
                    if self._execute(conn, timeout, statements.update(self.lease_name, version),
                                     values).rowcount != 1:
                        return False
                    self._claim_fence(conn, timeout, record.transitions, refuse=False)
                    return True

                done = self._transaction(conn, timeout, body)
            elif record.released and statements.release_notifying is not None \
                    and version is not None:
                done = len(self._execute(conn, timeout, statements.release_notifying, {
                    **values, "name": self.lease_name, "expected": version,
                    "channel": self.table_name}).fetchall()) == 1
            else:
                done = self._execute(conn, timeout, statements.update(self.lease_name, version),
                                     values).rowcount == 1
        if not done:
            return None
        if new_term:
            self._wrote_fence(record.transitions)
        return new_version

    def watch(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        if self.dialect != "postgresql":
            return None
        return _listener(self._engine(10.0), self.table_name).add(self.lease_name, callback)

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _values(record: LeaseRecord) -> dict[str, Any]:
        return {"holder": record.holder, "lease_duration": record.lease_duration,
                "acquire_time_us": _micros(record.acquire_time),
                "renew_time_us": _micros(record.renew_time), "transitions": record.transitions}

    def _engine(self, timeout: float) -> Engine:
        if self._engine_given is not None:
            return self._engine_given
        assert self._url is not None
        return _shared_engine(self._url, timeout)

    @contextmanager
    def _connection(self, timeout: float, action: str) -> Iterator[Connection]:
        """A pooled connection for one call; any database failure becomes LeaseStoreError."""
        step = ""
        try:
            engine = self._engine(timeout)
            if not self._tables_ready:
                step = " (while creating its tables)"
                self._create_tables(engine, timeout)
                step = ""
            with engine.connect() as conn:
                if _LIBRARY_AUTOCOMMIT:
                    # SQLAlchemy 1.4 would COMMIT after each INSERT or UPDATE on its own, in
                    # the middle of our explicit transactions.
                    conn = conn.execution_options(autocommit=False)
                yield conn
        except sa_exc.SQLAlchemyError as exc:
            self._tables_ready = False  # dropped tables come back at the next call
            raise LeaseStoreError(f"could not {action} lease {self.name}{step}: "
                                  f"{_short_error(exc)}") from exc
        except OSError as exc:
            raise LeaseStoreError(f"could not {action} lease {self.name}{step}: {exc}") from exc

    def _create_tables(self, engine: Engine, timeout: float) -> None:
        for attempt in (1, 2, 3):
            try:
                with engine.connect() as conn, self._watched(conn, timeout):
                    self._leases.metadata.create_all(conn, checkfirst=True)
                break
            except sa_exc.SQLAlchemyError:
                # Replicas starting together: another one created a table between our check
                # and our CREATE; look again (each look may lose the race for one table).
                if attempt == 3:
                    raise
        self._tables_ready = True

    def _execute(self, conn: Connection, timeout: float, statement: Any,
                 parameters: dict[str, Any] | None = None) -> Any:
        with self._watched(conn, timeout):
            if parameters is None:
                return conn.execute(statement)
            return conn.execute(statement, parameters)

    @contextmanager
    def _watched(self, conn: Connection, timeout: float) -> Iterator[None]:
        fd = _socket_fd(_dbapi_connection(conn))
        if fd is None:
            yield
            return
        ticket = _watchdog.arm(fd, timeout)
        try:
            yield
        finally:
            if _watchdog.disarm(ticket):
                conn.invalidate()  # its socket is shut: never hand it out again
                raise LeaseStoreError(f"lease {self.name}: no answer within {timeout:g}s")

    def _floor(self, value: object) -> int | None:
        if value is None or value == _NO_TOKEN:
            # A fence this store saw is gone (tables dropped or emptied): whoever held the
            # lease may still lead, and nothing tells how far its token went.
            return None if self._fence_seen else -1
        self._fence_seen = True
        return value if isinstance(value, int) and value >= 0 else None

    def _wrote_fence(self, transitions: int) -> None:
        self._fence_seen = True
        self._fence_written = max(self._fence_written, transitions)

    def _transaction(self, conn: Connection, timeout: float,
                     body: Callable[[Connection], bool]) -> bool:
        """Run ``body`` in one transaction: committed if it returns True, else rolled back.

        The connection is in autocommit mode, so the transaction is explicit. If anything
        fails half-way the connection is thrown away: the server rolls back what it began.
        """
        try:
            self._execute(conn, timeout, self._statements.begin)
            done = body(conn)
            self._execute(conn, timeout, _COMMIT if done else _ROLLBACK)
        except BaseException:
            conn.invalidate()
            raise
        return done

    def _claim_fence(self, conn: Connection, timeout: float, transitions: int, *,
                     refuse: bool = True) -> bool:
        """Inside a transaction: raise the fence to ``transitions``. With ``refuse`` (a
        creation), return False instead if it already holds ``transitions`` or more."""
        fence = self._fence
        row = self._execute(conn, timeout, self._select_fence.with_for_update()).first()
        if row is None:
            try:
                self._execute(conn, timeout, sa.insert(fence).values(
                    name=self.lease_name, transitions=transitions))
            except sa_exc.IntegrityError:
                return False  # created meanwhile by another replica's transaction
            return True
        if isinstance(row[0], int) and row[0] >= transitions:
            return not refuse
        self._execute(conn, timeout, sa.update(fence).where(fence.c.name == self.lease_name)
                      .values(transitions=transitions))
        return True


class _Unset:
    """No fence read by the last get(): transitions_floor() must ask."""


_UNSET = _Unset()
#: A fence row that no record has carried a token of yet.
_NO_TOKEN = -1
_COMMIT = sa.text("COMMIT")
_ROLLBACK = sa.text("ROLLBACK")


class _Statements:
    """The statements of one table's writes, some of them particular to a dialect."""

    def __init__(self, leases: sa.Table, fence: sa.Table, dialect: str) -> None:
        self._leases = leases
        # SQLite takes its write lock at BEGIN IMMEDIATE: two transactions that both read
        # first and then write would otherwise fail on upgrading their locks.
        self.begin = sa.text("BEGIN IMMEDIATE" if dialect == "sqlite" else "BEGIN")
        self.update_raising_fence: sa.TextClause | None = None
        self.release_notifying: sa.TextClause | None = None
        if dialect == "postgresql":
            # Quoted, as SQLAlchemy quotes a mixed-case name: unquoted, PostgreSQL folds case.
            table, fence_table = f'"{leases.name}"', f'"{fence.name}"'
            columns = ", ".join(f"{c} = :{c}" for c in _WRITTEN)
            update = (f"UPDATE {table} SET {columns} "
                      "WHERE name = :name AND version = :expected")
            # One statement for a takeover: the fence rises with the record or not at all.
            self.update_raising_fence = sa.text(
                f"WITH changed AS ({update} RETURNING transitions) "
                f"INSERT INTO {fence_table} (name, transitions) "
                "SELECT :name, transitions FROM changed "
                f"ON CONFLICT (name) DO UPDATE SET transitions = "
                f"GREATEST({fence_table}.transitions, EXCLUDED.transitions)")
            # And one for a release: followers are told in the same round trip.
            self.release_notifying = sa.text(
                f"WITH changed AS ({update} RETURNING name) "
                "SELECT pg_notify(:channel, name) FROM changed")

    def update(self, name: str, version: int | None) -> Any:
        leases = self._leases
        matches = leases.c.version.is_(None) if version is None else leases.c.version == version
        return sa.update(leases).where(leases.c.name == name, matches)


_WRITTEN = ("holder", "lease_duration", "acquire_time_us", "renew_time_us", "transitions",
            "version")


def _safe_url(url: object) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - unparseable: show it unless it may hold a password
        if isinstance(url, str) and "@" not in url and len(url) <= 80:
            return url
        return "<unparseable URL>"


def _short_error(exc: sa_exc.SQLAlchemyError) -> str:
    """The driver's message without SQLAlchemy's statement dump and help links."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return " ".join(text.split())[:300] or type(exc).__name__


# -- LISTEN/NOTIFY ------------------------------------------------------------------------------

class _Listener:
    """One ``LISTEN`` connection per process, database and table; wakes the stores' electors."""

    def __init__(self, engine: Engine, channel: str) -> None:
        self._engine = engine
        self._channel = channel
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._connected_before = False

    def add(self, name: str, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._callbacks.setdefault(name, []).append(callback)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"singleton_jobs-listen-{self._channel}")
                self._thread.start()

        def remove() -> None:
            with self._lock:
                callbacks = self._callbacks.get(name, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self._callbacks.pop(name, None)

        return remove

    def _wanted(self) -> bool:
        with self._lock:
            if self._callbacks:
                return True
            self._thread = None
            return False

    def _run(self) -> None:
        backoff = 0.1
        while self._wanted():
            try:
                self._listen()
                backoff = 0.1
            except _CannotListen as exc:
                logger.warning("no release notifications on %s (%s); followers poll",
                               self._channel, exc)
                with self._lock:
                    self._callbacks.clear()
                    self._thread = None
                return
            except Exception as exc:  # noqa: BLE001 - lost connection: polling covers the gap
                logger.debug("LISTEN %s interrupted: %s", self._channel, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _listen(self) -> None:
        # A connection of its own, taken out of the pool for good: it listens for its lifetime.
        pooled = self._engine.raw_connection()
        pooled.detach()
        raw = getattr(pooled, "dbapi_connection", None) or pooled.connection
        try:
            module = type(raw).__module__
            if module.startswith("psycopg2"):
                raw.set_isolation_level(0)  # autocommit
                raw.cursor().execute(f'LISTEN "{self._channel}"')
                self._after_reconnect()
                while self._wanted():
                    if select.select([raw], [], [], 1.0)[0]:
                        raw.poll()
                        while raw.notifies:
                            self._fire(raw.notifies.pop(0).payload)
            else:  # psycopg 3 (notifies() with a timeout: 3.2 and later)
                if "timeout" not in inspect.signature(raw.notifies).parameters:
                    raise _CannotListen("psycopg 3.2 or later is needed to listen")
                raw.autocommit = True
                raw.execute(f'LISTEN "{self._channel}"')
                self._after_reconnect()
                while self._wanted():
                    for notify in raw.notifies(timeout=1.0, stop_after=1):
                        self._fire(notify.payload)
                    if raw.closed:
                        raise ConnectionError("LISTEN connection closed")
        finally:
            try:
                raw.close()
            except Exception:  # noqa: BLE001 - already broken
                pass

    def _after_reconnect(self) -> None:
        """A release may have gone unheard while there was no connection: every follower
        looks once (the first connection has missed nothing)."""
        if self._connected_before:
            with self._lock:
                callbacks = [c for group in self._callbacks.values() for c in group]
            for callback in callbacks:
                callback()
        self._connected_before = True

    def _fire(self, name: str) -> None:
        with self._lock:
            callbacks = list(self._callbacks.get(name, ()))
        for callback in callbacks:
            callback()


class _CannotListen(Exception):
    """This driver cannot wait for notifications with a timeout: poll instead."""


_listeners: dict[tuple[int, int, str], _Listener] = {}


def _listener(engine: Engine, channel: str) -> _Listener:
    key = (id(engine.pool), os.getpid(), channel)
    with _engines_lock:
        listener = _listeners.get(key)
        if listener is None:
            listener = _listeners[key] = _Listener(engine, channel)
        return listener


class SQLElector(Elector):
    """An :class:`~singleton_jobs.Elector` on a :class:`SQLLeaseStore`.

    ``SQLElector("postgresql+psycopg://app@db/app", "report-mailer")``: every replica of one
    program passes the same URL and name; different programs use different names.
    """

    store: SQLLeaseStore

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        name: str,
        *,
        table: str = DEFAULT_TABLE,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], Any] | None = None,
        on_stopped_leading: Callable[[], Any] | None = None,
        on_new_leader: Callable[[str], Any] | None = None,
        liveness_timeout: float | None = None,
    ) -> None:
        super().__init__(SQLLeaseStore(url_or_engine, name, table=table), identity=identity,
                         lease_duration=lease_duration, renew_deadline=renew_deadline,
                         retry_period=retry_period, on_started_leading=on_started_leading,
                         on_stopped_leading=on_stopped_leading, on_new_leader=on_new_leader,
                         liveness_timeout=liveness_timeout)
