"""Requests per leader renew and per follower poll, counted by the server, for each backend.

Run from the repository root (``pip install -e ".[all,test]"``: SQLAlchemy, psycopg, PyMySQL,
redis, kubernetes; the database servers' binaries)::

    python benchmarks/backend_requests.py [--window 10] [--takeovers 5] [--quick]
                                          [--backend postgresql,mysql,redis,kubernetes]

For each backend the script starts a server of its own (tests/servers.py: PostgreSQL, MariaDB,
Redis; the fake Kubernetes API server of tests/k8s_api.py), so that nothing but the electors
talks to it, and asks the *server* how many statements or requests it ran:

* PostgreSQL: ``pg_stat_statements`` (the server is restarted once to load it), by statement;
* MariaDB: ``SHOW GLOBAL STATUS``: ``Questions`` and the ``Com_*`` counters by statement type;
* Redis: ``MONITOR``: commands sent by clients (round trips), by command; the commands a Lua
  script runs inside the server are not round trips and are left out;
* Kubernetes: the fake API server's request log, by method and object.

The counters' own queries are subtracted. In this process a leader elector runs alone for
``--window`` seconds (statements per renew = server count / the leader's renews), then a
follower joins for another window (statements per poll = what is left after the leader's
share / the follower's polls); renews and polls are counted by wrapping the store's methods.
Then ``--takeovers`` times the leader stops with a release and the follower takes over: the
statements of the release and of the takeover, less any ordinary poll or renew that fell into
that moment. Timings: lease 1 s, renew deadline 0.5 s, retry period 0.05 s (20 renews and
about 22 polls a second: a follower takes up to 20 % off each wait). The file and SQLite
backends have no server to ask.

Target: one statement per renew and one per poll on every database.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from own_servers import (
    NAMES,
    StatementCounter,
    Unavailable,
    counter_for,
    describe,
    difference,
    start_server,
    wait_for,
)

from singleton_jobs import Elector

HERE = Path(__file__).resolve().parent
FAKE_API = HERE.parent / "tests" / "k8s_api.py"
LEASE = "bench-requests"
TIMINGS = {"lease_duration": 1.0, "renew_deadline": 0.5, "retry_period": 0.05}
BACKENDS = ("postgresql", "mysql", "redis", "kubernetes")
COUNTED_BY = {
    "postgresql": "pg_stat_statements",
    "mysql": "SHOW GLOBAL STATUS",
    "redis": "MONITOR (round trips)",
    "kubernetes": "fake API request log",
}
STORE_METHODS = ("get", "create", "update", "transitions_floor")
#: Seconds to let electors settle before a window, and listeners end after the electors.
SETTLE = 1.0


def instrument(elector: Elector, lock: threading.Lock) -> Counter[str]:
    """Count the calls of ``elector``'s store methods (by name) in the returned Counter, each
    once it returned. Every call holds ``lock``, and so does every snapshot of the server's
    counters: no call is half done when one is taken, so the server's count and ours agree
    exactly at each window's edges."""
    calls: Counter[str] = Counter()
    store = elector.store
    for name in STORE_METHODS:
        method = getattr(store, name)

        def counted(*args: Any, _method: Callable[..., Any] = method, _name: str = name,
                    **kwargs: Any) -> Any:
            with lock:
                try:
                    return _method(*args, **kwargs)
                finally:
                    calls[_name] += 1

        setattr(store, name, counted)
    return calls


class FakeApiCounter(StatementCounter):
    """Requests the fake Kubernetes API server answered, by method and object (its admin
    endpoints are not logged)."""

    unit = "requests"

    def __init__(self, url: str) -> None:
        self.url = url
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def snapshot(self) -> tuple[int, Counter[str]]:
        with self._opener.open(f"{self.url}/_fake/requests", timeout=30) as response:
            logged = json.loads(response.read())["requests"]
        counts: Counter[str] = Counter()
        for entry in logged:
            target = "fence Lease" if str(entry.get("name") or "").endswith("-fence") else "Lease"
            counts[f"{entry['method']} {target}"] += 1
        return sum(counts.values()), counts


@dataclass
class Result:
    backend: str
    unit: str = "statements"
    renews: int = 0
    per_renew: float = float("nan")
    renew_by: dict[str, float] = field(default_factory=dict)
    polls: int = 0
    per_poll: float = float("nan")
    poll_by: dict[str, float] = field(default_factory=dict)
    takeovers: list[float] = field(default_factory=list)
    takeover_by: dict[str, float] = field(default_factory=dict)
    takeover_calls: dict[str, float] = field(default_factory=dict)
    listener: dict[str, float] = field(default_factory=dict)  # per second
    unavailable: str = ""


def scaled(counts: Counter[str], factor: float) -> dict[str, float]:
    return {name: count * factor for name, count in counts.items()}


def measure(backend: str, counter: StatementCounter, make: Callable[[str], Elector],
            window: float, takeovers: int) -> Result:
    result = Result(backend, counter.unit)
    electors: list[Elector] = []
    lock = threading.Lock()

    def snapshot(*calls: Counter[str]) -> tuple[int, Counter[str], list[Counter[str]]]:
        """The server's counts and copies of ``calls``, with no store call in flight."""
        with lock:
            total, by = counter.snapshot()
            return total, by, [counted.copy() for counted in calls]

    def started(identity: str) -> tuple[Elector, Counter[str]]:
        elector = make(identity)
        calls = instrument(elector, lock)
        elector.start()
        electors.append(elector)
        return elector, calls

    def polling(calls: Counter[str]) -> None:
        # Past its first calls (table checks, the first read, new pooled connections),
        # polling steadily.
        polled = calls["get"]
        wait_for(lambda: calls["get"] >= polled + 5, 30, f"{backend}: a follower's polls")
        time.sleep(SETTLE)

    try:
        leader, leader_calls = started("leader-1")
        if not leader.wait_for_leadership(30):
            raise RuntimeError(f"{backend}: the first elector did not lead within 30 s")
        time.sleep(SETTLE)

        # 1. The leader alone: statements per renew.
        total0, by0, (calls0,) = snapshot(leader_calls)
        time.sleep(window)
        total1, by1, (calls1,) = snapshot(leader_calls)
        renews = calls1["update"] - calls0["update"]
        leader_only = difference(by1, by0)
        listener_a = Counter({k: v for k, v in leader_only.items() if k.startswith("listener")})
        renew_counts = leader_only - listener_a
        result.renews = renews
        result.per_renew = (total1 - total0) / renews
        result.renew_by = scaled(renew_counts, 1 / renews)
        other_calls = difference(calls1, calls0) - Counter(update=renews)
        if other_calls:
            print(f"  {backend}: the leader also called {dict(other_calls)} while alone",
                  file=sys.stderr)

        # 2. Leader and follower: statements per poll, after the leader's share.
        follower, follower_calls = started("follower-1")
        polling(follower_calls)
        total2, by2, (leader2, follower2) = snapshot(leader_calls, follower_calls)
        time.sleep(window)
        total3, by3, (leader3, follower3) = snapshot(leader_calls, follower_calls)
        renews_b = leader3["update"] - leader2["update"]
        polls = follower3["get"] - follower2["get"]
        both = difference(by3, by2)
        listener_b = Counter({k: v for k, v in both.items() if k.startswith("listener")})
        result.polls = polls
        result.per_poll = ((total3 - total2) - renews_b * result.per_renew) / polls
        result.poll_by = {name: (count - renews_b * result.renew_by.get(name, 0.0)) / polls
                          for name, count in (both - listener_b).items()}
        result.listener = scaled(listener_a + listener_b, 1 / (2 * window))

        # 3. Takeovers: the leader stops with a release, the follower takes over.
        costs: list[float] = []
        by_sum: Counter[str] = Counter()
        calls_sum: Counter[str] = Counter()
        for number in range(takeovers):
            before_total, before_by, (before_leader, before_follower) = snapshot(
                leader_calls, follower_calls)
            leader.stop(release=True)
            if not follower.wait_for_leadership(10):
                raise RuntimeError(f"{backend}: no takeover within 10 s of a release")
            after_total, after_by, (after_leader, after_follower) = snapshot(
                leader_calls, follower_calls)
            by_leader = difference(after_leader, before_leader)
            by_follower = difference(after_follower, before_follower)
            # Less what was no part of it: renews the leader made before its release (one
            # update is the release), polls the follower made before it saw the release.
            extra_renews = max(by_leader["update"] - 1, 0)
            extra_polls = max(by_follower["get"] - 1, 0)
            cost = (after_total - before_total - extra_renews * result.per_renew
                    - extra_polls * result.per_poll)
            costs.append(cost)
            window_by = difference(after_by, before_by)
            for name, count in window_by.items():
                if name.startswith("listener"):
                    continue
                by_sum[name] += count - extra_renews * result.renew_by.get(name, 0.0) \
                    - extra_polls * result.poll_by.get(name, 0.0)
            by_leader["update"] -= extra_renews
            by_follower["get"] -= extra_polls
            for name, count in (by_leader + by_follower).items():
                calls_sum[name] += count
            leader, leader_calls = follower, follower_calls
            follower, follower_calls = started(f"follower-{number + 2}")
            polling(follower_calls)
        result.takeovers = costs
        result.takeover_by = {name: count / takeovers for name, count in by_sum.items()}
        result.takeover_calls = {name: count / takeovers for name, count in calls_sum.items()}
    finally:
        for elector in electors:
            elector.stop(release=False)
        time.sleep(SETTLE)  # release listeners notice they are no longer wanted
    return result


def run_database(kind: str, directory: Path, window: float, takeovers: int) -> Result:
    from singleton_jobs import RedisElector, SQLElector

    try:
        server = start_server(kind, directory)
    except Unavailable as exc:
        return Result(kind, unavailable=str(exc))
    counter: StatementCounter | None = None
    try:
        counter = counter_for(server)

        def make(identity: str) -> Elector:
            if kind == "redis":
                return RedisElector(server.url, LEASE, identity=identity, **TIMINGS)
            return SQLElector(server.url, LEASE, identity=identity, **TIMINGS)

        return measure(kind, counter, make, window, takeovers)
    finally:
        if counter is not None:
            counter.close()
        server.close()


def run_kubernetes(window: float, takeovers: int) -> Result:
    try:
        from kubernetes import client
    except ImportError as exc:
        return Result("kubernetes", unavailable=f"{exc}: pip install -e '.[kubernetes]'")
    from singleton_jobs import KubernetesElector

    server = subprocess.Popen([sys.executable, str(FAKE_API), "--port", "0"],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()

        def make(identity: str) -> Elector:
            api = client.ApiClient(client.Configuration(host=url))
            return KubernetesElector(LEASE, namespace="default", api_client=api,
                                     identity=identity, **TIMINGS)

        return measure("kubernetes", FakeApiCounter(url), make, window, takeovers)
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


def print_report(results: list[Result], window: float, takeovers: int) -> bool:
    print()
    print(f"Requests per renew and per poll, counted by each server: one leader, then one "
          f"follower, in one process; lease {TIMINGS['lease_duration']:g} s / renew deadline "
          f"{TIMINGS['renew_deadline']:g} s / retry period {TIMINGS['retry_period']:g} s; "
          f"windows of {window:g} s; {takeovers} takeovers after a release")
    print()
    header = (f"{'backend':<11} {'counted by':<22} {'renews':>6} {'per renew':>9} "
              f"{'polls':>6} {'per poll':>8} {'per takeover':>12}  target")
    print(header)
    print("-" * len(header))
    ok = True
    for result in results:
        if result.unavailable:
            print(f"{result.backend:<11} n/a: {result.unavailable}")
            continue
        takeover = statistics.median(result.takeovers)
        target = "1 and 1" if result.backend != "kubernetes" else "1 and 1 (PUT, GET)"
        met = round(result.per_renew, 2) <= 1.0 and round(result.per_poll, 2) <= 1.0
        ok = ok and met
        print(f"{result.backend:<11} {COUNTED_BY[result.backend]:<22} {result.renews:>6} "
              f"{result.per_renew:>9.2f} {result.polls:>6} {result.per_poll:>8.2f} "
              f"{takeover:>12.1f}  {target}: {'met' if met else 'NOT met'}")
    print(f"{'file':<11} n/a: no server (a renew is one read-compare-write of the lease file "
          "under its lock)")
    print(f"{'sqlite':<11} n/a: no server (the SQL backend's statements, in-process)")
    print()
    print("What the server ran, per renew / per poll / per takeover (median of the takeovers "
          "in the column above; the breakdown is their mean):")
    for result in results:
        if result.unavailable:
            continue
        name = NAMES.get(result.backend, "Kubernetes")
        print(f"  {name} ({result.unit}):")
        print(f"    renew:    {describe(result.renew_by.items())}")
        print(f"    poll:     {describe(result.poll_by.items())}")
        print(f"    takeover: {describe(result.takeover_by.items())}")
        print(f"              store calls: {describe(result.takeover_calls.items())}; "
              f"each takeover: {', '.join(f'{cost:.0f}' for cost in result.takeovers)}")
        if result.listener:
            print(f"    release listener, per second and process: "
                  f"{describe(result.listener.items())}")
    print()
    verdict = "met" if ok else "NOT met"
    print(f"Headline: one statement per renew and one per poll on every database counted: "
          f"{verdict}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds of each counting window (default 10)")
    parser.add_argument("--takeovers", type=int, default=5)
    parser.add_argument("--backend", default=",".join(BACKENDS),
                        help=f"comma-separated, from {', '.join(BACKENDS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="3 s windows and 3 takeovers")
    args = parser.parse_args()
    if args.quick:
        args.window, args.takeovers = 3.0, 3
    backends = [name.strip() for name in args.backend.split(",") if name.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"--backend: unknown {', '.join(unknown)}")
    if args.takeovers < 1 or args.window <= 0:
        parser.error("--takeovers and --window must be positive")
    directory = Path(tempfile.mkdtemp(prefix="singleton_jobs-requests-"))
    results = []
    for backend in backends:
        print(f"measuring {backend} ...", file=sys.stderr, flush=True)
        if backend == "kubernetes":
            results.append(run_kubernetes(args.window, args.takeovers))
        else:
            results.append(run_database(backend, directory, args.window, args.takeovers))
    print_report(results, args.window, args.takeovers)
    for path in directory.iterdir():
        path.unlink()
    os.rmdir(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
