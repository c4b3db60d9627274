"""Lease in a file: one host, or several hosts on a shared filesystem with working locks.

Format (the seed's, extended): the first line is ``identity:timestamp`` (Unix seconds, a fraction
allowed); identities may contain ``:`` because the line is split at the *last* colon. Our own
fields follow as ``key=value`` lines and are optional, so a file written by the seed
(``<pid>:<unix seconds>``) reads as a lease of unknown duration held by that pid::

    worker-1:1767000000.123456
    lease_duration=15.0
    acquire_time=1767000000.000000
    transitions=3

Guarantees: the first creation uses ``O_CREAT|O_EXCL``; every later change (renew, takeover,
release) is a read-compare-write made while holding a ``filelock`` on the sibling ``.lock`` file,
written to a temporary file, fsynced and ``os.replace``-d into place, so a reader sees the old
record or the new one, never half of one. The file is never deleted. Content that cannot be
parsed is reported as held by nobody valid; the elector takes it over one lease duration after
it saw it, never at once.

Caveats: a process stopped (SIGSTOP) in the few microseconds it holds the ``.lock`` file blocks
other writers until it continues (a killed one releases it at once); a lock on a network
filesystem is only as good as that filesystem's ``flock``.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Union

from ..election import Elector
from ..errors import ConfigurationError, LeaseStoreError
from ..lease import LeaseRecord, holder_problem, unreadable_record
from ..store import LeaseStore, Snapshot, Version, once_name

if TYPE_CHECKING:
    import filelock

StrPath = Union[str, "os.PathLike[str]"]

#: A lease file is a few dozen bytes; anything larger than this is garbage, not a lease.
MAX_LEASE_BYTES = 4096
#: Timestamps further ahead of our clock than this are garbage, not clock skew.
MAX_CLOCK_AHEAD = 86400.0
DEFAULT_FILE_NAME = "leader.lease"
#: What a lease ``name`` may contain: it becomes a file name in the default lease directory.
_LEASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def lease_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a lease file, or None when it can."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not _LEASE_NAME.fullmatch(name):
        return ("must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or "
                "digit (for example 'report-mailer')")
    return None


def resolve_lease_path(path: StrPath | None, name: str | None) -> str:
    """The lease file for ``path`` or ``name``: one of them, never both, never neither.

    Two different programs on one host must not share a lease by accident (one would never
    run its jobs), so there is no implicit default file: ``name`` picks
    ``<default_lease_dir()>/<name>.lease``.

    :raises ConfigurationError: neither or both given, or an invalid name.
    """
    if path is not None and name is not None:
        raise ConfigurationError(f"pass either a lease path ({os.fspath(path)!r}) or name= "
                                 f"({name!r}), not both")
    if path is not None:
        return os.path.abspath(os.fspath(path))
    if name is None:
        raise ConfigurationError(
            "a file lease needs a path or a name: pass name='my-app' (every replica of the "
            f"program uses {os.path.join(default_lease_dir(), 'my-app.lease')}) or an explicit "
            "path; each program needs its own lease, or one of them would never run its jobs")
    problem = lease_name_problem(name)
    if problem is not None:
        raise ConfigurationError(f"lease name {name!r} {problem}")
    return default_lease_path(f"{name}.lease")


def default_lease_dir() -> str:
    """A per-user directory, mode 0700, that nobody else can write to.

    ``$XDG_RUNTIME_DIR/singleton_jobs`` when that is set, else ``singleton_jobs`` in
    ``$XDG_CACHE_HOME`` or ``~/.cache``; only when there is no usable home directory,
    ``<tempdir>/singleton_jobs-<uid>``. Created if missing, and refused if it is a symlink,
    belongs to another user or is open to others (the classic ``/tmp`` attack).

    :raises ConfigurationError: the directory exists but is not safe to use.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache"))
    if runtime and os.path.isdir(runtime):
        directory = os.path.join(runtime, "singleton_jobs")
    elif os.path.isdir(os.path.dirname(cache)) and os.access(os.path.dirname(cache), os.W_OK):
        os.makedirs(cache, 0o700, exist_ok=True)
        directory = os.path.join(cache, "singleton_jobs")
    else:
        import tempfile  # deferred: only needed without a home directory

        directory = os.path.join(tempfile.gettempdir(), f"singleton_jobs-{os.geteuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(f"{directory} is not a directory (a symlink?); remove it or "
                                 "pass an explicit lease path")
    if info.st_uid != os.geteuid():
        raise ConfigurationError(f"{directory} belongs to uid {info.st_uid}, not to you "
                                 f"(uid {os.geteuid()}); remove it or pass an explicit lease path")
    if info.st_mode & 0o077:
        raise ConfigurationError(f"{directory} has mode {stat.S_IMODE(info.st_mode):o}; other "
                                 f"users could tamper with leases: run chmod 700 {directory}")
    return directory


def default_lease_path(name: str = DEFAULT_FILE_NAME) -> str:
    """``name`` inside :func:`default_lease_dir`."""
    return os.path.join(default_lease_dir(), name)


def format_record(record: LeaseRecord) -> bytes:
    """Serialize ``record`` in the lease file format."""
    return (f"{record.holder}:{record.renew_time:.6f}\n"
            f"lease_duration={record.lease_duration!r}\n"
            f"acquire_time={record.acquire_time:.6f}\n"
            f"transitions={record.transitions}\n").encode()


def parse_record(data: bytes, now: float | None = None) -> LeaseRecord:
    """Parse lease file content; anything that is not a valid lease is unreadable, not an error.

    ``now`` (wall clock, default ``time.time()``) rejects timestamps from the far future.
    """
    now = time.time() if now is None else now
    try:
        if len(data) > MAX_LEASE_BYTES:
            raise ValueError("too large")
        text = data.decode("utf-8")
        first, *rest = text.split("\n")
        holder, colon, stamp = first.rpartition(":")
        if not colon:
            raise ValueError("no colon")
        if holder_problem(holder) is not None:
            raise ValueError("invalid holder")
        renew_time = _timestamp(stamp, now)
        fields = {}
        for line in rest:
            if line:
                key, equals, value = line.partition("=")
                if not equals:
                    raise ValueError("not key=value")
                fields[key] = value
        transitions = int(fields.get("transitions", "0"))
        if transitions < 0:
            raise ValueError("negative transitions")
        lease_duration = float(fields.get("lease_duration", "0"))
        if not math.isfinite(lease_duration) or lease_duration < 0:
            raise ValueError("bad lease duration")
        acquire = fields.get("acquire_time")
        acquire_time = renew_time if acquire is None else _timestamp(acquire, now)
    except ValueError:
        return unreadable_record()
    return LeaseRecord(holder, lease_duration, acquire_time, renew_time, transitions)


def _timestamp(text: str, now: float) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0 or value > now + MAX_CLOCK_AHEAD:
        raise ValueError("bad timestamp")
    return value


class FileLeaseStore(LeaseStore):
    """A lease kept in ``path``; writers serialize on ``path + ".lock"``.

    ``name`` instead of ``path`` picks ``<name>.lease`` in :func:`default_lease_dir`. ``mode``
    is applied exactly (not filtered by the umask) to the lease and lock files.

    :raises ConfigurationError: neither ``path`` nor ``name`` given; the path is unusable (a
        directory, a symlink, a missing parent, no permission, a read-only filesystem); the
        message names the path and the fix.
    """

    def __init__(self, path: StrPath | None = None, *, name: str | None = None,
                 mode: int = 0o600) -> None:
        import filelock  # deferred: importing filelock costs more than the rest of the package

        self.path = resolve_lease_path(path, name)
        self.lock_path = self.path + ".lock"
        # The highest transitions ever written, kept apart from the lease so that fencing tokens
        # keep growing even if the lease file is deleted or overwritten.
        self.fence_path = self.path + ".fence"
        self._fence_written = -1
        self.mode = mode
        self._check_path()
        self._lock: filelock.BaseFileLock = filelock.FileLock(self.lock_path, mode=mode)
        self._timeout_error: type[Exception] = filelock.Timeout
        self._filelock = filelock
        self._tmp_prefix = f".{os.path.basename(self.path)}."
        self._pid = os.getpid()  # the process this store's lock object belongs to

    def sibling(self, key: str) -> FileLeaseStore:
        """``<path>-once-<key>-<hash>`` beside the lease file."""
        return FileLeaseStore(once_name(self.path, key, 4096), mode=self.mode)

    @property
    def name(self) -> str:
        return self.path

    def after_fork(self) -> None:
        """A lock object must not cross a fork: the child gets its own."""
        self._lock = self._filelock.FileLock(self.lock_path, mode=self.mode)
        self._fence_written = -1
        self._pid = os.getpid()

    def _check_path(self) -> None:
        path, parent = self.path, os.path.dirname(self.path)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise self._config_error(exc, path) from exc
        if info is not None:
            if stat.S_ISLNK(info.st_mode):
                raise ConfigurationError(f"lease path {path} is a symlink; refusing to follow it "
                                         "(remove it, or point to the real file)")
            if stat.S_ISDIR(info.st_mode):
                raise ConfigurationError(f"lease path {path} is a directory; pass a file path "
                                         f"such as {os.path.join(path, DEFAULT_FILE_NAME)}")
            if not stat.S_ISREG(info.st_mode):
                raise ConfigurationError(f"lease path {path} is not a regular file")
            if info.st_uid != os.geteuid():
                # Whoever owns the file controls the election (the /tmp pre-creation attack).
                raise ConfigurationError(f"lease file {path} belongs to uid {info.st_uid}, not to "
                                         f"this user (uid {os.geteuid()}); refusing to trust it: "
                                         "remove it or choose another lease path")
        if not os.path.isdir(parent):
            raise ConfigurationError(f"directory {parent} for lease file {os.path.basename(path)} "
                                     "does not exist; create it or choose another lease path")
        # Prove we can do what every renew does: open the lock file and write into the directory.
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, self.mode)
            os.close(fd)
            if info is not None:
                os.close(os.open(path, os.O_RDONLY | os.O_NOFOLLOW))
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(parent))
        except OSError as exc:
            raise self._config_error(exc, exc.filename or path) from exc

    @staticmethod
    def _config_error(exc: OSError, where: str) -> ConfigurationError:
        if exc.errno == errno.EROFS:
            return ConfigurationError(f"lease path {where} is on a read-only filesystem; choose a "
                                      "lease path on a writable filesystem")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return ConfigurationError(f"permission denied for lease path {where}; give this user "
                                      "read and write access to it and its directory, or choose "
                                      "another lease path")
        if exc.errno == errno.ELOOP:
            return ConfigurationError(f"lease path {where} is a symlink; refusing to follow it")
        return ConfigurationError(f"cannot use lease path {where}: {exc.strerror}")

    # -- LeaseStore -----------------------------------------------------------------------------

    def get(self, *, timeout: float = 10.0) -> Snapshot | None:
        data = self._read()
        if data is None:
            return None
        return parse_record(data), data

    def transitions_floor(self, *, timeout: float = 10.0) -> int | None:
        """The counter in ``<path>.fence``: -1 if there is none, None if it is unreadable."""
        return self._read_fence()

    def create(self, record: LeaseRecord, *, timeout: float = 10.0) -> Version | None:
        """Create the lease file; None if it exists, or if the fencing floor already reached
        ``record.transitions`` (a lease with that token existed since the floor was read)."""
        data = format_record(record)
        with self._locked(timeout):
            if os.path.lexists(self.path):
                return None
            fence = self._read_fence()
            if fence is not None and fence >= record.transitions:
                # A lease with this counter (or a higher one) existed since the caller read the
                # floor: it may have a live holder, and ours would repeat its token. (A fence
                # that cannot be read is rewritten below; the elector waited a lease for it.)
                return None
            # Before the record, so that the floor never lags behind a token in use.
            self._remove_stale_temporaries()
            self._raise_fence(record.transitions)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             self.mode)
            except FileExistsError:
                return None
            except OSError as exc:
                raise self._io_error("create", exc) from exc
            try:
                os.fchmod(fd, self.mode)
                _write_all(fd, data)
                os.fsync(fd)
            except OSError as exc:
                raise self._io_error("write", exc) from exc
            finally:
                os.close(fd)
            self._sync_directory()
        return data

    def update(self, record: LeaseRecord, version: Version, *,
               timeout: float = 10.0) -> Version | None:
        data = format_record(record)
        with self._locked(timeout):
            if self._read() != version:
                return None
            if record.transitions > self._fence_written:  # a new term, not a renewal
                self._remove_stale_temporaries()
                self._raise_fence(record.transitions)
            self._replace(self.path, data)
        return data

    # -- file operations ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, timeout: float) -> Iterator[None]:
        try:
            self._lock.acquire(timeout=max(timeout, 0.0))
        except self._timeout_error as exc:
            raise LeaseStoreError(f"{self.lock_path} stayed locked for {timeout:.3g}s "
                                  "(is another writer stopped?)") from exc
        except OSError as exc:
            raise self._io_error("lock", exc) from exc
        try:
            yield
        finally:
            self._lock.release()

    def _read(self) -> bytes | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._io_error("open", exc) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LeaseStoreError(f"lease path {self.path} is no longer a regular file")
            chunks = []
            size = 0
            while size <= MAX_LEASE_BYTES:  # read one byte past the limit to tell "too large"
                chunk = os.read(fd, MAX_LEASE_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise self._io_error("read", exc) from exc
        finally:
            os.close(fd)

    def _read_fence(self) -> int | None:
        """The fencing floor: -1 if no fence file exists, None if it cannot be read."""
        try:
            fd = os.open(self.fence_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return -1
        except OSError:
            return None
        try:
            value = int(os.read(fd, 32).decode("ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        finally:
            os.close(fd)
        return value if value >= 0 else None

    def _raise_fence(self, transitions: int) -> None:
        """Record ``transitions`` as the highest ever written (held under the lock)."""
        if transitions <= self._fence_written:
            return  # a renewal: nothing new to remember
        fence = self._read_fence()
        if fence is None or transitions > fence:
            try:
                self._replace(self.fence_path, b"%d\n" % transitions)
            except LeaseStoreError:
                return  # only a safety net: the lease itself carries the counter
        self._fence_written = transitions

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files of writers killed mid-write (held under the lock: no live
        writer has one open now). Runs when the lease changes hands, not on every renew."""
        directory = os.path.dirname(self.path)
        prefixes = (self._tmp_prefix, f".{os.path.basename(self.fence_path)}.")
        try:
            names = os.listdir(directory)
        except OSError:
            return
        for name in names:
            if name.endswith(".tmp") and name.startswith(prefixes):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))

    def _replace(self, path: str, data: bytes) -> None:
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, self.mode)
            try:
                os.fchmod(fd, self.mode)
                _write_all(fd, data)
                os.fsync(fd)  # the data must be on disk before the rename makes it visible
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._io_error("write", exc) from exc
        self._sync_directory()

    def _sync_directory(self) -> None:
        # Makes the rename durable: without it a crash could bring back the old lease.
        with contextlib.suppress(OSError):
            fd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _io_error(self, action: str, exc: OSError) -> LeaseStoreError:
        if exc.errno == errno.ELOOP:
            return LeaseStoreError(f"lease path {self.path} became a symlink; refusing to follow")
        return LeaseStoreError(f"cannot {action} lease file {self.path}: {exc.strerror}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FileElector(Elector):
    """An :class:`~singleton_jobs.Elector` on a :class:`FileLeaseStore` at ``path``.

    Give ``path``, or ``name`` for ``<name>.lease`` in :func:`default_lease_dir`; every replica
    of one program must use the same one, and different programs different ones. ``mode``
    (default 0600) is the lease file's permission bits.

    :raises ConfigurationError: neither ``path`` nor ``name``, or an unusable path.
    """

    store: FileLeaseStore

    def __init__(
        self,
        path: StrPath | None = None,
        *,
        name: str | None = None,
        mode: int = 0o600,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], Any] | None = None,
        on_stopped_leading: Callable[[], Any] | None = None,
        on_new_leader: Callable[[str], Any] | None = None,
        liveness_timeout: float | None = None,
    ) -> None:
        super().__init__(FileLeaseStore(path, name=name, mode=mode), identity=identity,
                         lease_duration=lease_duration, renew_deadline=renew_deadline,
                         retry_period=retry_period, on_started_leading=on_started_leading,
                         on_stopped_leading=on_stopped_leading, on_new_leader=on_new_leader,
                         liveness_timeout=liveness_timeout)

    @property
    def path(self) -> str:
        return self.store.path
