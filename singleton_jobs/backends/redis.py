"""Lease in Redis: one hash per lease, compare-and-swap by Lua script, pub/sub on release.

Replicas on any number of hosts elect a leader through one Redis server, with redis-py
(``pip install "singleton_jobs[redis]"``; imported only when a store is constructed). The lease
``name`` with the default ``key_prefix`` lives in two keys that share a Redis Cluster hash tag,
so they are always in one slot::

    singleton_jobs:{report-mailer}         hash: holder, lease_duration, acquire_time,
                                           renew_time, transitions, version
    singleton_jobs:{report-mailer}:fence   string: the highest transitions ever written

Guarantees:

* Every write is one Lua script, so it is atomic and costs one round trip: a creation is
  refused if the record exists or the fence already reached its token; an update is refused
  unless the record is still at the version the caller read. A lost race returns ``None``. The
  leader's renew is exactly one ``EVALSHA``; a follower's poll one ``HGETALL``; reading the
  fencing floor one ``GET``. After a server restart the scripts are loaded again by themselves.
* A record starts at a random 60-bit version and every update adds one, so a record deleted
  and created again never repeats a version an old leader still holds.
* The fence is raised in the same script that writes a new token, never after, and is kept
  apart from the record: deleting or rewriting the record by hand never lets a token repeat,
  and a renew writes a deleted fence back. A store that has seen the fence and then finds it
  gone (``FLUSHALL``, a restart without persistence) cannot tell which tokens were used: it
  reports the floor as unknown, and its elector waits one lease duration before creating the
  lease again, above the highest token it saw. A process started while both keys are gone
  knows nothing of them, and its tokens start over from 0.
* Content that is not a lease record (missing fields, wrong types, an invalid holder, a key of
  another type) is a lease held by nobody valid: the elector takes it over one lease duration
  after it saw it, never at once.
* Expiry is never the server's clock: no ``EXPIRE`` is set on the record. Each replica judges
  the holder's lease on its own monotonic clock from the moment it saw the record change, so a
  crashed leader's lease is taken over ``lease_duration`` after its last renew.
* Every call is bounded by its ``timeout``: the store's connections use it as their connect
  and read timeout, and redis-py's automatic retries are off (each retry would start the
  timeout again). A client passed in is never changed: the store builds its own connections
  from the client's settings (host, database, TLS, credentials). Connection failures,
  timeouts and server errors (a read-only replica, ``OOM``, ``NOREPLICAS``) raise
  ``LeaseStoreError``; the broken connection is dropped and the next call connects again.
* A release publishes the lease's name on ``<key_prefix>released``; followers subscribed
  there try at once instead of at their next poll. One thread per process and server listens
  for every lease; after a lost connection it reconnects with a bounded back-off, and polling
  covers the gap.

Caveats: Redis replication is asynchronous. After a failover (Sentinel, Cluster) a replica
promoted before it received the last writes can hand out a lease that a live leader still
holds, or can have lost the fence, so that a token is used twice. The fencing token is what
protects downstream systems then: a downstream that remembers the highest token it accepted
and rejects every write with a lower one stops a stale leader, but only as long as tokens never
repeat; two leaders holding the same token cannot be told apart. Where that matters, run a
single primary with ``appendonly yes`` and ``appendfsync always`` (the fence survives a crash),
or make writes wait for replicas (``min-replicas-to-write``, ``WAIT``). A hand edit of the
record that leaves its ``version`` field alone is not seen as a change by followers; the
leader's next renew writes its record back over it. The timeout bounds each wait on a socket,
so a connection that is set up (TLS, AUTH) and then answers slowly can stretch one call to a
few timeouts, and so can the first write after a server restart (the script is loaded again).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from ..election import Elector
from ..errors import ConfigurationError, LeaseStoreError
from ..lease import LeaseRecord, holder_problem, unreadable_record
from ..store import LeaseStore, Snapshot, Version, once_name

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "singleton_jobs:"
MAX_NAME_LENGTH = 200
MAX_KEY_PREFIX_LENGTH = 200
#: The smallest timeout given to a socket: 0 would mean "never time out" to some releases.
MIN_TIMEOUT = 0.001
#: Fencing tokens and transitions are stored as decimal strings of at most this many digits,
#: so that Lua (whose numbers are doubles) compares them exactly.
MAX_TRANSITIONS = 10**15 - 1
_DIGITS = re.compile(rb"[0-9]{1,15}")
_VERSION = re.compile(rb"0|[1-9][0-9]{0,18}")
#: Versions are Redis integers (HINCRBY): below 2**63 - 1, so that one more always fits.
MAX_VERSION = 2**63 - 2
_RECORD_FIELDS = (b"holder", b"lease_duration", b"acquire_time", b"renew_time", b"transitions")
# Settings of a client's connection pool that belong to that pool, not to the server: a pool
# built from them must make its own.
_POOL_INTERNALS = frozenset({"maint_notifications_pool_handler", "orig_host_address",
                             "orig_socket_timeout", "orig_socket_connect_timeout",
                             "himport_registry", "retry_on_timeout"})

#: Listener: how long one wait for a message lasts (new subscriptions start within this).
LISTEN_POLL = 0.2
#: Listener: PING the server this often; no answer for three times as long means the
#: connection is dead (a blackholed network never closes it).
LISTEN_KEEPALIVE = 5.0
#: Listener: connect and socket timeout of its connection.
LISTEN_TIMEOUT = 5.0
#: Listener: back-off after a lost connection, doubling from the first to the second value.
LISTEN_BACKOFF = (0.05, 2.0)

# The fence is a decimal string; anything else (garbage, a key of another type) counts as no
# fence and is overwritten, as the elector waited a lease duration for it (floor unknown).
_READ_FENCE = """
local fence = -1
if redis.call('TYPE', KEYS[2])['ok'] == 'string' then
  local raw = redis.call('GET', KEYS[2])
  if string.match(raw, '^%d+$') and #raw <= 15 then fence = tonumber(raw) end
end
"""

# KEYS: record, fence. ARGV: holder, lease_duration, acquire_time, renew_time, transitions,
# version, channel, name. Returns the version, or nil if refused.
_CREATE = _READ_FENCE + """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if fence >= tonumber(ARGV[5]) then return false end
redis.call('SET', KEYS[2], ARGV[5])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'lease_duration', ARGV[2],
           'acquire_time', ARGV[3], 'renew_time', ARGV[4], 'transitions', ARGV[5],
           'version', ARGV[6])
if ARGV[1] == '' then redis.call('PUBLISH', ARGV[7], ARGV[8]) end
return ARGV[6]
"""

# KEYS: record, fence. ARGV: expected version token, holder, lease_duration, acquire_time,
# renew_time, transitions, a random version, channel, name. The version token is 'v' and the
# hash's version field, or 't' and the key's type when it is not a hash (garbage). Returns the
# new version, or nil if refused.
_UPDATE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return false end
local current = ''
local token = 't' .. kind
if kind == 'hash' then
  current = redis.call('HGET', KEYS[1], 'version') or ''
  token = 'v' .. current
end
if token ~= ARGV[1] then return false end
""" + _READ_FENCE + """
if fence < tonumber(ARGV[6]) then redis.call('SET', KEYS[2], ARGV[6]) end
if kind ~= 'hash' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'holder', ARGV[2], 'lease_duration', ARGV[3],
           'acquire_time', ARGV[4], 'renew_time', ARGV[5], 'transitions', ARGV[6])
if current == '0' or (string.match(current, '^[1-9]%d*$') and
    (#current <= 18 or (#current == 19 and current <= '9223372036854775806'))) then
  redis.call('HINCRBY', KEYS[1], 'version', 1)
else
  redis.call('HSET', KEYS[1], 'version', ARGV[7])
end
if ARGV[2] == '' then redis.call('PUBLISH', ARGV[8], ARGV[9]) end
return redis.call('HGET', KEYS[1], 'version')
"""


def _import_redis() -> Any:
    try:
        return importlib.import_module("redis")
    except ImportError as exc:
        raise ImportError('the Redis backend needs the redis package: '
                          'pip install "singleton_jobs[redis]"') from exc


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a Redis lease, or None when it can."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not name:
        return "must not be empty (for example 'report-mailer')"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed"
    return _key_part_problem(name)


def key_prefix_problem(prefix: object) -> str | None:
    """Why ``prefix`` cannot start the lease's keys, or None when it can ("" is allowed)."""
    if not isinstance(prefix, str):
        return f"must be a string, not {type(prefix).__name__}"
    if len(prefix) > MAX_KEY_PREFIX_LENGTH:
        return f"is {len(prefix)} characters long; at most {MAX_KEY_PREFIX_LENGTH} are allowed"
    return _key_part_problem(prefix)


def _key_part_problem(text: str) -> str | None:
    if "{" in text or "}" in text:
        return ("contains '{' or '}', which would change the Redis Cluster hash tag that keeps "
                "a lease's keys in one slot")
    if any(not ch.isprintable() or ch.isspace() for ch in text):
        return "contains whitespace or a control character"
    return None


def record_key(key_prefix: str, name: str) -> str:
    """The key of the lease record ``name``: ``<key_prefix>{<name>}``."""
    return f"{key_prefix}{{{name}}}"


def fence_key(key_prefix: str, name: str) -> str:
    """The key of the lease's fencing floor, in the record's hash slot."""
    return record_key(key_prefix, name) + ":fence"


def release_channel(key_prefix: str) -> str:
    """The pub/sub channel on which releases of leases with this prefix are announced."""
    return f"{key_prefix}released"


def record_from_hash(fields: dict[bytes, bytes]) -> LeaseRecord:
    """The lease record in a hash's fields; content that makes no sense is unreadable."""
    raw = fields.get(b"transitions")
    transitions = int(raw) if raw is not None and _DIGITS.fullmatch(raw) else None
    if transitions is None or any(field not in fields for field in _RECORD_FIELDS):
        return unreadable_record(transitions or 0)
    try:
        holder = fields[b"holder"].decode("utf-8")
        if holder_problem(holder) is not None:
            raise ValueError("invalid holder")
        lease_duration, acquire_time, renew_time = (
            _finite(fields[field]) for field in (b"lease_duration", b"acquire_time",
                                                 b"renew_time"))
        if lease_duration < 0:
            raise ValueError("negative lease duration")
    except ValueError:  # UnicodeDecodeError is one
        return unreadable_record(transitions)
    return LeaseRecord(holder, lease_duration, acquire_time, renew_time, transitions)


def _finite(raw: bytes) -> float:
    value = float(raw.decode("ascii"))
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def _record_args(record: LeaseRecord) -> list[str]:
    """The record's fields as the scripts take them; floats as ``repr`` so they read back
    exactly (the elector compares acquire times).

    :raises ConfigurationError: a value that cannot be a lease record.
    """
    problem = holder_problem(record.holder)
    if problem is not None:
        raise ConfigurationError(f"holder {record.holder!r} {problem}")
    transitions = record.transitions
    if isinstance(transitions, bool) or not isinstance(transitions, int) \
            or not 0 <= transitions <= MAX_TRANSITIONS:
        raise ConfigurationError(f"transitions ({transitions!r}) must be an integer from 0 to "
                                 f"{MAX_TRANSITIONS}")
    times = [record.lease_duration, record.acquire_time, record.renew_time]
    if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in times):
        raise ConfigurationError(f"times of {record!r} must be finite numbers")
    return [record.holder, *(repr(float(value)) for value in times), str(transitions)]


def _version_token(version: Version) -> bytes | None:
    """What the update script compares with the stored version, or None for no version."""
    if isinstance(version, bool):
        return None
    if isinstance(version, int):
        return b"v%d" % version
    if isinstance(version, bytes):
        return version
    return None


def _parse_version(raw: bytes) -> Version:
    """An integer for a version the update script can increment, else the raw token."""
    if _VERSION.fullmatch(raw) and int(raw) <= MAX_VERSION:
        return int(raw)
    return b"v" + raw


def _connection_settings(pool: Any) -> tuple[Any, dict[str, Any]]:
    """The connection class and settings of a client's pool, without the pool's own state."""
    settings = {key: value for key, value in pool.connection_kwargs.items()
                if key not in _POOL_INTERNALS}
    return pool.connection_class, settings


class RedisLeaseStore(LeaseStore):
    """The lease ``name`` in the Redis server at ``url_or_client``.

    ``url_or_client`` is a URL (``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
    for TLS, ``unix:///path/to/socket``) or a ``redis.Redis`` client, whose settings the store
    copies into connections of its own. Keys start with ``key_prefix``; see the module
    docstring for the layout. Versions are integers (other values for unreadable content).
    A ``RedisCluster`` client is not supported (the keys share a hash slot, ready for it).

    :raises ConfigurationError: ``name`` or ``key_prefix`` is invalid, or ``url_or_client`` is
        neither a Redis URL nor a ``redis.Redis`` client.
    :raises ImportError: the ``redis`` package is not installed.
    """

    def __init__(self, url_or_client: Any, name: str, *,
                 key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        problem = name_problem(name)
        if problem is not None:
            raise ConfigurationError(f"Redis lease name {name!r} {problem}")
        problem = key_prefix_problem(key_prefix)
        if problem is not None:
            raise ConfigurationError(f"key_prefix {key_prefix!r} {problem}")
        redis = _import_redis()
        self._redis: Any = redis
        # A retry would start the timeout over: the elector retries on its own schedule.
        self._no_retry: Any = importlib.import_module("redis.retry").Retry(
            importlib.import_module("redis.backoff").NoBackoff(), 0)
        self._connection_class, self._settings = self._parse_target(redis, url_or_client)
        self._target = url_or_client
        self.lease_name: str = name
        self.key_prefix: str = key_prefix
        self.record_key: str = record_key(key_prefix, name)
        self.fence_key: str = fence_key(key_prefix, name)
        self.channel: str = release_channel(key_prefix)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._lock = threading.Lock()
        self._scripts: tuple[Any, Any] | None = None
        # The highest fence this store read or wrote, None before any: a fence that vanishes
        # after it was seen is an unknown floor, not a fresh start.
        self._fence_seen: int | None = None
        self._pid = os.getpid()  # the process this store's connections belong to

    @staticmethod
    def _parse_target(redis: Any, url_or_client: Any) -> tuple[Any, dict[str, Any]]:
        fix = ("pass a URL such as 'redis://localhost:6379/0' (rediss:// for TLS, "
               "unix:///path/to/redis.sock) or a redis.Redis client")
        if isinstance(url_or_client, str):
            if not url_or_client.strip():
                raise ConfigurationError(f"the Redis URL is empty; {fix}")
            try:
                pool = redis.ConnectionPool.from_url(url_or_client)
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(f"invalid Redis URL {_redact(url_or_client)!r}: {exc}; "
                                         f"{fix}") from exc
            return _connection_settings(pool)
        if isinstance(url_or_client, redis.Redis):
            return _connection_settings(url_or_client.connection_pool)
        kind = type(url_or_client)
        if kind.__module__.startswith("redis.") and kind.__name__ == "RedisCluster":
            raise ConfigurationError("a RedisCluster client is not supported: pass a URL or a "
                                     "redis.Redis client of the primary that serves the lease")
        if kind.__module__.startswith("redis.asyncio"):
            raise ConfigurationError(f"an asyncio client ({kind.__module__}.{kind.__name__}) is "
                                     f"not supported: the elector runs in a thread; {fix}")
        raise ConfigurationError(f"url_or_client must be a Redis URL or a redis.Redis client, "
                                 f"not {kind.__name__}; {fix}")

    def sibling(self, key: str) -> RedisLeaseStore:
        """The lease ``<name>-once-<key>-<hash>`` with the same key prefix and client."""
        return RedisLeaseStore(self._target, once_name(self.lease_name, key, MAX_NAME_LENGTH),
                               key_prefix=self.key_prefix)

    @property
    def name(self) -> str:
        """``redis://host:port/db/<record key>`` (never the password)."""
        settings = self._settings
        scheme = "rediss" if "SSL" in self._connection_class.__name__ else "redis"
        db = settings.get("db", 0)
        if settings.get("path"):
            return f"unix://{settings['path']}/{db}/{self.record_key}"
        return (f"{scheme}://{settings.get('host', 'localhost')}:{settings.get('port', 6379)}/"
                f"{db}/{self.record_key}")

    def after_fork(self) -> None:
        """Connections must not cross a fork: both processes would read each other's answers
        from one socket. The child connects anew (what it knows of the fence stays)."""
        self._lock = threading.Lock()
        self._scripts = None
        self._pid = os.getpid()

    # -- connections ----------------------------------------------------------------------------

    def _client(self, timeout: float) -> Any:
        """A client whose connections time out after ``timeout`` and never retry."""
        timeout = max(round(timeout, 3), MIN_TIMEOUT)
        # Stores of one process on one server share a client and its pool, as SQL stores on
        # one URL share an engine: 200 electors need a few connections, not 200.
        key = (os.getpid(), self._connection_class, timeout,
               *sorted((name, _setting_key(value)) for name, value in self._settings.items()))
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = self._build_client(timeout)
        with self._lock:
            if self._scripts is None:
                self._scripts = (client.register_script(_CREATE),
                                 client.register_script(_UPDATE))
            return client

    def _build_client(self, timeout: float) -> Any:
        return self._redis.Redis(connection_pool=self._redis.ConnectionPool(
            connection_class=self._connection_class,
            **self.connection_settings(timeout)))

    def connection_settings(self, timeout: float) -> dict[str, Any]:
        """The connection settings the store uses: the given ones, with ``timeout`` for connect
        and read, no automatic retries, and undecoded answers."""
        settings = dict(self._settings)
        settings.update(socket_timeout=timeout, retry_on_error=[], decode_responses=False,
                        retry=copy.deepcopy(self._no_retry))
        if _accepts(self._connection_class, "socket_connect_timeout"):
            settings["socket_connect_timeout"] = timeout
        return settings

    def _call(self, action: str, timeout: float, call: Callable[[Any], Any]) -> Any:
        """Run ``call(client)``; translate every failure into LeaseStoreError."""
        client = self._client(timeout)
        try:
            return call(client)
        except self._redis.ResponseError as exc:
            raise self._error(action, timeout, exc) from exc
        except self._errors as exc:
            # redis-py drops a connection that failed; drop the idle ones too, in case one
            # was left with an answer half read.
            try:
                client.connection_pool.disconnect(inuse_connections=False)
            except Exception:  # noqa: BLE001 - cleaning up after a failure already reported
                logger.debug("disconnecting after a failure failed", exc_info=True)
            raise self._error(action, timeout, exc) from exc

    def _error(self, action: str, timeout: float, exc: BaseException) -> Exception:
        redis = self._redis
        where = f"{action} lease {self.name}"
        if isinstance(exc, redis.AuthenticationError):
            return ConfigurationError(f"cannot {where}: the server rejected the credentials "
                                      f"({exc}); fix the user name and password in the URL or "
                                      "client")
        if isinstance(exc, getattr(redis.exceptions, "NoPermissionError", ())):
            return ConfigurationError(
                f"cannot {where}: {exc}; the Redis user needs the commands hgetall, get, type, "
                "evalsha, eval, script|load, publish, subscribe and ping, and access to keys "
                f"{self.key_prefix}* and channel {self.channel}")
        hint = ""
        if isinstance(exc, getattr(redis.exceptions, "ReadOnlyError", ())):
            hint = " (the server is a read-only replica: point the URL at the primary)"
        elif isinstance(exc, getattr(redis.exceptions, "OutOfMemoryError", ())):
            hint = " (the server reached maxmemory: raise it, or free memory)"
        return LeaseStoreError(f"cannot {where} (timeout {timeout:.3g}s): "
                               f"{type(exc).__name__}: {exc}{hint}")

    # -- LeaseStore -----------------------------------------------------------------------------

    def get(self, *, timeout: float = 10.0) -> Snapshot | None:
        """One ``HGETALL``; a key of another type costs a ``TYPE`` too."""
        key = self.record_key

        def read(client: Any) -> Snapshot | None:
            try:
                fields = client.hgetall(key)
            except self._redis.ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                kind = client.type(key)
                kind = kind.encode() if isinstance(kind, str) else bytes(kind)
                return None if kind == b"none" else (unreadable_record(), b"t" + kind)
            if not fields:
                return None
            raw = fields.get(b"version")
            version = _parse_version(raw) if raw is not None else b"v"
            return record_from_hash(fields), version

        result: Snapshot | None = self._call("read", timeout, read)
        return result

    def transitions_floor(self, *, timeout: float = 10.0) -> int | None:
        """The fence: -1 if this store never saw one, None if it cannot be read or vanished
        after this store saw it (the server lost its data: which tokens were used is unknown).
        Never below a fence this store saw.

        :raises LeaseStoreError: the server could not be asked.
        """
        key = self.fence_key

        def read(client: Any) -> Any:
            try:
                return client.get(key)
            except self._redis.ResponseError as exc:
                if str(exc).startswith("WRONGTYPE"):
                    return b""  # garbage
                raise

        raw = self._call("read the fence of", timeout, read)
        if raw is None:
            return -1 if self._fence_seen is None else None
        raw = raw.encode() if isinstance(raw, str) else bytes(raw)
        if not _DIGITS.fullmatch(raw):
            return None
        return self._saw_fence(int(raw))

    def _saw_fence(self, fence: int) -> int:
        with self._lock:
            seen = self._fence_seen
            self._fence_seen = fence if seen is None else max(seen, fence)
            return self._fence_seen

    def create(self, record: LeaseRecord, *, timeout: float = 10.0) -> Version | None:
        """Create the record; None if a record exists, or if the fence already reached
        ``record.transitions`` (a lease with that token existed since the floor was read)."""
        args = [*_record_args(record), str(secrets.randbits(60)), self.channel, self.lease_name]

        def run(client: Any) -> Any:
            assert self._scripts is not None
            return self._scripts[0](keys=[self.record_key, self.fence_key], args=args,
                                    client=client)

        answer = self._call("create", timeout, run)
        if answer is None:
            return None
        self._saw_fence(record.transitions)
        return _parse_version(_as_bytes(answer))

    def update(self, record: LeaseRecord, version: Version, *,
               timeout: float = 10.0) -> Version | None:
        """Replace the record if it is still at ``version``, raising the fence to its token."""
        token = _version_token(version)
        if token is None:
            return None  # not a version of a Redis record, so never the current one
        fields = _record_args(record)
        args = [token, *fields, str(secrets.randbits(60)), self.channel, self.lease_name]

        def run(client: Any) -> Any:
            assert self._scripts is not None
            return self._scripts[1](keys=[self.record_key, self.fence_key], args=args,
                                    client=client)

        answer = self._call("update", timeout, run)
        if answer is None:
            return None
        self._saw_fence(record.transitions)
        return _parse_version(_as_bytes(answer))

    def watch(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``callback`` when a release of this lease is published (see the module
        docstring); one listener thread per process and server serves every store."""
        try:
            settings = self.connection_settings(LISTEN_TIMEOUT)
            key: tuple[Hashable, ...] = (
                os.getpid(), self._connection_class,
                *sorted((name, value) for name, value in settings.items()
                        if value is None or isinstance(value, (str, int, float, bool))))
            where = self.name[:-len(self.record_key) - 1]
            return _ReleaseListener.add(key, where, self._build_listener_client,
                                        self.channel.encode(), self.lease_name.encode(),
                                        callback)
        except Exception as exc:  # noqa: BLE001 - notifications only speed things up
            logger.warning("no release notifications for %s (%s); polling only", self.name, exc)
            return None

    def _build_listener_client(self) -> Any:
        return self._build_client(LISTEN_TIMEOUT)


_clients: dict[tuple[Hashable, ...], Any] = {}
_clients_lock = threading.Lock()


def _setting_key(value: object) -> Hashable:
    """A connection setting as part of a key: the value itself if plain, its ``repr`` if its
    class says what it holds (a config object built anew for each URL), else its identity."""
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    if type(value).__repr__ is not object.__repr__:
        return (type(value).__qualname__, repr(value))
    return id(value)


def _forget_inherited_clients() -> None:
    """In a child after fork(): the parent's sockets are not ours to use."""
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()


def _accepts(cls: Any, parameter: str) -> bool:
    """Whether ``cls(...)`` takes the keyword ``parameter`` (older redis-py Unix connections
    have no connect timeout)."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True
    return parameter in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, int):  # bytes(5) would be five zero bytes
        return str(value).encode()
    return value.encode() if isinstance(value, str) else bytes(value)


def _redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)


class _ReleaseListener:
    """One pub/sub connection per process and server, shared by every store watching there.

    Callbacks are registered per (channel, lease name). The thread subscribes to the channels
    that have callbacks, calls the matching ones for each message, reconnects with a bounded
    back-off when the connection drops, and ends when the last callback is removed.
    """

    _registry: dict[tuple[Hashable, ...], _ReleaseListener] = {}
    _registry_lock = threading.Lock()

    def __init__(self, key: tuple[Hashable, ...], where: str,
                 make_client: Callable[[], Any]) -> None:
        self._key = key
        self._where = where
        self._make_client = make_client
        # channel -> lease name -> callbacks; guarded by the registry lock.
        self._callbacks: dict[bytes, dict[bytes, list[Callable[[], None]]]] = {}
        self._idle = threading.Event()  # set when the last callback is gone
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="singleton_jobs-redis-releases")

    @classmethod
    def add(cls, key: tuple[Hashable, ...], where: str, make_client: Callable[[], Any],
            channel: bytes, name: bytes, callback: Callable[[], None]) -> Callable[[], None]:
        with cls._registry_lock:
            listener = cls._registry.get(key)
            start = listener is None
            if listener is None:
                listener = cls._registry[key] = cls(key, where, make_client)
            listener._callbacks.setdefault(channel, {}).setdefault(name, []).append(callback)
        if start:
            listener.thread.start()
        removed: list[bool] = []

        def remove() -> None:
            with cls._registry_lock:
                if removed:
                    return
                removed.append(True)
                names = listener._callbacks.get(channel, {})
                callbacks = names.get(name, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    names.pop(name, None)
                if not names:
                    listener._callbacks.pop(channel, None)
                if not listener._callbacks:
                    listener._idle.set()
                    if cls._registry.get(listener._key) is listener:
                        del cls._registry[listener._key]

        return remove

    @classmethod
    def forget_inherited(cls) -> None:
        """In a child after fork(): the parent's listener threads are not here, and its lock
        may have been held by one of them."""
        cls._registry_lock = threading.Lock()
        cls._registry = {}

    def _channels(self) -> set[bytes]:
        with self._registry_lock:
            return set(self._callbacks)

    def _dispatch(self, channel: bytes, name: bytes | None) -> None:
        """Call the callbacks of ``name`` on ``channel``, or all of the channel's (None)."""
        with self._registry_lock:
            names = self._callbacks.get(channel, {})
            callbacks = [callback for lease, found in names.items() if name in (None, lease)
                         for callback in found]
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("release callback %r raised", callback)

    def _run(self) -> None:
        failures = 0  # connections lost in a row
        failure = ""
        reconnecting = False
        while not self._idle.is_set():
            pubsub = None
            try:
                pubsub = self._make_client().pubsub()
                subscribed: set[bytes] = set()
                last_heard = last_ping = time.monotonic()
                while not self._idle.is_set():
                    wanted = self._channels()
                    if wanted - subscribed:
                        pubsub.subscribe(*(wanted - subscribed))
                        subscribed |= wanted
                    if subscribed - wanted:
                        pubsub.unsubscribe(*(subscribed - wanted))
                        subscribed &= wanted
                    message = pubsub.get_message(timeout=LISTEN_POLL)
                    now = time.monotonic()
                    if message is not None:
                        last_heard = now
                        kind = message.get("type")
                        if kind == "message":
                            self._dispatch(_as_bytes(message["channel"]),
                                           _as_bytes(message.get("data") or b""))
                        elif kind == "subscribe":
                            if failure:
                                logger.info("release notifications from %s work again",
                                            self._where)
                                failure = ""
                            failures = 0
                            if reconnecting:
                                # A release may have been published while disconnected: let
                                # every follower look once.
                                self._dispatch(_as_bytes(message["channel"]), None)
                    if now - last_ping >= LISTEN_KEEPALIVE and subscribed:
                        pubsub.ping()
                        last_ping = now
                    if now - last_heard > 3 * LISTEN_KEEPALIVE and subscribed:
                        raise TimeoutError(f"no answer to PING for {now - last_heard:.0f}s")
            except Exception as exc:  # noqa: BLE001 - a listener must never die of a failure
                message_text = f"{type(exc).__name__}: {exc}"
                if message_text != failure:
                    logger.warning("release notifications from %s lost (%s); polling until "
                                   "reconnected", self._where, message_text)
                    failure = message_text
                failures += 1
                reconnecting = True
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - the connection is dead already
                        logger.debug("closing the release listener failed", exc_info=True)
            first, longest = LISTEN_BACKOFF
            if failures and self._idle.wait(min(first * 2 ** min(failures - 1, 30), longest)):
                break


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_ReleaseListener.forget_inherited)
    os.register_at_fork(after_in_child=_forget_inherited_clients)


class RedisElector(Elector):
    """An :class:`~singleton_jobs.Elector` on the Redis lease ``name``; see
    :class:`RedisLeaseStore`.

    :raises ConfigurationError: invalid timing, identity, name, key prefix, or
        ``url_or_client``.
    :raises ImportError: the ``redis`` package is not installed.
    """

    store: RedisLeaseStore

    def __init__(
        self,
        url_or_client: Any,
        name: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], Any] | None = None,
        on_stopped_leading: Callable[[], Any] | None = None,
        on_new_leader: Callable[[str], Any] | None = None,
        liveness_timeout: float | None = None,
    ) -> None:
        super().__init__(RedisLeaseStore(url_or_client, name, key_prefix=key_prefix),
                         identity=identity, lease_duration=lease_duration,
                         renew_deadline=renew_deadline, retry_period=retry_period,
                         on_started_leading=on_started_leading,
                         on_stopped_leading=on_stopped_leading, on_new_leader=on_new_leader,
                         liveness_timeout=liveness_timeout)

    @property
    def lease_name(self) -> str:
        return self.store.lease_name
