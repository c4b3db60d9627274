"""Per-call overhead that ``@leader_only`` adds, on a leader and on a follower.

Run from the repository root::

    python benchmarks/leader_only_overhead.py [--repeat 9] [--number 300000]

For each case the bare function and its wrapped form are timed in alternation,
``--repeat`` times each with ``--number`` calls per timing; the minimum per-call time
of each is kept. Cases: ``@leader_only(elector)`` on the leader (the body runs) and on
a follower (the call is skipped), and bare ``@leader_only`` with
:func:`set_default_elector` pointing at either. Target: under 1000 ns added per call.

Metrics: the guard counts every call (runs and skips, exported by
``singleton_jobs.observability.register_metrics``). The ``metrics`` cases time the shipped
guard, with its counts registered in a Prometheus registry and scraped between timings,
against the same guard without counting (the previous release's wrapper, reproduced below).
``is_leader`` reads two system clocks-and-pid calls whose cost varies by more than the counting
costs, so these cases use electors whose ``is_leader`` is a constant: the difference is what
counting adds, nothing else. Target: metrics add under 100 ns per call.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from threading import get_ident

from singleton_jobs import (
    Elector,
    LeadershipLost,
    MemoryLeaseStore,
    get_default_elector,
    leader_only,
    set_default_elector,
)
from singleton_jobs.terms import _current, _sync_bodies

TARGET_ADDED_NS = 1000.0
TARGET_METRICS_NS = 100.0


def job() -> int:
    """The guarded function: as cheap as possible so the guard's cost stands out."""
    return 1


def uncounted(elector: Elector) -> Callable[[], object]:
    """``@leader_only(elector)(job)`` as the shipped guard wraps it, without the counting: the
    same checks, the same term bookkeeping on the leader, the same skip path (warning once if
    the elector is not running, a DEBUG line)."""
    import logging

    logger = logging.getLogger("singleton_jobs.decorators")
    default: object = None
    on_skip: Callable[[], object] | None = None
    raise_on_skip = False
    warned = False

    def skip(chosen: Elector) -> object:
        nonlocal warned
        if not warned and not chosen._running:
            warned = True
            logger.warning("%s: skipped job: its elector is not running", chosen.identity)
        logger.debug("%s: skipped %s: not the leader", chosen.identity, "job")
        if raise_on_skip:
            raise RuntimeError("not the leader")
        if on_skip is not None:
            on_skip()
        return default

    func = job

    def wrapper(*args: object, **kwargs: object) -> object:
        chosen = elector or get_default_elector()
        if chosen is None:
            raise RuntimeError("no elector")
        term = chosen._current_term if chosen.is_leader else None
        if term is not None:
            try:
                if _current.get() is not None:
                    raise RuntimeError("not timed: inside an asynchronous body")
                entry = (get_ident(), term)  # the body's term, as the shipped guard notes it
                _sync_bodies.append(entry)
                try:
                    return func(*args, **kwargs)
                finally:
                    _sync_bodies.remove(entry)
            except LeadershipLost:
                return default
        return skip(chosen)

    return wrapper


@dataclass
class Case:
    name: str
    wrapped: Callable[[], object]
    default: Elector | None = None
    """What :func:`set_default_elector` is set to while this case is timed."""
    baseline: Callable[[], object] = job
    """What ``wrapped`` is compared with (the bare function unless said otherwise)."""
    bare_ns: float = float("inf")
    wrapped_ns: float = float("inf")

    @property
    def added_ns(self) -> float:
        return self.wrapped_ns - self.bare_ns

    @property
    def ratio(self) -> float:
        return self.wrapped_ns / self.bare_ns


def per_call_ns(func: Callable[[], object], number: int) -> float:
    """Nanoseconds per call of ``func()`` over ``number`` calls (GC off, as timeit)."""
    timer = timeit.Timer("func()", globals={"func": func})
    return timer.timeit(number) / number * 1e9


def measure(cases: Sequence[Case], repeat: int, number: int) -> None:
    """Time bare and wrapped in alternation, flipping which goes first every round."""
    for round_index in range(repeat):
        for case in cases:
            set_default_elector(case.default)
            bare_first = round_index % 2 == 0
            for timing_bare in (bare_first, not bare_first):
                if timing_bare:
                    case.bare_ns = min(case.bare_ns, per_call_ns(case.baseline, number))
                else:
                    wrapped_ns = per_call_ns(case.wrapped, number)
                    case.wrapped_ns = min(case.wrapped_ns, wrapped_ns)


def measure_metrics(leader: Elector, follower: Elector, repeat: int,
                    number: int) -> tuple[list[Case], str]:
    """Time the counted guard with its counts exported against the uncounted one."""
    from prometheus_client import CollectorRegistry, generate_latest

    from singleton_jobs.observability import register_metrics

    registry = CollectorRegistry()
    register_metrics(registry)
    leading, following = fixed_role(leader, True), fixed_role(follower, False)
    cases = [Case("metrics, leader", leader_only(leading)(job), baseline=uncounted(leading)),
             Case("metrics, follower", leader_only(following)(job),
                  baseline=uncounted(following))]
    for _ in range(repeat):
        measure(cases, 1, number)
        page = generate_latest(registry).decode()  # a scrape between timings
    lines = [line for line in page.splitlines()
             if line.startswith("singleton_jobs_guarded_calls_total")]
    return cases, "; ".join(lines)


def fixed_role(elector: Elector, leading: bool) -> Elector:
    """A running elector whose ``is_leader`` is the constant ``leading`` (no clock, no pid)."""
    class Fixed(type(elector)):  # type: ignore[misc]
        is_leader = leading

    fixed = object.__new__(Fixed)
    fixed.__dict__.update(elector.__dict__)
    return fixed


def start_electors() -> tuple[Elector, Elector]:
    """A leader and a follower campaigning for the same in-memory lease."""
    store = MemoryLeaseStore()
    timings = {"lease_duration": 15, "renew_deadline": 10, "retry_period": 2}
    leader = Elector(store, identity="bench-leader", **timings).start()
    if not leader.wait_for_leadership(5):
        leader.stop()
        raise SystemExit("the first elector did not become leader within 5 s")
    follower = Elector(store, identity="bench-follower", **timings).start()
    return leader, follower


def print_metrics_report(cases: Sequence[Case], scraped: str) -> None:
    print()
    print("Metrics (the shipped guard, counts registered and scraped, vs the same guard "
          "without counting):")
    header = f"{'case':<34} {'uncounted ns':>13} {'counted ns':>11} {'added ns':>9}"
    print(header)
    print("-" * len(header))
    for case in cases:
        print(f"{case.name:<34} {case.bare_ns:>13.1f} {case.wrapped_ns:>11.1f} "
              f"{case.added_ns:>9.1f}")
    worst = max(case.added_ns for case in cases)
    verdict = "PASS" if worst < TARGET_METRICS_NS else "FAIL"
    print(f"  metrics add at most {worst:.0f} ns per call; target < {TARGET_METRICS_NS:.0f} ns: "
          f"{verdict}")
    print(f"  last scrape: {scraped}")


def print_report(cases: Sequence[Case], repeat: int, number: int) -> None:
    print(f"@leader_only overhead: min of {repeat} interleaved timings "
          f"x {number:,} calls")
    print()
    header = (f"{'case':<34} {'bare ns':>9} {'wrapped ns':>11} {'added ns':>9} "
              f"{'ratio':>7}")
    print(header)
    print("-" * len(header))
    for case in cases:
        print(f"{case.name:<34} {case.bare_ns:>9.1f} {case.wrapped_ns:>11.1f} "
              f"{case.added_ns:>9.1f} {case.ratio:>6.2f}x")
    print()
    worst = max(cases, key=lambda case: case.added_ns)
    verdict = "PASS" if worst.added_ns < TARGET_ADDED_NS else "FAIL"
    print("Headline (bare and wrapped timed side by side in this run):")
    for case in cases:
        print(f"  {case.name:<34} wrapped/bare = {case.ratio:.2f}x "
              f"(+{case.added_ns:.0f} ns per call)")
    print(f"  worst added per call: {worst.added_ns:.0f} ns ({worst.name}); "
          f"target < {TARGET_ADDED_NS:.0f} ns: {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-call overhead of @leader_only.")
    parser.add_argument("--repeat", type=int, default=9,
                        help="timings of each function per case; the minimum is kept")
    parser.add_argument("--number", type=int, default=300_000, help="calls per timing")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.number < 1:
        parser.error("--repeat and --number must be positive")

    leader, follower = start_electors()
    try:
        if not leader.is_leader or follower.is_leader:
            raise SystemExit(f"unexpected roles: leader.is_leader={leader.is_leader}, "
                             f"follower.is_leader={follower.is_leader}")
        cases = [
            Case("@leader_only(elector), leader", leader_only(leader)(job)),
            Case("@leader_only(elector), follower", leader_only(follower)(job)),
            Case("@leader_only + default, leader", leader_only(job), default=leader),
            Case("@leader_only + default, follower", leader_only(job),
                 default=follower),
        ]
        measure(cases, args.repeat, args.number)
        metrics_cases, scraped = measure_metrics(leader, follower, args.repeat, args.number)
        roles_held = leader.is_leader and not follower.is_leader
    finally:
        set_default_elector(None)
        follower.stop()
        leader.stop()

    if not roles_held:
        print("WARNING: roles changed during the run; figures may mix the leader "
              "and follower paths")
    print_report(cases, args.repeat, args.number)
    print_metrics_report(metrics_cases, scraped)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
