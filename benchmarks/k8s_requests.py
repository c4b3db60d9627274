"""Kubernetes API requests per minute of a leader and a follower: ours vs kubernetes.leaderelection.

Run from the repository root (needs ``pip install -e ".[kubernetes]"``)::

    python benchmarks/k8s_requests.py [--window 60] [--lease-duration 15]
                                      [--renew-deadline 10] [--retry-period 2]

The fake API server (tests/k8s_api.py) runs as a separate process and logs every request.
In this process, two elections run side by side, each with a leader and a follower on a Lease
of its own, over real HTTP through the ``kubernetes`` client:

* ours: :class:`singleton_jobs.KubernetesElector`;
* theirs: the ``kubernetes`` package's own ``kubernetes.leaderelection`` (``LeaderElection``
  with ``resourcelock.leaselock.LeaseLock``; older releases of the package only had a
  ConfigMap lock).

Both use the same timings (client-go's defaults unless given). Once both leaders lead and both
followers poll, the request log is cleared and the script counts, for ``--window`` seconds,
each client's requests by method (each client has its own User-Agent). Shorter timings for
both sides give the same per-renew and per-poll figures in less time; the window can be
shortened too (``kubernetes.leaderelection`` refuses a retry period under 1 s).

Target: our leader makes at most half the requests of theirs per renew (one PUT instead of a GET
and a PUT); followers make one GET per retry period on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from typing import Any

from singleton_jobs import KubernetesElector

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_API = os.path.join(HERE, os.pardir, "tests", "k8s_api.py")
LEADER_TARGET = 0.5
OURS, THEIRS = "singleton_jobs", "kubernetes.leaderelection"


def api_client(url: str, agent: str) -> Any:
    from kubernetes import client

    made = client.ApiClient(client.Configuration(host=url))
    made.user_agent = agent
    return made


def start_ours(url: str, role: str, timings: dict[str, float]) -> KubernetesElector:
    elector = KubernetesElector("ours", namespace="default",
                                api_client=api_client(url, f"ours-{role}"),
                                identity=f"ours-{role}", lease_duration=timings["lease_duration"],
                                renew_deadline=timings["renew_deadline"],
                                retry_period=timings["retry_period"])
    elector.start()
    return elector


def start_theirs(url: str, role: str, timings: dict[str, float],
                 leading: threading.Event) -> None:
    """Run kubernetes.leaderelection for ``role`` in a daemon thread (it has no stop)."""
    from kubernetes import client
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

    lock = LeaseLock("theirs", "default", f"theirs-{role}")  # type: ignore[no-untyped-call]
    lock.api_instance = client.CoordinationV1Api(api_client(url, f"theirs-{role}"))
    # It writes str(lease_duration) and reads it back with int(): give it an int.
    config = electionconfig.Config(  # type: ignore[no-untyped-call]
        lock, int(timings["lease_duration"]), timings["renew_deadline"], timings["retry_period"],
        onstarted_leading=leading.set, onstopped_leading=lambda: None)
    election = leaderelection.LeaderElection(config)  # type: ignore[no-untyped-call]
    threading.Thread(target=election.run, daemon=True, name=f"theirs-{role}").start()


def requests_per_renew(methods: list[str]) -> float:
    """Requests per renew, over whole renew cycles only: from just after the first PUT up to
    and including the last one, so the window's edges do not cut a GET from its PUT."""
    puts = [index for index, method in enumerate(methods) if method == "PUT"]
    if len(puts) < 2:
        return float("nan")
    return (puts[-1] - puts[0]) / (len(puts) - 1)


def admin(url: str, method: str, path: str) -> Any:
    request = urllib.request.Request(f"{url}/_fake/{path}", method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds of steady state to count (default: 60)")
    parser.add_argument("--lease-duration", type=float, default=15.0)
    parser.add_argument("--renew-deadline", type=float, default=10.0)
    parser.add_argument("--retry-period", type=float, default=2.0)
    args = parser.parse_args()
    timings = {"lease_duration": args.lease_duration, "renew_deadline": args.renew_deadline,
               "retry_period": args.retry_period}

    import kubernetes

    server = subprocess.Popen([sys.executable, FAKE_API, "--port", "0"], stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    electors: list[KubernetesElector] = []
    try:
        their_leader_leads = threading.Event()
        leader = start_ours(url, "leader", timings)
        electors.append(leader)
        start_theirs(url, "leader", timings, their_leader_leads)
        wait_for(lambda: leader.is_leader and their_leader_leads.is_set(), 30, "the leaders")
        electors.append(start_ours(url, "follower", timings))
        start_theirs(url, "follower", timings, threading.Event())

        def followers_poll() -> bool:
            agents = {entry["agent"] for entry in admin(url, "GET", "requests")["requests"]}
            return {"ours-follower", "theirs-follower"} <= agents

        wait_for(followers_poll, 3 * args.retry_period + 10, "the followers' first polls")
        print(f"Counting Kubernetes API requests for {args.window:g} s of steady state at lease "
              f"{args.lease_duration:g} s / renew deadline {args.renew_deadline:g} s / retry "
              f"period {args.retry_period:g} s ...", flush=True)
        admin(url, "DELETE", "requests")
        time.sleep(args.window)
        logged = admin(url, "GET", "requests")["requests"]
    finally:
        for elector in electors:
            elector.stop(release=False)
        server.send_signal(signal.SIGTERM)
        server.wait(10)

    counts: Counter[tuple[str, str]] = Counter((entry["agent"], entry["method"])
                                               for entry in logged)
    print()
    print(f"API requests per minute, over a {args.window:g} s window; fake API server "
          f"(tests/k8s_api.py) over real HTTP")
    print(f"ours:   {OURS} KubernetesElector (one PUT per renew, with the Lease it kept)")
    print(f"theirs: {THEIRS} from the kubernetes package {kubernetes.__version__} "
          "(LeaderElection + LeaseLock: GET then PUT per renew)")
    print()
    print(f"{'role':<9} {'client':<26} {'GET':>5} {'PUT':>5} {'POST':>5} {'total':>6} "
          f"{'per minute':>11}")
    per_minute: dict[tuple[str, str], float] = {}
    for role in ("leader", "follower"):
        for side, name in (("ours", OURS), ("theirs", THEIRS)):
            agent = f"{side}-{role}"
            by_method = [counts[(agent, method)] for method in ("GET", "PUT", "POST")]
            total = sum(counts[(agent, method)] for method in ("GET", "PUT", "POST", "DELETE"))
            per_minute[(role, side)] = total * 60.0 / args.window
            print(f"{role:<9} {name:<26} {by_method[0]:>5} {by_method[1]:>5} {by_method[2]:>5} "
                  f"{total:>6} {per_minute[(role, side)]:>11.1f}")
    print()
    per_renew = {side: requests_per_renew([entry["method"] for entry in logged
                                           if entry["agent"] == f"{side}-leader"])
                 for side in ("ours", "theirs")}
    renew_ratio = per_renew["ours"] / per_renew["theirs"]
    leader_ratio = per_minute[("leader", "ours")] / per_minute[("leader", "theirs")]
    follower_ratio = per_minute[("follower", "ours")] / per_minute[("follower", "theirs")]
    print(f"leader requests per renew (whole renew cycles): ours {per_renew['ours']:.2f}, theirs "
          f"{per_renew['theirs']:.2f}; ours / theirs = {renew_ratio:.2f} "
          f"(target <= {LEADER_TARGET}: {'met' if renew_ratio <= LEADER_TARGET else 'NOT met'})")
    print(f"leader requests per minute, ours / theirs = {leader_ratio:.2f} (theirs sleeps a retry "
          "period after each renew, ours starts one every retry period: a few % more renews)")
    print(f"follower requests per minute, ours / theirs = {follower_ratio:.2f} (both poll once "
          "per retry period; ours takes up to 20 % off each wait, so that a released lease is "
          "taken within one period)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
