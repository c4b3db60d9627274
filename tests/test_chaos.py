"""A short chaos run (benchmarks/chaos.py) is part of the suite: faults never break the promise."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import HERE

#: The faults of real deployments: a forked leader, two processes with one identity, the lease
#: deleted by hand, the lease rewritten with a shorter duration. Each short run injects every
#: fault kind at least once (the script's --min-each 1).
DEPLOYMENT_FAULTS = ("fork", "duplicate", "delete", "rewrite")


def row(output: str, name: str) -> str:
    """The value column of the table row ``name``."""
    found = re.search(rf"^  {re.escape(name)} +(.*)$", output, re.MULTILINE)
    assert found is not None, f"no row {name!r} in:\n{output}"
    return found.group(1)


def count(output: str, name: str) -> int:
    return int(row(output, name).split()[0])


def faults(output: str) -> dict[str, int]:
    injected = row(output, "faults injected").split(";")[0]
    return {kind: int(number) for kind, number in re.findall(r"(\S+) (\d+)", injected)}


def run_chaos(*args: str) -> str:
    """Run benchmarks/chaos.py; check the verdict lines every run must print; return its output."""
    result = subprocess.run(
        [sys.executable, str(HERE.parent / "benchmarks" / "chaos.py"), "--duration", "25",
         "--replicas", "4", *args],
        capture_output=True, text=True, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert count(output, "overlapping leadership intervals") == 0, output
    assert count(output, "fencing-token order violations") == 0, output
    assert count(output, "runs by forked children") == 0, output
    assert count(output, "early takeovers after delete/rewrite") == 0, output
    assert "is_leader True 0 times in a child" in row(output, "forked children"), output
    injected = faults(output)
    for kind in DEPLOYMENT_FAULTS:
        assert injected.get(kind, 0) >= 1, f"no {kind} fault injected:\n{output}"
    assert "chaos: PASS" in result.stdout
    return result.stdout


def test_short_chaos_run_finds_no_overlap_and_no_token_going_back() -> None:
    output = run_chaos("--fault-every", "1.0")
    # Process faults hit the leader 4 times in 5, and some land on a follower: a run sees a
    # few handovers, not a fixed number (one run saw 4 of 6 process faults hand over).
    assert count(output, "handovers") >= 3, output


def test_short_kubernetes_chaos_run_finds_no_overlap_and_no_token_going_back() -> None:
    # One Lease on the fake API server (started by the script), with API-server faults too.
    output = run_chaos("--backend", "kubernetes", "--fault-every", "0.5")
    # Most faults here are API faults; process faults hit the leader 4 times in 5, so a run
    # sees a few handovers, not a fixed number (one run saw 2 of 4 process faults land).
    assert count(output, "handovers") >= 2, output
    api_faults = sum(number for kind, number in faults(output).items()
                     if kind.startswith("api-"))
    assert api_faults >= 1, output
