"""Many electors on one database: statements per second, leaders per lease, CPU.

Run from the repository root (``pip install -e ".[all,test]"`` and the servers' binaries)::

    python benchmarks/scale.py [--processes 4] [--electors 50] [--leases 20]
                               [--window 30] [--warm-up 10] [--backend postgresql,redis]
                               [--quick]

200 electors (4 processes of 50) campaign for 20 leases (10 electors each, spread over the
processes) at lease 6 s / renew deadline 4 s / retry period 1 s, first on an own PostgreSQL,
then on an own Redis (tests/servers.py), so that the servers' CPU is the electors' alone.
Electors of one process on one URL share that process's SQLAlchemy engine (the backend does
this by itself). After the warm-up (every lease led by exactly one elector, and
``--warm-up`` seconds gone: tables checked, pools filled), the script counts for ``--window``
seconds:

* what the server ran, by its own count: PostgreSQL ``pg_stat_statements`` calls; Redis
  ``INFO commandstats`` (round trips: the commands a client sends; commands that the backend's
  Lua scripts run inside the server are shown apart), against the model of one request per
  elector per retry period (200/s). A follower waits 0.8 to 1 retry period between polls, so
  that a released lease is taken within one: about 220/s is what the model predicts then;
* the store calls the electors made (their store's methods wrapped with a counter), and so
  the server's statements per store call;
* CPU of the server (PostgreSQL: the postmaster and all its children) and of the client
  processes, from /proc, as % of one core;
* leadership: terms started during the window, and at the end the number of leaders of each
  lease, which must be exactly 1 everywhere.

``--quick``: 10 s window after a 5 s warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
TIMINGS = {"lease_duration": 6.0, "renew_deadline": 4.0, "retry_period": 1.0}
BACKENDS = ("postgresql", "redis")
STORE_METHODS = ("get", "create", "update", "transitions_floor")


# -- client processes -----------------------------------------------------------------------------


def lease_name(number: int) -> str:
    return f"scale-{number:02d}"


def run_client(backend: str, url: str, index: int, electors: int, leases: int) -> int:
    """``electors`` electors in this process; answers ``report`` on stdin with a JSON line;
    stops them all when stdin ends."""
    from singleton_jobs import Elector, RedisElector, SQLElector

    lock = threading.Lock()
    calls: Counter[str] = Counter()
    terms = [0]

    def count_calls(elector: Elector) -> None:
        store = elector.store
        for name in STORE_METHODS:
            method = getattr(store, name)

            def counted(*args: Any, _method: Any = method, _name: str = name,
                        **kwargs: Any) -> Any:
                try:
                    return _method(*args, **kwargs)
                finally:
                    with lock:
                        calls[_name] += 1

            setattr(store, name, counted)

    def started_leading() -> None:
        with lock:
            terms[0] += 1

    running: list[tuple[str, Elector]] = []
    for number in range(electors):
        lease = lease_name((index * electors + number) % leases)
        options: dict[str, Any] = dict(identity=f"p{index}-e{number}",
                                       on_started_leading=started_leading, **TIMINGS)
        elector: Elector = (RedisElector(url, lease, **options) if backend == "redis"
                            else SQLElector(url, lease, **options))
        count_calls(elector)
        elector.start()
        running.append((lease, elector))
        # Spread the starts over one retry period, as replicas that start one by one.
        time.sleep(TIMINGS["retry_period"] / electors)
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() == "report":
            leading = Counter(lease for lease, elector in running if elector.is_leader)
            with lock:
                report = {"leading": dict(leading), "calls": dict(calls), "terms": terms[0]}
            print(json.dumps(report), flush=True)
    for _, elector in running:
        elector.stop(release=False)
    return 0


# -- the benchmark --------------------------------------------------------------------------------


@dataclass
class Client:
    process: subprocess.Popen[str]

    @property
    def stdin(self) -> IO[str]:
        assert self.process.stdin is not None
        return self.process.stdin

    @property
    def stdout(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def report(self) -> dict[str, Any]:
        self.stdin.write("report\n")
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"client {self.process.pid} ended")
        answer: dict[str, Any] = json.loads(line)
        return answer


@dataclass
class Result:
    backend: str
    unavailable: str = ""
    window: float = 0.0
    requests: int = 0
    by_command: Counter[str] = field(default_factory=Counter)
    store_calls: Counter[str] = field(default_factory=Counter)
    terms: int = 0
    leaders: dict[str, int] = field(default_factory=dict)
    server_cpu: float = 0.0
    client_cpu: list[float] = field(default_factory=list)
    connections: int = 0


def reports(clients: list[Client]) -> tuple[Counter[str], Counter[str], int]:
    """Leaders per lease, store calls and terms started, summed over the clients."""
    leading: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    terms = 0
    for client in clients:
        report = client.report()
        leading.update(report["leading"])
        calls.update(report["calls"])
        terms += report["terms"]
    return leading, calls, terms


def run_backend(backend: str, directory: Path, args: argparse.Namespace) -> Result:
    from own_servers import (
        Unavailable,
        counter_for,
        cpu_seconds,
        difference,
        start_server,
        tree_cpu_seconds,
    )

    try:
        server = start_server(backend, directory)
    except Unavailable as exc:
        return Result(backend, unavailable=str(exc))
    result = Result(backend)
    clients: list[Client] = []
    counter = None
    try:
        # Each process may open up to 25 pooled connections at a burst, and one to LISTEN.
        counter = counter_for(server, max_connections=args.processes * 30 + 20,
                              redis_round_trips=False)
        names = [lease_name(number) for number in range(args.leases)]
        for index in range(args.processes):
            process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--client", backend,
                 server.url, str(index), str(args.electors), str(args.leases)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            clients.append(Client(process))
        for client in clients:
            if client.stdout.readline().strip() != "READY":
                raise RuntimeError(f"{backend}: a client process did not start")
        started = time.monotonic()
        while True:
            leading, _, _ = reports(clients)
            if all(leading[name] == 1 for name in names) \
                    and time.monotonic() - started >= args.warm_up:
                break
            if time.monotonic() - started > args.warm_up + 120:
                raise RuntimeError(f"{backend}: leases without exactly one leader after "
                                   f"warm-up: {dict(leading)}")
            time.sleep(0.5)

        def cpu() -> tuple[float, list[float], float]:
            return (tree_cpu_seconds(server.pid),
                    [cpu_seconds(client.process.pid) for client in clients], time.monotonic())

        server0, clients0, at0 = cpu()
        total0, by0 = counter.snapshot()
        _, calls0, terms0 = reports(clients)
        time.sleep(args.window)
        _, calls1, terms1 = reports(clients)
        total1, by1 = counter.snapshot()
        server1, clients1, at1 = cpu()
        leading, _, _ = reports(clients)

        result.window = at1 - at0
        result.requests = total1 - total0
        result.by_command = difference(by1, by0)
        result.store_calls = difference(calls1, calls0)
        result.terms = terms1 - terms0
        result.leaders = {name: leading[name] for name in names}
        result.server_cpu = (server1 - server0) / result.window
        result.client_cpu = [(after - before) / result.window
                             for before, after in zip(clients0, clients1)]
        result.connections = connections(server)
    finally:
        for client in clients:
            client.stdin.close()
        for client in clients:
            try:
                client.process.wait(30)
            except subprocess.TimeoutExpired:
                client.process.kill()
                client.process.wait()
            client.stdout.close()
        if counter is not None:
            counter.close()
        server.close()
    return result


def connections(server: Any) -> int:
    """Client connections the server has open now."""
    if server.kind == "redis":
        import redis

        client = redis.Redis.from_url(server.url, socket_timeout=10)
        try:
            return int(client.info("clients")["connected_clients"]) - 1  # less this one
        finally:
            client.close()
    import psycopg

    with psycopg.connect(host=server.host, port=server.port, user="postgres",
                         dbname="postgres", connect_timeout=10) as connection:
        row = connection.execute("SELECT count(*) - 1 FROM pg_stat_activity "
                                 "WHERE backend_type = 'client backend'").fetchone()
        return int(row[0]) if row else 0


def print_report(results: list[Result], args: argparse.Namespace) -> bool:
    electors = args.processes * args.electors
    model = electors / TIMINGS["retry_period"]
    print()
    print(f"{electors} electors on {args.leases} leases ({electors // args.leases} each), "
          f"{args.processes} processes x {args.electors} electors, lease "
          f"{TIMINGS['lease_duration']:g} s / renew deadline {TIMINGS['renew_deadline']:g} s / "
          f"retry period {TIMINGS['retry_period']:g} s; counted for {args.window:g} s after "
          f"the warm-up, on own servers")
    print()
    header = (f"{'backend':<11} {'requests/s':>10} {'/ model':>7} {'store calls/s':>13} "
              f"{'per call':>8} {'leaders/lease':>13} {'new terms':>9} {'server CPU':>10} "
              f"{'clients CPU':>11} {'connections':>11}")
    print(header)
    print("-" * len(header))
    ok = True
    for result in results:
        if result.unavailable:
            print(f"{result.backend:<11} n/a: {result.unavailable}")
            continue
        rate = result.requests / result.window
        calls = sum(result.store_calls.values())
        leaders = Counter(result.leaders.values())
        exact = set(leaders) == {1}
        ok = ok and exact
        leaders_text = ("1 each" if exact else
                        ", ".join(f"{count} x {n}" for n, count in sorted(leaders.items())))
        print(f"{result.backend:<11} {rate:>10.1f} {rate / model:>7.2f} "
              f"{calls / result.window:>13.1f} {result.requests / calls:>8.2f} "
              f"{leaders_text:>13} {result.terms:>9} {100 * result.server_cpu:>9.1f}% "
              f"{100 * sum(result.client_cpu):>10.1f}% {result.connections:>11}")
    print()
    jittered = (args.leases + (electors - args.leases) / 0.9) / TIMINGS["retry_period"]
    print(f"model: one request per elector per retry period = {model:.0f}/s; followers wait "
          f"0.8-1 period between polls, so {jittered:.0f}/s is what it predicts.")
    print(f"CPU: % of one core over the window; clients: all {args.processes} processes "
          "together. connections: open on the server at the end.")
    for result in results:
        if result.unavailable:
            continue
        seconds = result.window
        calls = ", ".join(f"{name} {count / seconds:.1f}"
                          for name, count in result.store_calls.most_common())
        print(f"  {result.backend}: store calls per second: {calls}")
        if result.backend == "redis":
            from own_servers import REDIS_CLIENT_ONLY

            sent = ", ".join(f"{name} {count / seconds:.1f}"
                             for name, count in result.by_command.most_common()
                             if name in REDIS_CLIENT_ONLY)
            inside = ", ".join(f"{name} {count / seconds:.1f}"
                               for name, count in result.by_command.most_common()
                               if name not in REDIS_CLIENT_ONLY)
            print(f"    sent by clients, per second: {sent}")
            print(f"    other commands (mostly run inside the Lua scripts; GET/TYPE also by a "
                  f"client reading a fencing floor), per second: {inside or '-'}")
        else:
            ran = ", ".join(f"{name} {count / seconds:.1f}"
                            for name, count in result.by_command.most_common())
            print(f"    statements per second: {ran}")
        per_process = ", ".join(f"{100 * value:.1f}%" for value in result.client_cpu)
        print(f"    CPU per client process: {per_process}; per elector "
              f"{100 * sum(result.client_cpu) / (args.processes * args.electors):.3f}%")
    print()
    print(f"Headline: exactly one leader per lease at the end on every backend: "
          f"{'yes' if ok else 'NO'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--electors", type=int, default=50, help="electors per process")
    parser.add_argument("--leases", type=int, default=20)
    parser.add_argument("--window", type=float, default=30.0, help="seconds counted")
    parser.add_argument("--warm-up", type=float, default=10.0,
                        help="seconds at least before counting")
    parser.add_argument("--backend", default=",".join(BACKENDS),
                        help="postgresql, redis or both, comma-separated (default both)")
    parser.add_argument("--quick", action="store_true", help="10 s window after 5 s warm-up")
    parser.add_argument("--client", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        backend, url, index, electors, leases = args.client
        return run_client(backend, url, int(index), int(electors), int(leases))
    if args.quick:
        args.window, args.warm_up = 10.0, 5.0
    backends = [name.strip() for name in args.backend.split(",") if name.strip()]
    if not backends or set(backends) - set(BACKENDS):
        parser.error(f"--backend: choose from {', '.join(BACKENDS)}")
    if min(args.processes, args.electors, args.leases) < 1 or args.window <= 0:
        parser.error("--processes, --electors, --leases and --window must be positive")
    directory = Path(tempfile.mkdtemp(prefix="singleton_jobs-scale-"))
    results = []
    try:
        for backend in backends:
            print(f"running {backend} ...", file=sys.stderr, flush=True)
            results.append(run_backend(backend, directory, args))
    finally:
        for path in directory.iterdir():
            path.unlink()
        os.rmdir(directory)
    print_report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
