"""Chaos run: replicas contend for one lease while faults are injected; the journal is checked.

    python benchmarks/chaos.py                       # 60 s, 5 replicas, file backend
    python benchmarks/chaos.py --duration 600        # the long run quoted in the README
    python benchmarks/chaos.py --backend kubernetes  # one Lease on the fake Kubernetes API server

Each replica is a real process running a ``@leader_only`` job in a tight loop; every run is
appended to a shared journal as ``pid token start end`` (monotonic seconds: comparable across
processes on one Linux host). Faults are drawn at random, bounded in count and time: SIGKILL
(the replica is restarted), SIGSTOP for longer than the lease then SIGCONT, SIGTERM (graceful
stop with release; restarted), and the lease file overwritten with garbage.

With ``--backend kubernetes`` the harness starts the fake API server (tests/k8s_api.py) as a
process and the replicas contend for one Lease on it through ``KubernetesElector``. Garbage in
the lease file is replaced by API-server faults injected through its admin endpoints, each
bounded in count (matching requests) and time (it is cleared after a fraction of a lease):
latency longer than any request timeout, 500 answers, 409 storms on writes, dropped connections
and non-JSON answers; all but the 409s sometimes after the request was applied (a write whose
answer is lost). The replicas' log lines go to ``replicas.log`` in the run's directory, and the
table adds the number of API requests the server answered.

Afterwards the journal is checked for the one promise: job runs of different replicas never
overlap, and fencing tokens never go back. A run that a SIGSTOP interrupted mid-body (it began
before the pause and ended after it) is the documented exception — the case fencing tokens exist
for — and is counted separately. The exit status is non-zero if any violation is found.
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
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from singleton_jobs import Elector

FAKE_API = os.path.join(os.path.dirname(__file__), "..", "tests", "k8s_api.py")
LEASE_NAME = "chaos"
NAMESPACE = "default"
#: The fault kinds of each backend; the process faults are drawn as often as in the file run.
PROCESS_FAULTS = ["kill", "kill", "pause", "terminate"]
API_FAULTS = ["api-delay", "api-500", "api-409", "api-drop", "api-garbage"]


class Run(NamedTuple):
    pid: int
    token: int
    start: float
    end: float


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    started: float
    paused: list[tuple[float, float]] = field(default_factory=list)  # (SIGSTOP, SIGCONT)


# -- the replica ---------------------------------------------------------------------------------


def make_elector(args: argparse.Namespace) -> Elector:
    identity = f"chaos-{os.getpid()}"
    if args.backend == "kubernetes":
        from kubernetes import client

        from singleton_jobs import KubernetesElector

        api_client = client.ApiClient(client.Configuration(host=args.api))
        return KubernetesElector(LEASE_NAME, namespace=NAMESPACE, api_client=api_client,
                                 identity=identity, lease_duration=args.lease_duration,
                                 renew_deadline=args.renew_deadline,
                                 retry_period=args.retry_period)
    from singleton_jobs import FileElector

    return FileElector(args.lease, identity=identity, lease_duration=args.lease_duration,
                       renew_deadline=args.renew_deadline, retry_period=args.retry_period)


class _MonotonicStamp(logging.Filter):
    """Stamps log records with time.monotonic(), the clock of the journal."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.monotonic = time.monotonic()
        return True


def worker(args: argparse.Namespace) -> int:
    from singleton_jobs import leader_only

    if args.log:
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

    # A flag, not a threading.Event: Event.set() in a signal handler can deadlock with the
    # Event.wait() the handler interrupted (both take the same non-reentrant lock).
    terminated = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    elector.start()
    while not terminated:
        time.sleep(0.005)
        job(time.monotonic())
    elector.stop(release=True)
    return 0


# -- the harness ---------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def end_with_harness(harness: int) -> None:
    """Run in each child before it starts: SIGKILL it when the harness dies, however it dies
    (SIGKILL, a test's timeout), so no replica or server outlives the run, not even one the
    harness had paused with SIGSTOP. Linux only."""
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


def read_journal(path: str) -> list[Run]:
    runs = []
    with open(path) as journal:
        for line in journal:
            parts = line.split()
            if len(parts) == 4 and parts[1] != "None":
                runs.append(Run(int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])))
    return sorted(runs, key=lambda run: run.start)


def check(runs: list[Run], pauses: dict[int, list[tuple[float, float]]],
          margin: float) -> dict[str, float]:
    """Count the violations of the promise in ``runs`` (sorted by start).

    The promise covers a body that finishes within ``margin`` (lease_duration - renew_deadline)
    of its leadership check: only then is it sure to end before anyone else may lead. A body
    that took longer was paused or starved of CPU mid-way — the case fencing tokens exist for —
    so its end is not held against the next leader; its start still is.
    """
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
    for run in runs:
        if previous is not None and run.pid != previous.pid:
            handovers += 1
            if run.token <= highest:
                token_violations += 1
        elif previous is not None and run.token != previous.token:
            handovers += 1  # the same process lost and regained the lease
            if run.token <= highest:
                token_violations += 1
        highest = max(highest, run.token)
        previous = run
    longest_gap = max((b.start - a.end for a, b in zip(runs, runs[1:])), default=0.0)
    return {"runs": len(runs), "handovers": handovers, "overlaps": overlaps,
            "token_violations": token_violations, "interrupted_by_pause": len(interrupted),
            "overran_without_pause": len(overran - interrupted),
            "longest_gap": longest_gap}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["file", "kubernetes"], default="file",
                        help="a lease file (default), or a Lease on the fake Kubernetes API "
                             "server started for the run")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--fault-every", type=float, default=1.5,
                        help="mean seconds between faults")
    parser.add_argument("--lease-duration", type=float, default=1.0,
                        help="seconds (whole seconds with --backend kubernetes)")
    parser.add_argument("--renew-deadline", type=float, default=0.5)
    parser.add_argument("--retry-period", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lease", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    parser.add_argument("--journal", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    kubernetes = args.backend == "kubernetes"
    if kubernetes and (not args.lease_duration.is_integer() or args.lease_duration < 1):
        parser.error(f"--lease-duration {args.lease_duration}: a Kubernetes Lease holds whole "
                     "seconds, at least 1")

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    directory = tempfile.mkdtemp(prefix="singleton_jobs-chaos-")
    lease = os.path.join(directory, "chaos.lease")
    journal = os.path.join(directory, "journal")
    timings = ["--lease-duration", str(args.lease_duration), "--renew-deadline",
               str(args.renew_deadline), "--retry-period", str(args.retry_period)]
    backend_args = ["--lease", lease]
    replicas: dict[int, Replica] = {}
    finished: list[Replica] = []
    menu = PROCESS_FAULTS + (API_FAULTS if kubernetes else ["garbage"])
    faults = dict.fromkeys(menu, 0)
    cpu: list[float] = []
    server: FakeApiServer | None = None
    served: list[dict[str, Any]] | None = None

    def spawn() -> None:
        process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                                    *backend_args, "--journal", journal, *timings],
                                   stdin=subprocess.DEVNULL,
                                   preexec_fn=functools.partial(end_with_harness, os.getpid()))
        replicas[process.pid] = Replica(process, time.monotonic())

    def retire(pid: int) -> None:
        replica = replicas.pop(pid)
        alive = time.monotonic() - replica.started
        used = cpu_seconds(pid)
        replica.process.wait(30)
        finished.append(replica)
        if alive > 5:
            cpu.append(used / alive)

    def current_leader() -> int | None:
        try:
            runs = read_journal(journal)
        except OSError:
            return None
        recent = [run for run in runs[-50:] if run.pid in replicas]
        return recent[-1].pid if recent else None

    where = f", Lease {NAMESPACE}/{LEASE_NAME} on the fake Kubernetes API" if kubernetes else ""
    print(f"chaos: {args.replicas} replicas, {args.duration:.0f} s{where}, lease "
          f"{args.lease_duration} s / renew {args.renew_deadline} s / retry "
          f"{args.retry_period} s, seed {seed}, directory {directory}", flush=True)
    try:
        if kubernetes:
            server = FakeApiServer()
            backend_args = ["--backend", "kubernetes", "--api", server.url,
                            "--log", os.path.join(directory, "replicas.log")]
        started = time.monotonic()
        for _ in range(args.replicas):
            spawn()
        deadline = started + args.duration
        while time.monotonic() < deadline:
            pause = rng.expovariate(1 / args.fault_every)
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            if time.monotonic() >= deadline:
                break
            kind = rng.choice(menu)
            faults[kind] += 1
            if kind in API_FAULTS:
                assert server is not None
                fault, window = api_fault(kind, rng, args)
                server.add_fault(fault)
                time.sleep(window)
                server.clear_faults()
                continue
            leader = current_leader()
            if leader is None or rng.random() < 0.2:
                leader = rng.choice(list(replicas))
            target = leader
            if kind == "garbage":
                with open(lease, "wb") as handle:
                    handle.write(os.urandom(rng.randrange(0, 64)))
            elif kind == "pause":
                replica = replicas[target]
                stopped = time.monotonic()
                os.kill(target, signal.SIGSTOP)
                time.sleep(args.lease_duration * rng.uniform(1.2, 2.0))
                os.kill(target, signal.SIGCONT)
                replica.paused.append((stopped, time.monotonic()))
            else:
                os.kill(target, signal.SIGKILL if kind == "kill" else signal.SIGTERM)
                retire(target)
                spawn()
        elapsed = time.monotonic() - started
    finally:
        try:
            if server is not None:
                with contextlib.suppress(OSError):
                    server.clear_faults()  # so that stopping replicas can release the Lease
            for pid in list(replicas):
                replicas[pid].process.send_signal(signal.SIGCONT)
                replicas[pid].process.terminate()
                retire(pid)
            if server is not None:
                with contextlib.suppress(OSError):
                    served = server.requests()
        finally:
            if server is not None:
                server.stop()

    pauses: dict[int, list[tuple[float, float]]] = {}
    for replica in finished:
        pauses[replica.process.pid] = replica.paused
    result = check(read_journal(journal), pauses, args.lease_duration - args.renew_deadline)
    rows = [
        ("runtime", f"{elapsed:.1f} s"),
        ("job runs journaled", f"{result['runs']:.0f}"),
        ("handovers", f"{result['handovers']:.0f}"),
        ("faults injected", ", ".join(f"{kind} {count}" for kind, count in faults.items())),
        ("overlapping leadership intervals", f"{result['overlaps']:.0f}  (must be 0)"),
        ("fencing-token order violations", f"{result['token_violations']:.0f}  (must be 0)"),
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
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    ok = result["overlaps"] == 0 and result["token_violations"] == 0 and result["runs"] > 0
    print("chaos: PASS" if ok else "chaos: FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
