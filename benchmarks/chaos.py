"""Chaos run: replicas contend for one lease while faults are injected; the journal is checked.

    python benchmarks/chaos.py                       # 60 s, 5 replicas, file backend
    python benchmarks/chaos.py --duration 600        # the long run quoted in the README

Each replica is a real process running a ``@leader_only`` job in a tight loop; every run is
appended to a shared journal as ``pid token start end`` (monotonic seconds: comparable across
processes on one Linux host). Faults are drawn at random, bounded in count and time: SIGKILL
(the replica is restarted), SIGSTOP for longer than the lease then SIGCONT, SIGTERM (graceful
stop with release; restarted), and the lease file overwritten with garbage.

Afterwards the journal is checked for the one promise: job runs of different replicas never
overlap, and fencing tokens never go back. A run that a SIGSTOP interrupted mid-body (it began
before the pause and ended after it) is the documented exception — the case fencing tokens exist
for — and is counted separately. The exit status is non-zero if any violation is found.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import NamedTuple


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


def worker(args: argparse.Namespace) -> int:
    from singleton_jobs import FileElector, leader_only

    elector = FileElector(args.lease, identity=f"chaos-{os.getpid()}",
                          lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
                          retry_period=args.retry_period)
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


def check(runs: list[Run], pauses: dict[int, list[tuple[float, float]]]) -> dict[str, float]:
    interrupted = {run for run in runs
                   if any(run.start < stop < run.end for stop, _ in pauses.get(run.pid, []))}
    overlaps = 0
    latest_end: dict[int, float] = {}
    for run in runs:
        if run in interrupted:
            continue
        if any(pid != run.pid and run.start < end for pid, end in latest_end.items()):
            overlaps += 1
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
            "longest_gap": longest_gap}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--fault-every", type=float, default=1.5,
                        help="mean seconds between faults")
    parser.add_argument("--lease-duration", type=float, default=1.0)
    parser.add_argument("--renew-deadline", type=float, default=0.5)
    parser.add_argument("--retry-period", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lease", help=argparse.SUPPRESS)
    parser.add_argument("--journal", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    directory = tempfile.mkdtemp(prefix="singleton_jobs-chaos-")
    lease = os.path.join(directory, "chaos.lease")
    journal = os.path.join(directory, "journal")
    timings = ["--lease-duration", str(args.lease_duration), "--renew-deadline",
               str(args.renew_deadline), "--retry-period", str(args.retry_period)]
    replicas: dict[int, Replica] = {}
    finished: list[Replica] = []
    faults = {"kill": 0, "pause": 0, "terminate": 0, "garbage": 0}
    cpu: list[float] = []

    def spawn() -> None:
        process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                                    "--lease", lease, "--journal", journal, *timings],
                                   stdin=subprocess.DEVNULL)
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

    print(f"chaos: {args.replicas} replicas, {args.duration:.0f} s, lease "
          f"{args.lease_duration} s / renew {args.renew_deadline} s / retry "
          f"{args.retry_period} s, seed {seed}, directory {directory}", flush=True)
    started = time.monotonic()
    try:
        for _ in range(args.replicas):
            spawn()
        deadline = started + args.duration
        while time.monotonic() < deadline:
            pause = rng.expovariate(1 / args.fault_every)
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            if time.monotonic() >= deadline:
                break
            kind = rng.choice(["kill", "kill", "pause", "terminate", "garbage"])
            leader = current_leader()
            if leader is None or rng.random() < 0.2:
                leader = rng.choice(list(replicas))
            target = leader
            faults[kind] += 1
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
        for pid in list(replicas):
            replicas[pid].process.send_signal(signal.SIGCONT)
            replicas[pid].process.terminate()
            retire(pid)

    pauses: dict[int, list[tuple[float, float]]] = {}
    for replica in finished:
        pauses[replica.process.pid] = replica.paused
    result = check(read_journal(journal), pauses)
    rows = [
        ("runtime", f"{elapsed:.1f} s"),
        ("job runs journaled", f"{result['runs']:.0f}"),
        ("handovers", f"{result['handovers']:.0f}"),
        ("faults injected", ", ".join(f"{kind} {count}" for kind, count in faults.items())),
        ("overlapping leadership intervals", f"{result['overlaps']:.0f}  (must be 0)"),
        ("fencing-token order violations", f"{result['token_violations']:.0f}  (must be 0)"),
        ("runs interrupted by a pause", f"{result['interrupted_by_pause']:.0f}  (allowed: the "
                                        "body was running when SIGSTOP came)"),
        ("longest time with no job run", f"{result['longest_gap']:.2f} s = "
                                         f"{result['longest_gap'] / args.lease_duration:.2f} x "
                                         "lease_duration"),
        ("CPU per replica", f"{100 * max(cpu, default=0):.1f} % at most "
                            f"(each runs its job loop every 5 ms)"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    ok = result["overlaps"] == 0 and result["token_violations"] == 0 and result["runs"] > 0
    print("chaos: PASS" if ok else "chaos: FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
