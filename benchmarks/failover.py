"""Crash failover and graceful handover times of each backend, with real processes.

Run from the repository root::

    python benchmarks/failover.py [--trials 20] [--lease-duration 1.0]
                                  [--renew-deadline 0.6] [--retry-period 0.1]
                                  [--backend file|postgresql|mysql|redis|sqlite|all[,...]]
                                  [--quick] [--verbose]

Three worker processes (this script with ``--worker``) campaign for one lease; each prints
``LEADER <identity> <monotonic> <token>`` when it becomes leader. Every trial lets the
leader lead for a moment, then either SIGKILLs it (crash) or sends SIGTERM, on which the
worker calls ``elector.stop(release=True)`` and exits (graceful), and measures from just
before the signal to the next worker's LEADER stamp. CLOCK_MONOTONIC is system-wide on
Linux, so stamps compare across processes. The victim is replaced at once, so three workers
always run; crash and graceful trials alternate within one run.

The lease is a file in a fresh temporary directory (``file``, the default), a row in a
SQLite file there (``sqlite``), a row in an own PostgreSQL or MariaDB, or keys in an own
Redis (tests/servers.py starts them; nothing else uses them). With several backends
(``--backend all`` or a comma-separated list) every backend has its three workers running at
once and the trials go round the backends, so that all of them are measured side by side
under the same load; the table then shows each backend's median and max (9 trials of each
kind by default, ``--quick`` 3).

Targets: crash failover / lease_duration <= 1.3; graceful handover / retry_period <= 0.1
where the store wakes followers on a release (PostgreSQL NOTIFY, Redis pub/sub) and <= 1.5
where followers poll (file, SQLite, MariaDB: the next poll comes within one retry period).
With one backend both are judged at p95, with several at the median (the max is shown too).
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from singleton_jobs import ConfigurationError, Elector, FileElector, check_timing

CRASH_TARGET = 1.3     # crash failover / lease_duration
GRACEFUL_TARGET = 1.5  # graceful handover / retry_period, where followers poll
#: Graceful handover / retry_period where a release wakes the followers at once.
NOTIFIED_TARGET = 0.1
NOTIFYING = ("postgresql", "redis")
BACKENDS = ("file", "postgresql", "mysql", "redis", "sqlite")
SERVERS = ("postgresql", "mysql", "redis")
WORKERS = 3
LEASE_NAME = "failover"
ELECTORS = {"file": "FileElector", "sqlite": "SQLElector on SQLite",
            "postgresql": "SQLElector on PostgreSQL", "mysql": "SQLElector on MariaDB",
            "redis": "RedisElector"}


def graceful_target(backend: str) -> float:
    return NOTIFIED_TARGET if backend in NOTIFYING else GRACEFUL_TARGET


# -- worker mode -------------------------------------------------------------------


def make_elector(backend: str, target: str, identity: str, timings: Timings) -> Elector:
    """The elector of ``backend`` for the lease at ``target`` (a path or a server's URL)."""
    options: dict[str, Any] = {"identity": identity, "lease_duration": timings.lease_duration,
                               "renew_deadline": timings.renew_deadline,
                               "retry_period": timings.retry_period}
    if backend == "file":
        return FileElector(target, **options)
    if backend == "redis":
        from singleton_jobs import RedisElector

        return RedisElector(target, LEASE_NAME, **options)
    from singleton_jobs import SQLElector

    return SQLElector(target, LEASE_NAME, **options)


def run_worker(backend: str, target: str, identity: str, timings: Timings) -> int:
    """Campaign for the lease at ``target`` until SIGTERM (graceful) or stdin closes."""
    out_lock = threading.Lock()

    def emit(*words: object) -> None:
        with out_lock:
            sys.stdout.write(" ".join(str(word) for word in words) + "\n")
            sys.stdout.flush()

    elector = make_elector(backend, target, identity, timings)

    def started_leading() -> None:
        stamp = time.monotonic()
        emit("LEADER", identity, repr(stamp), elector.fencing_token)

    def stopped_leading() -> None:
        emit("STOPPED", identity, repr(time.monotonic()))

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        elector.stop(release=True)
        emit("EXIT", identity, repr(time.monotonic()))
        raise SystemExit(0)

    elector.on_started_leading = started_leading
    elector.on_stopped_leading = stopped_leading
    signal.signal(signal.SIGTERM, on_sigterm)
    elector.start()
    # Ready once it read the lease (connections made, tables checked, release listener
    # registered), not merely started: the trials measure elections, not start-ups.
    deadline = time.monotonic() + 30
    while elector.leader is None and not elector.is_leader and time.monotonic() < deadline:
        time.sleep(0.005)
    emit("READY", identity, repr(time.monotonic()))
    # The parent keeps our stdin open; EOF means it went away, so we go too.
    sys.stdin.buffer.read()
    elector.stop(release=True)
    return 0


# -- the benchmark -----------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    lease_duration: float
    renew_deadline: float
    retry_period: float

    def as_args(self) -> list[str]:
        return ["--lease-duration", repr(self.lease_duration),
                "--renew-deadline", repr(self.renew_deadline),
                "--retry-period", repr(self.retry_period)]


@dataclass
class Worker:
    identity: str
    process: subprocess.Popen[bytes]
    ready_at: float | None = None
    leading: bool = False
    exited: bool = False


@dataclass(frozen=True)
class LeaderEvent:
    identity: str
    stamp: float
    token: int | None


@dataclass
class Cluster:
    """Worker processes on one lease, and what they reported."""

    backend: str
    path: str  # the lease file, or the database's URL
    timings: Timings
    workers: dict[str, Worker] = field(default_factory=dict)
    leaders: list[LeaderEvent] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    unexpected_stops: list[str] = field(default_factory=list)
    expected_stop: str | None = None
    #: (identity, "out" or "err", line or None at end of stream), from reader threads
    events: queue.Queue[tuple[str, str, str | None]] = field(
        default_factory=queue.Queue)
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def spawn(self) -> Worker:
        identity = f"worker-{next(self._names)}"
        command = [sys.executable, os.path.abspath(__file__), "--worker", self.path,
                   identity, "--worker-backend", self.backend, *self.timings.as_args()]
        process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        worker = Worker(identity, process)
        self.workers[identity] = worker
        assert process.stdout is not None and process.stderr is not None
        for stream_name, stream in (("out", process.stdout), ("err", process.stderr)):
            threading.Thread(target=self._read, args=(identity, stream_name, stream),
                             daemon=True, name=f"read-{identity}-{stream_name}").start()
        return worker

    def _read(self, identity: str, stream_name: str, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.events.put((identity, stream_name, line))
        self.events.put((identity, stream_name, None))

    @property
    def running(self) -> list[Worker]:
        return [worker for worker in self.workers.values() if not worker.exited]

    @property
    def current_leader(self) -> LeaderEvent | None:
        if not self.leaders:
            return None
        last = self.leaders[-1]
        worker = self.workers[last.identity]
        return last if worker.leading and not worker.exited else None

    def _handle(self, identity: str, stream_name: str, line: str | None) -> None:
        worker = self.workers[identity]
        if line is None:
            if stream_name == "out":
                worker.exited = True
                if identity != self.expected_stop:
                    raise RuntimeError(f"{self.backend}: {identity} exited unexpectedly; "
                                       f"worker stderr: {self.stderr_lines[-10:]}")
            return
        if stream_name == "err":
            self.stderr_lines.append(f"{identity}: {line}")
            return
        kind, _, rest = line.partition(" ")
        fields = rest.split()
        if kind == "READY":
            worker.ready_at = float(fields[1])
        elif kind == "LEADER":
            token = None if fields[2] == "None" else int(fields[2])
            self.leaders.append(LeaderEvent(identity, float(fields[1]), token))
            worker.leading = True
        elif kind == "STOPPED":
            worker.leading = False
            if identity != self.expected_stop:
                self.unexpected_stops.append(f"{identity} at {fields[1]}")

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Handle worker output until ``predicate()`` holds (True) or time is up."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                self._handle(*self.events.get(timeout=remaining))
            except queue.Empty:
                return predicate()
        return True

    def handle_for(self, seconds: float) -> None:
        """Keep handling worker output for ``seconds`` (a hold, not a sync)."""
        self.wait_until(lambda: False, seconds)

    def settled(self) -> bool:
        """All workers started and campaigning, and a live one leads."""
        running = self.running
        return (len(running) == WORKERS and all(w.ready_at is not None for w in running)
                and self.current_leader is not None)

    def trial(self, kind: str, hold: float, timeout: float) -> float:
        """One trial: seconds from the signal to the next worker's LEADER stamp."""
        while True:
            if not self.wait_until(self.settled, timeout):
                raise RuntimeError(f"{self.backend}: workers did not settle within "
                                   f"{timeout:.1f}s: {self.describe()}")
            leader = self.current_leader
            assert leader is not None
            newest_ready = max(w.ready_at or 0.0 for w in self.running)
            self.handle_for(max(leader.stamp, newest_ready) + hold - time.monotonic())
            if self.current_leader == leader:
                break  # otherwise leadership moved by itself: settle and hold again

        victim = self.workers[leader.identity]
        seen = len(self.leaders)
        self.expected_stop = victim.identity
        signum = signal.SIGKILL if kind == "crash" else signal.SIGTERM
        sent = time.monotonic()
        victim.process.send_signal(signum)

        def successor() -> LeaderEvent | None:
            return next((event for event in self.leaders[seen:]
                         if event.identity != victim.identity), None)

        if not self.wait_until(lambda: successor() is not None, timeout):
            raise RuntimeError(f"{self.backend}: no new leader within {timeout:.1f}s after "
                               f"{kind} of {victim.identity}: {self.describe()}")
        event = successor()
        assert event is not None
        if not self.wait_until(lambda: victim.exited, timeout):
            raise RuntimeError(f"{victim.identity} did not exit after {signum.name}")
        victim.process.wait(timeout)
        self.expected_stop = None
        self.spawn()
        return event.stamp - sent

    def describe(self) -> str:
        states = ", ".join(f"{w.identity}(ready={w.ready_at is not None}, "
                           f"exited={w.exited})" for w in self.workers.values()
                           if not w.exited)
        return f"running: {states}; last leader: {self.current_leader}"

    def close(self) -> None:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.kill()
        for worker in self.workers.values():
            try:
                worker.process.wait(5)
            except subprocess.TimeoutExpired:
                print(f"warning: {worker.identity} (pid {worker.process.pid}) "
                      "did not exit after SIGKILL", file=sys.stderr)
            for stream in (worker.process.stdin, worker.process.stdout,
                           worker.process.stderr):
                if stream is not None:
                    stream.close()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile of ``values`` (``fraction`` in [0, 1])."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> tuple[float, float, float, float]:
    return (min(values), statistics.median(values), percentile(values, 0.95),
            max(values))


def token_summary(cluster: Cluster) -> tuple[bool, str]:
    """Whether the fencing tokens of the terms seen only grew, and their span."""
    tokens = [event.token for event in cluster.leaders]
    int_tokens = [token for token in tokens if token is not None]
    increasing = tokens == int_tokens and int_tokens == sorted(set(int_tokens))
    span = f"{int_tokens[0]}..{int_tokens[-1]}" if int_tokens else "none"
    return increasing, span


def print_report(crash: Sequence[float], graceful: Sequence[float], timings: Timings,
                 cluster: Cluster) -> None:
    lease, retry = timings.lease_duration, timings.retry_period
    target = graceful_target(cluster.backend)
    where = "one lease file" if cluster.backend == "file" else "one lease"
    print(f"{ELECTORS[cluster.backend]} failover, {WORKERS} worker processes on {where}: "
          f"lease_duration={lease:g}s renew_deadline={timings.renew_deadline:g}s "
          f"retry_period={retry:g}s; {len(crash)} crash + {len(graceful)} graceful "
          "trials, interleaved")
    print()
    header = (f"{'measure':<32} {'min':>7} {'median':>7} {'p95':>7} {'max':>7} "
              f"{'target':>8}")
    print(header)
    print("-" * len(header))
    rows = [
        ("crash failover, ms", [v * 1000 for v in crash], ""),
        ("crash / lease_duration", [v / lease for v in crash], f"<= {CRASH_TARGET}"),
        ("graceful handover, ms", [v * 1000 for v in graceful], ""),
        ("graceful / retry_period", [v / retry for v in graceful], f"<= {target}"),
    ]
    for name, values, goal in rows:
        cells = " ".join(f"{value:>7.2f}" if "/" in name else f"{value:>7.1f}"
                         for value in summary(values))
        print(f"{name:<32} {cells} {goal:>8}".rstrip())
    print()

    increasing, span = token_summary(cluster)
    print(f"leader terms seen: {len(cluster.leaders)}; fencing tokens {span}, strictly "
          f"increasing: {'yes' if increasing else 'NO'}")
    if cluster.backend == "file":
        print(f"files left in the lease directory: {', '.join(cluster.leftovers) or '-'}")
    print(f"unexpected step-downs (not the signalled leader): "
          f"{len(cluster.unexpected_stops)}"
          + (f" {cluster.unexpected_stops[:5]}" if cluster.unexpected_stops else ""))
    print(f"worker stderr lines: {len(cluster.stderr_lines)}")
    for line in cluster.stderr_lines[:5]:
        print(f"  {line}")
    print()

    print("Headline (ratios from this run):")
    headline("crash failover / lease_duration:", [v / lease for v in crash],
             CRASH_TARGET)
    headline("graceful handover / retry_period:", [v / retry for v in graceful], target)
    ratio = statistics.median(crash) / statistics.median(graceful)
    print(f"  {'crash median / graceful median:':<34} {ratio:.1f}x")


def headline(label: str, ratios: Sequence[float], target: float) -> None:
    p95 = percentile(ratios, 0.95)
    verdict = "PASS" if p95 <= target else "FAIL"
    print(f"  {label:<34} median {statistics.median(ratios):.2f}  p95 {p95:.2f}  "
          f"max {max(ratios):.2f}  (target p95 <= {target}: {verdict})")


def print_side_by_side(results: dict[str, tuple[list[float], list[float]]],
                       clusters: dict[str, Cluster], unavailable: dict[str, str],
                       timings: Timings) -> None:
    lease, retry = timings.lease_duration, timings.retry_period
    trials = max((len(crash) for crash, _ in results.values()), default=0)
    print(f"Failover by backend, {WORKERS} worker processes per backend, all backends running "
          f"at once: lease_duration={lease:g}s renew_deadline={timings.renew_deadline:g}s "
          f"retry_period={retry:g}s; {trials} crash (SIGKILL) + {trials} graceful (SIGTERM, "
          "release) trials per backend, going round the backends")
    print()
    header = (f"{'backend':<11} | {'crash / lease_duration':^28} | "
              f"{'graceful / retry_period':^28} | {'tokens':<7} {'step-downs':>10}")
    sub = (f"{'':<11} | {'median':>6} {'max':>5} {'ms':>6} {'target':>8} | "
           f"{'median':>6} {'max':>5} {'ms':>6} {'target':>8} |")
    print(header)
    print(sub)
    print("-" * len(header))
    verdicts = []
    for backend, (crash, graceful) in results.items():
        cluster = clusters[backend]
        crash_ratio = [v / lease for v in crash]
        graceful_ratio = [v / retry for v in graceful]
        goal = graceful_target(backend)
        crash_ok = statistics.median(crash_ratio) <= CRASH_TARGET
        graceful_ok = statistics.median(graceful_ratio) <= goal
        increasing, _ = token_summary(cluster)
        verdicts.append((backend, crash_ok, graceful_ok, increasing))
        print(f"{backend:<11} | {statistics.median(crash_ratio):>6.2f} {max(crash_ratio):>5.2f} "
              f"{statistics.median(crash) * 1000:>6.0f} {'<= ' + str(CRASH_TARGET):>8} | "
              f"{statistics.median(graceful_ratio):>6.2f} {max(graceful_ratio):>5.2f} "
              f"{statistics.median(graceful) * 1000:>6.1f} {'<= ' + str(goal):>8} | "
              f"{'growing' if increasing else 'NOT':<7} {len(cluster.unexpected_stops):>10}")
    for backend, reason in unavailable.items():
        print(f"{backend:<11} | n/a: {reason}")
    print()
    print("ms: medians in milliseconds. tokens: the fencing tokens of the terms seen only grew. "
          "step-downs: a leader other than the signalled one stepped down.")
    stderr = {backend: len(cluster.stderr_lines) for backend, cluster in clusters.items()
              if cluster.stderr_lines}
    if stderr:
        print(f"worker stderr lines: {stderr}")
        for cluster in clusters.values():
            for line in cluster.stderr_lines[:3]:
                print(f"  {cluster.backend}: {line}")
    print()
    print("Headline (medians from this run, side by side):")
    for backend, crash_ok, graceful_ok, increasing in verdicts:
        print(f"  {backend:<11} crash {'PASS' if crash_ok else 'FAIL'}, graceful "
              f"{'PASS' if graceful_ok else 'FAIL'}, tokens "
              f"{'PASS' if increasing else 'FAIL'}")


def exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run_benchmark(backends: Sequence[str], trials: int, timings: Timings, hold: float,
                  verbose: bool) -> int:
    from own_servers import Unavailable, start_server

    directory = tempfile.mkdtemp(prefix="singleton_jobs-failover-")
    timeout = 5 * timings.lease_duration + 10
    clusters: dict[str, Cluster] = {}
    results: dict[str, tuple[list[float], list[float]]] = {}
    unavailable: dict[str, str] = {}
    servers: list[Any] = []
    # SIGTERM on the benchmark unwinds through the finally below, which kills the workers.
    signal.signal(signal.SIGTERM, exit_on_signal)
    try:
        for backend in backends:
            if backend == "file":
                target = os.path.join(directory, "leader.lease")
            elif backend == "sqlite":
                target = f"sqlite:///{os.path.join(directory, 'leases.db')}"
            else:
                try:
                    server = start_server(backend, Path(directory))
                except Unavailable as exc:
                    unavailable[backend] = str(exc)
                    continue
                servers.append(server)
                target = server.url
            clusters[backend] = Cluster(backend, target, timings)
            results[backend] = ([], [])
        for cluster in clusters.values():
            for _ in range(WORKERS):
                cluster.spawn()
        for index in range(2 * trials):
            kind = "crash" if index % 2 == 0 else "graceful"
            for backend, cluster in clusters.items():
                seconds = cluster.trial(kind, hold, timeout)
                results[backend][0 if kind == "crash" else 1].append(seconds)
                if verbose:
                    print(f"trial {index + 1:>3}/{2 * trials} {backend:<10} {kind:<8} "
                          f"{seconds * 1000:7.1f} ms", file=sys.stderr, flush=True)
    finally:
        for cluster in clusters.values():
            cluster.close()
        for server in servers:
            server.close()
        if "file" in clusters:
            clusters["file"].leftovers = sorted(
                name for name in os.listdir(directory)
                if name.startswith("leader.lease"))
        shutil.rmtree(directory, ignore_errors=True)
    if len(backends) == 1 and clusters:
        (backend,) = clusters
        print_report(*results[backend], timings, clusters[backend])
    else:
        print_side_by_side(results, clusters, unavailable, timings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Crash failover and graceful handover times of each backend.")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials of each kind (crash and graceful) per backend (default "
                             "20 with one backend, 9 with several)")
    parser.add_argument("--backend", default="file",
                        help="file (default), postgresql, mysql, redis, sqlite, or several "
                             "comma-separated, or all")
    parser.add_argument("--quick", action="store_true", help="3 trials of each kind")
    parser.add_argument("--lease-duration", type=float, default=1.0)
    parser.add_argument("--renew-deadline", type=float, default=0.6)
    parser.add_argument("--retry-period", type=float, default=0.1)
    parser.add_argument("--hold", type=float, default=0.3,
                        help="seconds each leader leads before it is signalled")
    parser.add_argument("--verbose", action="store_true",
                        help="print each trial's time to stderr as it ends")
    parser.add_argument("--worker", nargs=2, metavar=("TARGET", "IDENTITY"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--worker-backend", default="file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    timings = Timings(args.lease_duration, args.renew_deadline, args.retry_period)
    try:
        check_timing(timings.lease_duration, timings.renew_deadline, timings.retry_period)
    except ConfigurationError as exc:
        parser.error(str(exc))
    if args.worker:
        return run_worker(args.worker_backend, args.worker[0], args.worker[1], timings)
    backends = [name.strip() for name in args.backend.split(",") if name.strip()]
    if "all" in backends:
        backends = list(BACKENDS)
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        parser.error(f"--backend: choose from {', '.join(BACKENDS)} or all")
    backends = list(dict.fromkeys(backends))
    trials = args.trials
    if trials is None:
        trials = 3 if args.quick else 20 if len(backends) == 1 else 9
    if trials < 1:
        parser.error("--trials must be positive")
    return run_benchmark(backends, trials, timings, args.hold, args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
