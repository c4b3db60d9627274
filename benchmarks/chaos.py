"""Chaos run: replicas contend for one lease while faults are injected; the journal is checked.

    python benchmarks/chaos.py                       # 60 s, 5 replicas, file backend
    python benchmarks/chaos.py --duration 600        # the long run quoted in the README
    python benchmarks/chaos.py --backend kubernetes  # one Lease on the fake Kubernetes API server
    python benchmarks/chaos.py --backend postgresql  # a row in an own PostgreSQL (also mysql,
                                                     # redis), with server faults

Each replica is a real process with an explicit identity (``replica-1`` ... ``replica-N``; a
restarted replica keeps its identity, as a StatefulSet pod does) running a ``@leader_only`` job in
a tight loop; every run is appended to a shared journal as ``pid token start end`` (monotonic
seconds: comparable across processes on one Linux host). Faults are drawn at random, bounded in
count and time:

* SIGKILL (the replica is restarted), SIGSTOP for longer than the lease then SIGCONT, SIGTERM
  (graceful stop with release; restarted), and the lease file overwritten with garbage;
* ``fork``: the leader is sent SIGUSR1 and forks a child, which keeps calling the same guarded
  job every 5 ms for 1-2 lease durations (journaling any run under its own pid), sometimes calls
  ``elector.stop()`` as cleanup code would, then leaves with ``os._exit``. The elector it
  inherited is dead, so a child must never run the job: every child run is a violation;
* ``duplicate``: an extra replica with the *same identity* as a live one (the leader's, mostly)
  runs for 1.5-4 lease durations, then is SIGKILLed or SIGTERMed. Runs are journaled by pid, so
  the two processes of one identity are checked against each other like any two replicas;
* ``delete``: under a live leader, the lease file is unlinked (its ``.fence`` sidecar stays) or
  the Lease object is deleted through the fake API server's admin endpoint; half the time a
  follower is restarted right after, so that a process that never saw the record starts;
* ``rewrite``: under a live leader, the record is rewritten through the store's compare-and-swap
  with the same holder, acquire time and transitions but a much shorter lease duration (a tenth
  of a lease or less in a file; ``leaseDurationSeconds: 1`` on Kubernetes).

After half the deletes and rewrites the leader is also SIGSTOPped for 0.3-0.8 of a lease, so that
a follower that misjudged the change would take over while the leader cannot renew. ``--faults``
restricts the draw to some kinds, to reproduce a finding; ``--min-each`` makes sure every kind
is injected at least that often.

With ``--backend kubernetes`` the harness starts the fake API server (tests/k8s_api.py) as a
process and the replicas contend for one Lease on it through ``KubernetesElector``. Garbage in
the lease file is replaced by API-server faults injected through its admin endpoints, each
bounded in count (matching requests) and time (it is cleared after a fraction of a lease):
latency longer than any request timeout, 500 answers, 409 storms on writes, dropped connections
and non-JSON answers; all but the 409s sometimes after the request was applied (a write whose
answer is lost). The table adds the number of API requests the server answered.

With ``--backend postgresql``, ``mysql`` (MariaDB) or ``redis`` the harness starts a database
server of its own (tests/servers.py; the Redis one with ``appendonly yes`` and ``appendfsync
always``, the persistence the Redis backend's docs ask for where tokens matter) and the
replicas contend for one lease in it through ``SQLElector`` or ``RedisElector``. ``delete``
deletes the lease row or key (the fence stays), ``garbage`` overwrites it with content that is
no lease record (a holder with a control character, negative numbers, a key of another type),
and these server faults join the draw:

* ``restart``: the server is SIGKILLed and started again (a crash restart, same data);
* ``server-pause``: every server process is SIGSTOPped for 1.2 renew deadlines to 1.5 lease
  durations, then SIGCONTed: connections stay open and nothing answers;
* ``drop-connection``: every connection the leader process holds to the server is killed
  from the server's side (``pg_terminate_backend``, ``KILL``, ``CLIENT KILL``).

The replicas' log lines go to ``replicas.log`` in the run's directory, the injected faults to
``faults.log``, the forked children's start and end to ``forks``.

Afterwards the journal is checked for the promise: job runs of different processes never
overlap, fencing tokens never go back, no forked child ever runs the job, and nobody takes the
lease over less than one lease duration after it was deleted (except its holder, which recreates
it) or after its duration was shortened — unless a SIGTERM (a release) came in between. A run
that a SIGSTOP interrupted mid-body (it began before the pause and ended after it) is the
documented exception — the case fencing tokens exist for — and is counted separately. The exit
status is non-zero if any violation is found.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from singleton_jobs import Elector
    from singleton_jobs.backends import LeaseStore

FAKE_API = os.path.join(os.path.dirname(__file__), "..", "tests", "k8s_api.py")
LEASE_NAME = "chaos"
NAMESPACE = "default"
#: The fault kinds of each backend; the process faults are drawn as often as in the file run.
PROCESS_FAULTS = ["kill", "kill", "pause", "terminate"]
API_FAULTS = ["api-delay", "api-500", "api-409", "api-drop", "api-garbage"]
#: Faults of the real deployments the promise is about: a forked leader, two processes with one
#: identity, the record deleted or rewritten by hand.
DEPLOYMENT_FAULTS = ["fork", "duplicate", "delete", "rewrite"]
#: Faults of a database server the replicas share.
SERVER_FAULTS = ["restart", "server-pause", "drop-connection"]
DATABASES = ("postgresql", "mysql", "redis")
BACKENDS = ("file", "kubernetes", *DATABASES)
#: At most this many same-identity duplicates run at once.
MAX_DUPLICATES = 2
#: The engine logs this when another process renews the lease under its identity.
SAME_IDENTITY_ERROR = "under the same identity"
#: Per backend: lease duration, renew deadline, retry period. A Kubernetes Lease holds whole
#: seconds, and its lease must exceed 1 s for a rewrite to ``leaseDurationSeconds: 1`` to
#: shorten it.
DEFAULT_TIMINGS = {"file": (1.0, 0.5, 0.1), "kubernetes": (2.0, 1.0, 0.1),
                   **{database: (2.0, 1.0, 0.1) for database in DATABASES}}


class Run(NamedTuple):
    pid: int
    token: int | None  # None: the leadership check passed but it had lapsed when the body ran
    start: float
    end: float


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    started: float
    identity: str
    ends_at: float | None = None  # a same-identity duplicate: when the harness ends it
    paused: list[tuple[float, float]] = field(default_factory=list)  # (SIGSTOP, SIGCONT)

    @property
    def duplicate(self) -> bool:
        return self.ends_at is not None


class Tamper(NamedTuple):
    """A lease deleted or rewritten by the harness, for the early-takeover check."""

    kind: str        # "delete" or "rewrite"
    at: float        # monotonic, just before the change
    token: int       # the record's token then (-1 if unreadable), for the fault log
    holder: str      # the record's holder then (a delete: its processes may recreate at once)


@dataclass
class Child:
    parent: int
    parent_leading: bool
    started: float
    ended: float | None = None
    calls: int = 0
    saw_leader: int = 0  # times is_leader was True in the child
    stopped: bool = False  # it called elector.stop() before leaving


# -- the replica ---------------------------------------------------------------------------------


def make_elector(args: argparse.Namespace) -> Elector:
    identity = args.identity or f"chaos-{os.getpid()}"
    if args.backend == "kubernetes":
        from kubernetes import client

        from singleton_jobs import KubernetesElector

        api_client = client.ApiClient(client.Configuration(host=args.api))
        return KubernetesElector(LEASE_NAME, namespace=NAMESPACE, api_client=api_client,
                                 identity=identity, lease_duration=args.lease_duration,
                                 renew_deadline=args.renew_deadline,
                                 retry_period=args.retry_period)
    timings = {"lease_duration": args.lease_duration, "renew_deadline": args.renew_deadline,
               "retry_period": args.retry_period}
    if args.backend == "redis":
        from singleton_jobs import RedisElector

        return RedisElector(args.url, LEASE_NAME, identity=identity, **timings)
    if args.backend in DATABASES:
        from singleton_jobs import SQLElector

        return SQLElector(args.url, LEASE_NAME, identity=identity, **timings)
    from singleton_jobs import FileElector

    return FileElector(args.lease, identity=identity, **timings)


class _MonotonicStamp(logging.Filter):
    """Stamps log records with time.monotonic(), the clock of the journal."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.monotonic = time.monotonic()
        return True


def note(path: str, line: str) -> None:
    """Append one line to ``path`` in one O_APPEND write."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def fork_child(elector: Elector, job: Callable[[float], None], args: argparse.Namespace) -> None:
    """Fork; the child calls ``job`` for 1-2 lease durations, then leaves with os._exit."""
    parent = os.getpid()
    leading = elector.is_leader
    lifetime = args.lease_duration * random.uniform(1.0, 2.0)
    cleanup = random.random() < 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid:
        return
    try:  # the child: only this thread exists here
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        started = time.monotonic()
        note(args.forks, f"start {os.getpid()} {parent} {int(leading)} {started:.6f}")
        calls = saw_leader = 0
        while time.monotonic() < started + lifetime:
            time.sleep(0.005)
            saw_leader += elector.is_leader
            job(time.monotonic())  # journals under this process's pid if it ever runs
            calls += 1
        if cleanup:
            elector.stop(release=True)  # as atexit or cleanup code would: must do nothing
        note(args.forks, f"end {os.getpid()} {calls} {saw_leader} {int(cleanup)} "
                         f"{time.monotonic():.6f}")
    finally:
        os._exit(0)


def reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def worker(args: argparse.Namespace) -> int:
    from singleton_jobs import leader_only

    handler = logging.FileHandler(args.log)
    handler.addFilter(_MonotonicStamp())
    handler.setFormatter(logging.Formatter(
        "%(monotonic).6f %(process)d %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    elector = make_elector(args)
    journal = os.open(args.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @leader_only(elector)
    def job(checked_at: float) -> None:
        # Timed from before the leadership check: a pause that lands between the check and the
        # body must count as "began before the pause", which it did.
        token = elector.fencing_token
        time.sleep(0.001)
        os.write(journal, f"{os.getpid()} {token} {checked_at:.6f} {time.monotonic():.6f}\n"
                 .encode())

    # Flags, not threading.Events: Event.set() in a signal handler can deadlock with the
    # Event.wait() the handler interrupted (both take the same non-reentrant lock). The fork
    # itself happens here in the loop, not in the handler.
    terminated: list[int] = []
    fork_requests: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    signal.signal(signal.SIGUSR1, lambda signum, frame: fork_requests.append(signum))
    # The harness blocked SIGUSR1 before exec (its default action kills): deliver it now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    elector.start()
    while not terminated:
        time.sleep(0.005)
        job(time.monotonic())
        if fork_requests:
            fork_requests.clear()
            fork_child(elector, job, args)
        reap_children()
    elector.stop(release=True)
    return 0


# -- the harness ---------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def end_with_harness(harness: int) -> None:
    """Run in each child before it starts: SIGKILL it when the harness dies, however it dies
    (SIGKILL, a test's timeout), so no replica or server outlives the run, not even one the
    harness had paused with SIGSTOP. Linux only. SIGUSR1 (a fork request) stays blocked until
    the replica has its handler."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != harness:  # it died before the line above
        os._exit(1)


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_runs(lines: list[str]) -> list[Run]:
    runs = []
    for line in lines:
        parts = line.split()
        if len(parts) == 4:
            try:
                token = None if parts[1] == "None" else int(parts[1])
                runs.append(Run(int(parts[0]), token, float(parts[2]), float(parts[3])))
            except ValueError:
                continue  # a line cut short by a SIGKILL mid-write cannot happen (one write)
    return sorted(runs, key=lambda run: run.start)


def read_journal(path: str) -> list[Run]:
    with open(path) as journal:
        return parse_runs(journal.readlines())


def tail_journal(path: str, size: int = 8192) -> list[Run]:
    """The last runs of the journal (a few dozen), cheaply."""
    try:
        with open(path, "rb") as journal:
            journal.seek(0, os.SEEK_END)
            journal.seek(max(journal.tell() - size, 0))
            lines = journal.read().decode("ascii", "replace").splitlines()
    except OSError:
        return []
    return parse_runs(lines[1:] if len(lines) > 1 else lines)


def read_forks(path: str) -> dict[int, Child]:
    children: dict[int, Child] = {}
    try:
        with open(path) as forks:
            lines = forks.readlines()
    except OSError:
        return children
    for line in lines:
        parts = line.split()
        if parts[:1] == ["start"] and len(parts) == 5:
            children[int(parts[1])] = Child(int(parts[2]), parts[3] == "1", float(parts[4]))
    for line in lines:
        parts = line.split()
        if parts[:1] == ["end"] and len(parts) == 6 and int(parts[1]) in children:
            child = children[int(parts[1])]
            child.calls, child.saw_leader = int(parts[2]), int(parts[3])
            child.stopped, child.ended = parts[4] == "1", float(parts[5])
    return children


def same_identity_errors(path: str) -> Counter[int]:
    """How many same-identity ERROR lines each process logged."""
    errors: Counter[int] = Counter()
    with contextlib.suppress(OSError), open(path, errors="replace") as log:
        for line in log:
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[2] == "ERROR" and SAME_IDENTITY_ERROR in parts[3]:
                errors[int(parts[1])] += 1
    return errors


def check(runs: list[Run], pauses: dict[int, list[tuple[float, float]]], margin: float, *,
          children: Collection[int] = (), tampers: Sequence[Tamper] = (),
          identities: dict[int, str] | None = None, releases: Sequence[float] = (),
          lease_duration: float = 1.0, ended: float = float("inf")) -> dict[str, float]:
    """Count the violations of the promise in ``runs`` (sorted by start).

    The promise covers a body that finishes within ``margin`` (lease_duration - renew_deadline)
    of its leadership check: only then is it sure to end before anyone else may lead. A body
    that took longer was paused or starved of CPU mid-way — the case fencing tokens exist for —
    so its end is not held against the next leader; its start still is. Runs are told apart by
    process id: two processes with one identity, or a forked child, are two processes.

    ``tampers``: leases deleted or rewritten at a known moment. No process may take the lease
    over with a new token less than one lease duration after that (a follower judges expiry
    from the moment it saw the change) — except, after a delete, the processes of the deleted
    record's holder, which recreate it at once. Only tampers with no release (a SIGTERM in
    ``releases``) and no other delete within that lease duration, ending before ``ended``, are
    checked. Deleting garbage (an unreadable record, token -1) is no tamper here: nobody holds
    garbage, so its deletion cuts short no holder's lease; the delete of a live record before
    it is still checked.
    """
    identities = identities or {}
    tampers = [tamper for tamper in tampers if not (tamper.kind == "delete" and tamper.token < 0)]
    interrupted = {run for run in runs
                   if any(run.start < stop < run.end for stop, _ in pauses.get(run.pid, []))}
    overran = {run for run in runs if run.end - run.start > margin}
    overlaps = 0
    latest_end: dict[int, float] = {}
    for run in runs:
        if any(pid != run.pid and run.start < end for pid, end in latest_end.items()):
            overlaps += 1
        if run not in interrupted and run not in overran:
            latest_end[run.pid] = max(latest_end.get(run.pid, 0.0), run.end)
    token_violations = 0
    handovers = 0
    previous: Run | None = None
    highest = -1
    tokened = [run for run in runs if run.token is not None]
    for run in tokened:
        assert run.token is not None
        if previous is not None and (run.pid != previous.pid or run.token != previous.token):
            handovers += 1  # to another process, or the same process lost and regained it
            if run.token <= highest:
                token_violations += 1
        highest = max(highest, run.token)
        previous = run
    # Takeovers after a delete or a rewrite.
    slack = 0.25 * lease_duration  # a journaled start is stamped a little before the check
    early = checked = 0
    earliest = float("inf")
    for tamper in tampers:
        until = tamper.at + lease_duration
        if until > ended or any(tamper.at - 0.01 <= release <= until for release in releases) \
                or any(other is not tamper and other.kind == "delete"
                       and tamper.at <= other.at <= until for other in tampers):
            continue
        checked += 1
        exempt = ({pid for pid, identity in identities.items() if identity == tamper.holder}
                  if tamper.kind == "delete" else set())
        # A takeover is a process leading with a token it did not lead with before the tamper
        # (a higher one, or — a violation in itself — the same one as somebody else).
        before = {(run.pid, run.token) for run in tokened if run.start < tamper.at}
        first = next((run for run in tokened if run.start >= tamper.at
                      and (run.pid, run.token) not in before and run.pid not in exempt), None)
        if first is None:
            continue
        earliest = min(earliest, first.start - tamper.at)
        if first.start < until - slack:
            early += 1
    longest_gap = max((b.start - a.end for a, b in zip(runs, runs[1:])), default=0.0)
    return {"runs": len(runs), "handovers": handovers, "overlaps": overlaps,
            "token_violations": token_violations, "interrupted_by_pause": len(interrupted),
            "overran_without_pause": len(overran - interrupted),
            "untokened": len(runs) - len(tokened),
            "child_runs": sum(1 for run in runs if run.pid in children),
            "early_takeovers": early, "tampers_checked": checked,
            "earliest_takeover": earliest, "longest_gap": longest_gap}


class FakeApiServer:
    """The fake Kubernetes API server (tests/k8s_api.py) as a process, with its admin endpoints."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, FAKE_API, "--port", "0"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        text=True,
                                        preexec_fn=functools.partial(end_with_harness,
                                                                     os.getpid()))
        # Straight to 127.0.0.1, whatever proxy the environment names.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            assert self.process.stdout is not None
            self.url = self.process.stdout.readline().strip()
            if not self.url.startswith("http://"):
                raise RuntimeError(f"the fake Kubernetes API server ({FAKE_API}) did not start")
        except BaseException:
            self.stop()
            raise

    def admin(self, method: str, path: str, document: dict[str, Any] | None = None) -> Any:
        data = None if document is None else json.dumps(document).encode()
        request = urllib.request.Request(f"{self.url}/_fake/{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with self._opener.open(request, timeout=10) as response:
            return json.loads(response.read())

    def add_fault(self, fault: dict[str, Any]) -> None:
        self.admin("POST", "faults", fault)

    def clear_faults(self) -> None:
        self.admin("DELETE", "faults")

    def delete_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Delete the stored Lease, bypassing faults and the request log; return what it was."""
        try:
            deleted: dict[str, Any] = self.admin("DELETE", f"leases/{namespace}/{name}")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
        return deleted

    def requests(self) -> list[dict[str, Any]]:
        """Every API request the server answered (or dropped), oldest first."""
        logged: list[dict[str, Any]] = self.admin("GET", "requests")["requests"]
        return logged

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # it stops on SIGTERM, also with delayed answers pending
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class DatabaseLease:
    """The lease in a database server the harness owns: its server faults, and the lease
    changed by hand (deleted, overwritten with garbage) the way an operator would, with a
    client of its own."""

    def __init__(self, backend: str, directory: str) -> None:
        from own_servers import start_server

        self.backend = backend
        # Redis keeps every acknowledged write across a crash restart, as its docs advise.
        self.server = start_server(backend, Path(directory), persistent=backend == "redis")
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()

    # -- server faults

    def restart(self) -> float:
        """SIGKILL every server process and start it again; seconds until it answered."""
        began = time.monotonic()
        self.server.restart()
        return time.monotonic() - began

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()

    def drop_connections(self, pid: int) -> int:
        """Kill, from the server's side, every connection process ``pid`` has open to it;
        how many."""
        from own_servers import client_ports

        ports = client_ports(pid, self.server.port)
        if not ports:
            return 0
        if self.backend == "redis":
            client = self._redis()
            try:
                killed = 0
                for port in ports:
                    with contextlib.suppress(Exception):  # closed meanwhile
                        killed += int(client.execute_command(
                            "CLIENT", "KILL", "ADDR", f"127.0.0.1:{port}", "SKIPME", "yes"))
                return killed
            finally:
                client.close()
        from sqlalchemy import text

        with self._sql() as connection:
            if self.backend == "postgresql":
                rows = connection.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE client_port = ANY(:ports)"), {"ports": ports}).fetchall()
                return sum(1 for (done,) in rows if done)
            hosts = {f"127.0.0.1:{port}" for port in ports}
            ids = [row[0] for row in connection.execute(text(
                "SELECT ID, HOST FROM information_schema.PROCESSLIST")) if row[1] in hosts]
            killed = 0
            for thread_id in ids:
                with contextlib.suppress(Exception):  # ended meanwhile
                    connection.execute(text(f"KILL {int(thread_id)}"))
                    killed += 1
            return killed

    # -- the lease changed by hand

    def store(self) -> LeaseStore:
        if self.backend == "redis":
            from singleton_jobs import RedisLeaseStore

            return RedisLeaseStore(self.url, LEASE_NAME)
        from singleton_jobs import SQLLeaseStore

        return SQLLeaseStore(self.url, LEASE_NAME)

    def delete(self) -> tuple[str, int] | None:
        """Delete the lease record (the fence stays): its (holder, token or -1 if it was no
        lease record), or None if there was none. Atomic, so what was deleted is known."""
        if self.backend == "redis":
            from singleton_jobs.backends.redis import record_from_hash, record_key

            client = self._redis()
            try:
                pipe = client.pipeline(transaction=True)  # MULTI: read and delete as one
                key = record_key("singleton_jobs:", LEASE_NAME)
                pipe.type(key)
                pipe.hgetall(key)
                pipe.delete(key)
                kind, fields, deleted = pipe.execute(raise_on_error=False)
            finally:
                client.close()
            if not deleted:
                return None
            if kind not in (b"hash", "hash") or not isinstance(fields, dict):
                return "", -1
            gone = record_from_hash(fields)
            return gone.holder, gone.transitions if gone.readable else -1
        from sqlalchemy import text

        from singleton_jobs.lease import identity_problem

        with self._sql() as connection:
            row = connection.execute(text(
                "DELETE FROM singleton_jobs_leases WHERE name = :name "
                "RETURNING holder, lease_duration, transitions"), {"name": LEASE_NAME}).first()
        if row is None:
            return None
        holder, duration, transitions = row
        readable = (isinstance(holder, str) and (not holder or identity_problem(holder) is None)
                    and duration is not None and 0 <= float(duration) < float("inf")
                    and isinstance(transitions, int) and transitions >= 0)
        return str(holder), transitions if readable else -1

    def garbage(self, rng: random.Random) -> str | None:
        """Overwrite the record with content that is no lease record; what was written, or
        None if there was no record."""
        if self.backend == "redis":
            from singleton_jobs.backends.redis import record_key

            key = record_key("singleton_jobs:", LEASE_NAME)
            client = self._redis()
            try:
                if not client.exists(key):
                    return None
                choice = rng.randrange(3)
                if choice == 0:
                    client.delete(key)
                    client.set(key, os.urandom(rng.randrange(0, 64)))
                    return "a string key of random bytes"
                if choice == 1:
                    client.hset(key, mapping={"holder": f"bad\x01{rng.randrange(1000)}",
                                              "transitions": "-3", "lease_duration": "nan"})
                    return "holder with a control character, transitions -3, duration nan"
                client.hdel(key, "holder", "renew_time")
                return "fields holder and renew_time removed"
            finally:
                client.close()
        from sqlalchemy import text

        values = {"name": LEASE_NAME, "holder": f"bad\x01{rng.randrange(1000)}",
                  "duration": rng.choice([-1.0, 0.0, 1e12]),
                  "transitions": rng.choice([-7, -1, rng.randrange(0, 3)]),
                  "time": rng.choice([-1, 0, 2**62])}
        bump = rng.random() < 0.5
        version = ", version = version + 1" if bump else ""
        with self._sql() as connection:
            changed = connection.execute(text(
                "UPDATE singleton_jobs_leases SET holder = :holder, lease_duration = :duration, "
                "transitions = :transitions, acquire_time_us = :time, renew_time_us = :time"
                f"{version} WHERE name = :name"), values).rowcount
        if not changed:
            return None
        return (f"holder {values['holder']!r}, lease_duration {values['duration']:g}, "
                f"transitions {values['transitions']}, times {values['time']}"
                f"{', new version' if bump else ', same version'}")

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=10)

    @contextlib.contextmanager
    def _sql(self) -> Iterator[Any]:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        connect_args = {"connect_timeout": 10}
        engine = sqlalchemy.create_engine(self.url, poolclass=NullPool,
                                          isolation_level="AUTOCOMMIT",
                                          connect_args=connect_args)
        try:
            with engine.connect() as connection:
                yield connection
        finally:
            engine.dispose()


def api_fault(kind: str, rng: random.Random,
              args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """The fault the fake API server is given for ``kind``, and the seconds it stays in place.

    Each is bounded twice: by ``count`` matching requests, and by the window after which the
    harness clears it. Windows of 0.2 to 1.5 lease durations: a leader whose renews all fail
    for longer than ``renew_deadline`` steps down. Half the faults hit only writes (PUT), so
    followers keep reading the unchanged Lease, see it expire, and race the leader for it.
    """
    window = args.lease_duration * rng.uniform(0.2, 1.5)
    fault: dict[str, Any] = {"count": rng.randint(5, 60), "after": rng.random() < 0.5,
                             "methods": rng.choice([None, ["PUT"]])}
    if kind == "api-delay":
        # Longer than any request timeout (the elector's is at most renew_deadline).
        fault.update(kind="delay", seconds=args.renew_deadline * rng.uniform(1.2, 3.0))
    elif kind == "api-500":
        fault.update(kind="status", status=500)
    elif kind == "api-409":
        # A storm of lost races on every write; the real server never applies a 409'd write.
        fault.update(kind="status", status=409, methods=["PUT", "POST"], after=False)
    elif kind == "api-drop":
        fault.update(kind="drop")
    elif kind == "api-garbage":
        fault.update(kind="garbage")
    else:
        raise ValueError(f"not an API fault: {kind}")
    return fault, window


def describe_requests(logged: list[dict[str, Any]]) -> str:
    methods = Counter(entry["method"] for entry in logged)
    faulted = sum(1 for entry in logged if entry["faults"])
    by_method = ", ".join(f"{method} {count}" for method, count in sorted(methods.items()))
    return f"{len(logged)} ({by_method}); {faulted} met an injected fault"


def expected_seconds(kind: str, args: argparse.Namespace) -> float:
    """About how long the harness is busy with one fault of ``kind``, beyond the wait before it."""
    if kind == "pause":
        return 1.6 * args.lease_duration
    if kind in API_FAULTS:
        return 0.85 * args.lease_duration
    if kind in ("delete", "rewrite"):
        return 1.2 * args.lease_duration  # checked only if the run goes on for a lease after
    if kind in ("fork", "duplicate", "drop-connection"):
        return 0.2 * args.lease_duration  # waiting for a live leader, now and then
    if kind == "server-pause":
        return (1.2 * args.renew_deadline + 1.5 * args.lease_duration) / 2
    if kind == "restart":
        return 1.0
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="file",
                        help="a lease file (default), a Lease on the fake Kubernetes API "
                             "server started for the run, or a lease in a PostgreSQL, MariaDB "
                             "or Redis server started for the run")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    parser.add_argument("--quick", action="store_true", help="20 seconds of chaos")
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--fault-every", type=float, default=1.5,
                        help="mean seconds between faults")
    parser.add_argument("--lease-duration", type=float, default=None,
                        help="seconds (default 1; 2 with --backend kubernetes, where it must "
                             "be whole seconds, and with a database)")
    parser.add_argument("--renew-deadline", type=float, default=None,
                        help="seconds (default 0.5; 1 with --backend kubernetes or a database)")
    parser.add_argument("--retry-period", type=float, default=None, help="seconds (default 0.1)")
    parser.add_argument("--min-each", type=int, default=1,
                        help="inject every fault kind at least this many times, if the run is "
                             "long enough (default 1)")
    parser.add_argument("--faults", metavar="KIND,...",
                        help="draw only these fault kinds (to reproduce a finding)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--identity", help=argparse.SUPPRESS)
    parser.add_argument("--lease", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    parser.add_argument("--forks", help=argparse.SUPPRESS)
    parser.add_argument("--journal", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.duration = 20.0
    defaults = DEFAULT_TIMINGS[args.backend]
    for name, default in zip(("lease_duration", "renew_deadline", "retry_period"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.worker:
        return worker(args)
    kubernetes = args.backend == "kubernetes"
    database = args.backend in DATABASES
    if kubernetes and (not args.lease_duration.is_integer() or args.lease_duration < 1):
        parser.error(f"--lease-duration {args.lease_duration}: a Kubernetes Lease holds whole "
                     "seconds, at least 1")
    if args.replicas < 2:
        parser.error("--replicas: at least 2")

    from singleton_jobs import SingletonJobsError

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    directory = tempfile.mkdtemp(prefix="singleton_jobs-chaos-")
    lease = os.path.join(directory, "chaos.lease")
    journal = os.path.join(directory, "journal")
    forks = os.path.join(directory, "forks")
    log = os.path.join(directory, "replicas.log")
    fault_log = os.path.join(directory, "faults.log")
    timings = ["--lease-duration", str(args.lease_duration), "--renew-deadline",
               str(args.renew_deadline), "--retry-period", str(args.retry_period)]
    backend_args = ["--lease", lease]
    procs: dict[int, Replica] = {}
    finished: list[Replica] = []
    identities: dict[int, str] = {}
    menu = (PROCESS_FAULTS + (API_FAULTS if kubernetes else ["garbage"])
            + (SERVER_FAULTS if database else []) + DEPLOYMENT_FAULTS)
    if args.faults:
        wanted = args.faults.split(",")
        unknown = sorted(set(wanted) - set(menu))
        if unknown:
            parser.error(f"--faults: not a fault kind of this backend: {', '.join(unknown)} "
                         f"(choose from {', '.join(dict.fromkeys(menu))})")
        menu = [kind for kind in menu if kind in wanted]
    kinds = list(dict.fromkeys(menu))
    faults = dict.fromkeys(kinds, 0)
    skipped: Counter[str] = Counter()
    restarted_after_delete = 0
    held_after_tamper = 0
    duplicates_of_leader = 0
    tampers: list[Tamper] = []
    releases: list[float] = []  # when a SIGTERM was sent: the process may release the lease
    crashed: list[int] = []  # replicas that exited with an error of their own
    cpu: list[float] = []
    server: FakeApiServer | None = None
    served: list[dict[str, Any]] | None = None
    db: DatabaseLease | None = None
    restart_seconds: list[float] = []
    dropped = 0
    store: LeaseStore | None = None
    started = time.monotonic()

    def record(kind: str, text: str) -> None:
        note(fault_log, f"{time.monotonic():.6f} +{time.monotonic() - started:.3f}s {kind} "
                        f"{text}")

    def spawn(identity: str, ends_at: float | None = None) -> int:
        process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                                    "--backend", args.backend, *backend_args,
                                    "--identity", identity, "--journal", journal,
                                    "--log", log, "--forks", forks, *timings],
                                   stdin=subprocess.DEVNULL,
                                   preexec_fn=functools.partial(end_with_harness, os.getpid()))
        procs[process.pid] = Replica(process, time.monotonic(), identity, ends_at)
        identities[process.pid] = identity
        return process.pid

    def retire(pid: int) -> None:
        replica = procs.pop(pid)
        alive = time.monotonic() - replica.started
        used = cpu_seconds(pid)
        status = replica.process.wait(30)
        finished.append(replica)
        if alive > 5:
            cpu.append(used / alive)
        # SIGTERM stops a replica cleanly (0), or kills it before its handler is in (-SIGTERM).
        if status not in (0, -signal.SIGKILL, -signal.SIGTERM):
            crashed.append(pid)
            record("crash", f"pid {pid} ({replica.identity}) exited with status {status}")

    def signal_process(pid: int, signum: int) -> None:
        if signum == signal.SIGTERM:
            releases.append(time.monotonic())
        os.kill(pid, signum)
        if signum != signal.SIGCONT:
            os.kill(pid, signal.SIGCONT)  # a SIGTERM must not wait for a pause to end

    def end_duplicates() -> None:
        now = time.monotonic()
        for pid, replica in list(procs.items()):
            if replica.ends_at is not None and replica.ends_at <= now:
                signum = rng.choice([signal.SIGKILL, signal.SIGTERM])
                record("duplicate-end", f"pid {pid} ({replica.identity}) "
                                        f"{signal.Signals(signum).name}")
                signal_process(pid, signum)
                retire(pid)

    def sleep_until(when: float) -> None:
        """Sleep, ending same-identity duplicates whose time is up on the way."""
        while True:
            end_duplicates()
            now = time.monotonic()
            if now >= when:
                return
            due = [r.ends_at for r in procs.values() if r.ends_at is not None]
            time.sleep(max(min([when, *due]) - now, 0.0) + 0.001)

    def hold(kind: str, pid: int, seconds: float) -> None:
        """SIGSTOP ``pid`` for ``seconds``, then SIGCONT."""
        replica = procs[pid]
        record(kind, f"pid {pid} ({replica.identity}) for {seconds:.3f}s")
        stopped = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        sleep_until(time.monotonic() + seconds)
        if pid in procs:  # not a duplicate that ended meanwhile
            os.kill(pid, signal.SIGCONT)
        replica.paused.append((stopped, time.monotonic()))

    def current_leader() -> int | None:
        recent = [run for run in tail_journal(journal) if run.pid in procs]
        return recent[-1].pid if recent else None

    def live_leader(wait: float) -> int | None:
        """The process running the job right now (a run ended in the last 0.25 s), waiting up
        to ``wait`` seconds for one."""
        give_up = time.monotonic() + wait
        while True:
            runs = tail_journal(journal)
            if runs and runs[-1].pid in procs and time.monotonic() - runs[-1].end < 0.25:
                return runs[-1].pid
            if time.monotonic() >= give_up:
                return None
            sleep_until(time.monotonic() + 0.02)

    def lease_store() -> LeaseStore:
        nonlocal store
        if store is None:
            if kubernetes:
                from kubernetes import client

                from singleton_jobs.backends.kubernetes import KubernetesLeaseStore

                assert server is not None
                store = KubernetesLeaseStore(
                    LEASE_NAME, namespace=NAMESPACE,
                    api_client=client.ApiClient(client.Configuration(host=server.url)))
            elif db is not None:
                store = db.store()
            else:
                from singleton_jobs.backends.file import FileLeaseStore

                store = FileLeaseStore(lease)
        return store

    def delete_lease(leader: int) -> bool:
        """Delete the record under ``leader``; False if there was none."""
        at = time.monotonic()
        if db is not None:
            deleted_record = db.delete()
            if deleted_record is None:
                return False
            holder, token = deleted_record
            tampers.append(Tamper("delete", at, token, holder))
            record("delete", f"under pid {leader} ({identities[leader]}): record of "
                             f"{holder!r}, token {token}")
            return True
        if kubernetes:
            from singleton_jobs.backends.kubernetes import record_from_lease

            assert server is not None
            deleted = server.delete_lease(NAMESPACE, LEASE_NAME)
            if deleted is None:
                return False
            gone = record_from_lease(deleted)
        else:
            import filelock

            from singleton_jobs.backends.file import parse_record

            # Under the writers' lock, so that what was deleted is known exactly: a renew
            # cannot slip in between the read and the unlink.
            with filelock.FileLock(lease + ".lock", mode=0o600):
                try:
                    with open(lease, "rb") as handle:
                        data = handle.read()
                except FileNotFoundError:
                    return False
                os.unlink(lease)
            gone = parse_record(data)
        tampers.append(Tamper("delete", at, gone.transitions if gone.readable else -1,
                              gone.holder))
        record("delete", f"under pid {leader} ({identities[leader]}): record of "
                         f"{gone.holder!r}, token {gone.transitions}")
        return True

    def rewrite_lease(leader: int) -> bool:
        """Shorten the leader's record's lease duration through the store's compare-and-swap;
        False if there is no record, it is not the leader's, or the leader renewed in between
        each of ten tries."""
        try:
            target = lease_store()
            for _ in range(10):
                snapshot = target.get(timeout=5)
                if snapshot is None:
                    return False
                current, version = snapshot
                if not current.readable or current.holder != identities[leader]:
                    return False
                if kubernetes:
                    short = 1.0
                else:
                    short = round(args.lease_duration * rng.uniform(0.005, 0.1), 6)
                if current.lease_duration <= short:
                    return False
                at = time.monotonic()
                if target.update(current._replace(lease_duration=short), version,
                                 timeout=5) is not None:
                    tampers.append(Tamper("rewrite", at, current.transitions, current.holder))
                    record("rewrite", f"under pid {leader} ({current.holder}): lease_duration "
                                      f"{current.lease_duration:g} -> {short:g}, token "
                                      f"{current.transitions}")
                    return True
        except SingletonJobsError as error:
            record("rewrite", f"failed: {error}")
        return False

    def missing_kinds(remaining: float) -> list[str]:
        """The kinds still short of --min-each, once the time left gets tight for them."""
        missing = [kind for kind in kinds if faults[kind] < args.min_each]
        need = sum(args.fault_every + expected_seconds(kind, args) for kind in missing)
        return missing if remaining < 2 * need + 2 * args.lease_duration else []

    def inject(kind: str) -> bool:
        """Inject one fault of ``kind``; False if it could not be (no live leader, say)."""
        nonlocal restarted_after_delete, duplicates_of_leader, held_after_tamper, dropped
        if kind in SERVER_FAULTS:
            assert db is not None
            if kind == "restart":
                record("restart", "SIGKILL the server, start it again")
                restart_seconds.append(db.restart())
                record("restart", f"answering again after {restart_seconds[-1]:.3f}s")
                return True
            if kind == "server-pause":
                seconds = rng.uniform(1.2 * args.renew_deadline, 1.5 * args.lease_duration)
                record("server-pause", f"SIGSTOP the server for {seconds:.3f}s")
                db.pause()
                try:
                    sleep_until(time.monotonic() + seconds)
                finally:
                    db.resume()
                return True
            leader = live_leader(args.lease_duration)
            if leader is None:
                return False
            killed = db.drop_connections(leader)
            record("drop-connection", f"{killed} connections of pid {leader} "
                                      f"({identities[leader]}) killed by the server")
            dropped += killed
            return killed > 0
        if kind in API_FAULTS:
            assert server is not None
            fault, window = api_fault(kind, rng, args)
            record(kind, json.dumps(fault) + f" for {window:.3f}s")
            server.add_fault(fault)
            sleep_until(time.monotonic() + window)
            server.clear_faults()
            return True
        if kind in ("fork", "delete", "rewrite"):
            leader = live_leader(args.lease_duration)
            if leader is None:
                return False
            if kind == "fork":
                record("fork", f"SIGUSR1 to pid {leader} ({identities[leader]})")
                os.kill(leader, signal.SIGUSR1)
                return True
            if not (rewrite_lease(leader) if kind == "rewrite" else delete_lease(leader)):
                return False
            if rng.random() < 0.5:
                # Stop the leader for less than a lease: followers that misjudged the change
                # would take over while it cannot renew or recreate the record.
                hold("hold", leader, args.lease_duration * rng.uniform(0.3, 0.8))
                held_after_tamper += 1
            followers = [pid for pid, r in procs.items() if pid != leader and not r.duplicate]
            if kind == "delete" and followers and rng.random() < 0.5:
                follower = rng.choice(followers)
                identity = procs[follower].identity
                record("delete-restart", f"SIGKILL pid {follower} ({identity}), restarted")
                signal_process(follower, signal.SIGKILL)
                retire(follower)
                spawn(identity)
                restarted_after_delete += 1
            return True
        if kind == "duplicate":
            if sum(r.duplicate for r in procs.values()) >= MAX_DUPLICATES:
                return False
            leader = live_leader(args.lease_duration)
            regular = [pid for pid, r in procs.items() if not r.duplicate]
            twin = leader if leader is not None and rng.random() < 0.8 else rng.choice(regular)
            duplicates_of_leader += twin == leader
            lifetime = args.lease_duration * rng.uniform(1.5, 4.0)
            pid = spawn(procs[twin].identity, time.monotonic() + lifetime)
            what = ", the leader" if twin == leader else ""
            record("duplicate", f"pid {pid} with the identity of pid {twin} "
                                f"({procs[twin].identity}{what}) for {lifetime:.3f}s")
            return True
        leader = current_leader()
        if leader is None or rng.random() < 0.2:
            leader = rng.choice(list(procs))
        target = leader
        if kind == "garbage" and db is not None:
            written = db.garbage(rng)
            if written is None:
                return False
            record("garbage", written)
        elif kind == "garbage":
            record("garbage", "")
            with open(lease, "wb") as handle:
                handle.write(os.urandom(rng.randrange(0, 64)))
        elif kind == "pause":
            hold("pause", target, args.lease_duration * rng.uniform(1.2, 2.0))
        else:
            replica = procs[target]
            signum = signal.SIGKILL if kind == "kill" else signal.SIGTERM
            record(kind, f"pid {target} ({replica.identity})"
                         f"{' duplicate' if replica.duplicate else ', restarted'}")
            signal_process(target, signum)
            retire(target)
            if not replica.duplicate:
                spawn(replica.identity)
        return True

    where = f", Lease {NAMESPACE}/{LEASE_NAME} on the fake Kubernetes API" if kubernetes else ""
    if database:
        where = f", lease {LEASE_NAME!r} in an own {args.backend} server"
    print(f"chaos: {args.replicas} replicas, {args.duration:.0f} s{where}, lease "
          f"{args.lease_duration} s / renew {args.renew_deadline} s / retry "
          f"{args.retry_period} s, seed {seed}, directory {directory}", flush=True)
    try:
        if kubernetes:
            server = FakeApiServer()
            backend_args = ["--api", server.url]
        elif database:
            db = DatabaseLease(args.backend, directory)
            backend_args = ["--url", db.url]
        started = time.monotonic()
        for number in range(1, args.replicas + 1):
            spawn(f"replica-{number}")
        deadline = started + args.duration
        while time.monotonic() < deadline:
            pause = rng.expovariate(1 / args.fault_every)
            forced = missing_kinds(deadline - time.monotonic())
            if forced:  # leave time for each of them
                pause = min(pause, (deadline - time.monotonic()) / (len(forced) + 1))
            sleep_until(min(time.monotonic() + pause, deadline))
            if time.monotonic() >= deadline:
                break
            kind = rng.choice(forced or menu)
            if inject(kind):
                faults[kind] += 1
            else:
                skipped[kind] += 1
                record(kind, "skipped")
        elapsed = time.monotonic() - started
    finally:
        chaos_ended = time.monotonic()
        try:
            if server is not None:
                with contextlib.suppress(OSError):
                    server.clear_faults()  # so that stopping replicas can release the Lease
            for pid in list(procs):
                signal_process(pid, signal.SIGTERM)
                retire(pid)
            # Forked children run on their own for at most two lease durations.
            give_up = time.monotonic() + 2 * args.lease_duration + 10
            while time.monotonic() < give_up and any(
                    child.ended is None for child in read_forks(forks).values()):
                time.sleep(0.05)
            if server is not None:
                with contextlib.suppress(OSError):
                    served = server.requests()
        finally:
            if server is not None:
                server.stop()
            if db is not None:
                db.close()

    pauses: dict[int, list[tuple[float, float]]] = {}
    for replica in finished:
        pauses[replica.process.pid] = replica.paused
    children = read_forks(forks)
    runs = read_journal(journal)
    result = check(runs, pauses, args.lease_duration - args.renew_deadline,
                   children=set(children), tampers=tampers, identities=identities,
                   releases=releases, lease_duration=args.lease_duration, ended=chaos_ended)
    duplicates = [r for r in finished if r.duplicate]
    errors = same_identity_errors(log)
    duplicate_pids = {r.process.pid for r in duplicates}
    duplicate_runs = sum(1 for run in runs if run.pid in duplicate_pids)
    unfinished = sum(1 for child in children.values() if child.ended is None)
    saw_leader = sum(child.saw_leader for child in children.values())
    earliest = result["earliest_takeover"]
    earliest_text = ("no takeover followed one" if earliest == float("inf") else
                     f"the earliest came {earliest / args.lease_duration:.2f} x lease_duration "
                     "after")
    injected = ", ".join(f"{kind} {count}" for kind, count in faults.items())
    if skipped:
        injected += "; skipped (no live leader, or enough duplicates): " + ", ".join(
            f"{kind} {count}" for kind, count in sorted(skipped.items()))
    rows = [
        ("runtime", f"{elapsed:.1f} s"),
        ("job runs journaled", f"{result['runs']:.0f}  ({result['untokened']:.0f} without a "
                               "token: leadership lapsed between the check and the body)"),
        ("handovers", f"{result['handovers']:.0f}"),
        ("faults injected", injected),
        ("overlapping leadership intervals", f"{result['overlaps']:.0f}  (must be 0)"),
        ("fencing-token order violations", f"{result['token_violations']:.0f}  (must be 0)"),
        ("forked children", f"{len(children)} ({sum(c.parent_leading for c in children.values())}"
                            f" forked while leading, {sum(c.stopped for c in children.values())}"
                            f" called stop(), {unfinished} never finished); is_leader True "
                            f"{saw_leader} times in a child"),
        ("runs by forked children", f"{result['child_runs']:.0f}  (must be 0)"),
        ("same-identity duplicates", f"{len(duplicates)} ({duplicates_of_leader} of the leader); "
                                     f"{sum(1 for pid in duplicate_pids if errors[pid])} logged "
                                     f"the same-identity ERROR; {duplicate_runs} runs by "
                                     "duplicates (allowed once their twin's lease expired)"),
        ("early takeovers after delete/rewrite",
         f"{result['early_takeovers']:.0f}  (must be 0; {result['tampers_checked']:.0f} of "
         f"{len(tampers)} checked; {held_after_tamper} times the leader was then stopped for "
         f"0.3-0.8 lease; {restarted_after_delete} followers restarted right after a delete; "
         f"{earliest_text})"),
        ("replicas that crashed", f"{len(crashed)}  (must be 0: exited with an error of "
                                  "their own; see faults.log)"),
        ("runs interrupted by a pause", f"{result['interrupted_by_pause']:.0f}  (allowed: the "
                                        "body was running when SIGSTOP came)"),
        ("runs stalled past the margin", f"{result['overran_without_pause']:.0f}  (allowed: no "
                                         "SIGSTOP, but the body took longer than lease_duration "
                                         "- renew_deadline, e.g. starved of CPU)"),
        ("longest time with no job run", f"{result['longest_gap']:.2f} s = "
                                         f"{result['longest_gap'] / args.lease_duration:.2f} x "
                                         "lease_duration"),
        ("CPU per replica", f"{100 * max(cpu, default=0):.1f} % at most "
                            f"(each runs its job loop every 5 ms)"),
    ]
    if served is not None:
        rows.append(("API requests served", describe_requests(served)))
    if database:
        slowest = max(restart_seconds, default=0.0)
        rows.append(("server faults", f"{len(restart_seconds)} restarts (answering again after "
                                      f"{slowest:.2f} s at most), {faults.get('server-pause', 0)}"
                                      f" pauses, {dropped} connections of the leader killed"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    ok = (result["overlaps"] == 0 and result["token_violations"] == 0
          and result["child_runs"] == 0 and result["early_takeovers"] == 0
          and saw_leader == 0 and not crashed and result["runs"] > 0)
    print("chaos: PASS" if ok else "chaos: FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
