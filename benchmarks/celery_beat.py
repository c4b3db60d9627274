"""Celery beat on several replicas: ``singleton_jobs.celery`` side by side with celery-redbeat.

    python benchmarks/celery_beat.py            # about 6 minutes

Both run real ``celery beat`` processes of one app (``tests/celery_beat_app.py``: one periodic
task every second) and one real worker, with the broker on the Redis server at 127.0.0.1:6379
and the lease (singleton_jobs) or the lock and the schedule (redbeat) on a Redis server of
their own, started here, so that its request count is theirs alone. The worker journals every
message it receives. Measured, for each:

1. **Failover after SIGKILL** of the leading beat, at each one's documented defaults
   (singleton_jobs: lease 15 s, retry 2 s; redbeat: lock timeout 5 × ``beat_max_loop_interval``
   = 1,500 s, a follower polling the lock every 300 s) and at equal timings (redbeat's lock
   timeout 15 s and a 2 s loop interval). A failover longer than a minute is not waited for:
   the lock's remaining time to live at the kill is printed instead.
2. **Requests per minute** on the lease's Redis server, two beats in a steady state (defaults).
3. **Duplicate and lost sends under faults**: three beats for ``--fault-seconds``, short equal
   timings (lease or lock 4 s, retry or loop 0.5 s); every 8 s the leading beat is SIGKILLed
   (and restarted) or SIGSTOPped for 6 s (then resumed). A duplicate is two messages less than
   half a second apart; lost is the number of due times without a message (the run's length in
   seconds, less the messages received that were not duplicates).

The figures depend on this machine; the ratios in one run are what the README quotes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import own_servers

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
BROKER = "redis://127.0.0.1:6379/0"
INTERVAL = 1.0


@dataclass
class Contender:
    name: str
    env: dict[str, str]
    scheduler: str
    lead_line: str        # a beat's log line that says it leads
    lock_key: str | None = None


def contender(name: str, lease_url: str, timings: str) -> Contender:
    """``timings``: ``defaults``, ``equal`` (15 s / 2 s) or ``short`` (4 s / 0.5 s)."""
    lease = f"bench-{uuid.uuid4().hex[:10]}"
    env = {"BEAT_LEASE": lease, "BEAT_LEASE_URL": lease_url, "BEAT_PLAIN": "1"}
    if name == "singleton_jobs":
        lease_duration, renew_deadline, retry = {"defaults": ("15", "10", "2"),
                                                 "equal": ("15", "10", "2"),
                                                 "short": ("4", "3", "0.5")}[timings]
        env.update(BEAT_LEASE_DURATION=lease_duration, BEAT_RENEW_DEADLINE=renew_deadline,
                   BEAT_RETRY_PERIOD=retry, BEAT_MAX_LOOP_INTERVAL="0")
        return Contender(name, env, "singleton_jobs.celery:LeaderScheduler", "became leader of")
    env["BEAT_REDBEAT"] = "1"
    if timings == "defaults":
        env["BEAT_MAX_LOOP_INTERVAL"] = "0"
    else:
        lock, loop = {"equal": ("15", "2"), "short": ("4", "0.5")}[timings]
        env.update(BEAT_REDBEAT_LOCK_TIMEOUT=lock, BEAT_MAX_LOOP_INTERVAL=loop)
    return Contender(name, env, "redbeat.RedBeatScheduler", "beat: Acquired lock",
                     lock_key=f"{lease}:lock")


@dataclass
class Fleet:
    who: Contender
    directory: Path
    beats: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[int, Path] = field(default_factory=dict)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.journal = self.directory / f"received-{uuid.uuid4().hex[:8]}"
        self.queue = f"bench-{uuid.uuid4().hex[:10]}"
        self.env = {**os.environ, **self.who.env, "BEAT_BROKER": BROKER,
                    "BEAT_QUEUE": self.queue, "BEAT_JOURNAL": str(self.journal),
                    "BEAT_INTERVAL": str(INTERVAL),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), str(HERE.parent),
                                                                os.environ.get("PYTHONPATH")]))}

    def _celery(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "celery", "-A", "celery_beat_app",
                                     *args], stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def worker(self) -> None:
        log = self.directory / f"worker-{self.queue}.log"
        self.others.append(self._celery(log, "worker", "-Q", self.queue, "--pool", "solo",
                                        "-l", "info"))
        own_servers.wait_for(lambda: "ready." in log.read_text(errors="replace"), 60,
                             "the worker to start")

    def beat(self, index: int) -> None:
        log = self.logs.setdefault(index, self.directory / f"beat-{self.queue}-{index}.log")
        self.beats[index] = self._celery(log, "beat", "-S", self.who.scheduler, "-s",
                                         str(self.directory / f"schedule-{self.queue}-{index}"),
                                         "-l", "info")

    def leader(self) -> int | None:
        """The beat whose latest lead line is the most recent, among live ones."""
        best: tuple[float, int] | None = None
        for index, log in self.logs.items():
            process = self.beats.get(index)
            if process is None or process.poll() is not None or not log.exists():
                continue
            lines = [line for line in log.read_text(errors="replace").splitlines()
                     if self.who.lead_line in line]
            if lines:
                stamp = lines[-1][1:24]  # [2026-11-29 08:45:27,185: ...
                if best is None or stamp > str(best[0]):
                    best = (stamp, index)  # type: ignore[assignment]
        return None if best is None else best[1]

    def received(self) -> list[float]:
        if not self.journal.exists():
            return []
        return sorted(float(line.split()[3]) for line in self.journal.read_text().splitlines())

    def close(self) -> None:
        for process in [*self.beats.values(), *self.others]:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait(30)


def failover(who: Contender, directory: Path, lease_url: str) -> str:
    fleet = Fleet(who, directory)
    try:
        fleet.worker()
        fleet.beat(0)
        own_servers.wait_for(lambda: fleet.leader() == 0, 60, "the first beat to lead", 0.1)
        fleet.beat(1)
        time.sleep(3)  # the second one is up and following
        own_servers.wait_for(lambda: len(fleet.received()) >= 2, 60, "sends", 0.1)
        remaining = None
        if who.lock_key:
            import redis

            remaining = redis.Redis.from_url(lease_url).pttl(who.lock_key) / 1000
        fleet.beats[0].kill()
        killed = time.time()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = [at for at in fleet.received() if at > killed + 0.05]
            if after:
                return f"{after[0] - killed:.1f} s"
            time.sleep(0.1)
        if remaining is not None:
            return f"> 60 s (lock TTL {remaining:.0f} s)"
        return "> 60 s"
    finally:
        fleet.close()


def requests_per_minute(who: Contender, directory: Path, server: object,
                        seconds: float) -> float:
    fleet = Fleet(who, directory)
    counter = own_servers.counter_for(server)  # type: ignore[arg-type]
    try:
        fleet.worker()
        fleet.beat(0)
        own_servers.wait_for(lambda: fleet.leader() == 0, 60, "the first beat to lead", 0.1)
        fleet.beat(1)
        time.sleep(5)
        before, _ = counter.snapshot()
        time.sleep(seconds)
        after, _ = counter.snapshot()
        return (after - before) * 60 / seconds
    finally:
        counter.close()
        fleet.close()


def faults(who: Contender, directory: Path, seconds: float) -> tuple[int, int, int, int]:
    """(received, duplicates, lost, faults) over ``seconds`` of faults every 8 s."""
    fleet = Fleet(who, directory)
    try:
        fleet.worker()
        for index in range(3):
            fleet.beat(index)
        own_servers.wait_for(lambda: fleet.leader() is not None, 60, "a beat to lead", 0.1)
        own_servers.wait_for(lambda: len(fleet.received()) >= 2, 60, "sends", 0.1)
        start = time.time()
        count = 0
        while time.time() - start < seconds:
            time.sleep(8)
            leader = fleet.leader()
            if leader is None:
                continue
            count += 1
            if count % 2:
                fleet.beats[leader].kill()
                fleet.beats[leader].wait(10)
                time.sleep(1)
                fleet.beat(leader)
            else:
                fleet.beats[leader].send_signal(signal.SIGSTOP)
                time.sleep(6)
                fleet.beats[leader].send_signal(signal.SIGCONT)
        end = time.time()
        time.sleep(3)
        got = [at for at in fleet.received() if start <= at <= end]
        duplicates = sum(1 for a, b in zip(got, got[1:]) if b - a < INTERVAL / 2)
        lost = max(round((end - start) / INTERVAL) - (len(got) - duplicates), 0)
        return len(got), duplicates, lost, count
    finally:
        fleet.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count-seconds", type=float, default=60.0)
    parser.add_argument("--fault-seconds", type=float, default=90.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="celery-beat-bench-") as temp:
        directory = Path(temp)
        server = own_servers.start_server("redis", directory)
        try:
            lease_url = server.url
            rows = []
            for name in ("singleton_jobs", "redbeat"):
                defaults = failover(contender(name, lease_url, "defaults"), directory, lease_url)
                equal = failover(contender(name, lease_url, "equal"), directory, lease_url)
                per_minute = requests_per_minute(contender(name, lease_url, "defaults"),
                                                 directory, server, args.count_seconds)
                received, duplicates, lost, count = faults(contender(name, lease_url, "short"),
                                                           directory, args.fault_seconds)
                rows.append((name, defaults, equal, per_minute, received, duplicates, lost,
                             count))
                print(f"{name}: failover {defaults} (defaults), {equal} (equal timings); "
                      f"{per_minute:.0f} requests/min; faults: {count}, received {received}, "
                      f"duplicates {duplicates}, lost {lost}", flush=True)
        finally:
            server.close()
    print()
    print(f"{'':16} {'failover, defaults':>28} {'failover, 15 s':>15} {'requests/min':>13} "
          f"{'duplicates':>11} {'lost':>5}")
    for name, defaults, equal, per_minute, received, duplicates, lost, count in rows:
        print(f"{name:16} {defaults[:28]:>28} {equal:>15} {per_minute:>13.0f} "
              f"{duplicates:>11} {lost:>5}   ({count} faults, {received} received)")
    ours, theirs = rows[0][3], rows[1][3]
    if theirs:
        print(f"\nrequests per minute, singleton_jobs / redbeat: {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
