"""A short chaos run (benchmarks/chaos.py) is part of the suite: faults never break the promise."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import HERE


def run_chaos(*args: str) -> str:
    """Run benchmarks/chaos.py; check the verdict lines every run must print; return its output."""
    result = subprocess.run(
        [sys.executable, str(HERE.parent / "benchmarks" / "chaos.py"), "--duration", "25",
         "--replicas", "4", *args],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "overlapping leadership intervals  0" in result.stdout
    assert "fencing-token order violations    0" in result.stdout
    assert "chaos: PASS" in result.stdout
    return result.stdout


def handovers(output: str) -> int:
    return int(output.split("handovers")[1].split()[0])


def test_short_chaos_run_finds_no_overlap_and_no_token_going_back() -> None:
    output = run_chaos("--fault-every", "1.0")
    assert handovers(output) >= 5, output


def test_short_kubernetes_chaos_run_finds_no_overlap_and_no_token_going_back() -> None:
    # One Lease on the fake API server (started by the script), with API-server faults too.
    output = run_chaos("--backend", "kubernetes", "--fault-every", "0.5")
    assert handovers(output) >= 3, output
    faults = re.search(r"faults injected +(.*)", output)
    assert faults is not None, output
    api_faults = sum(int(count) for count in re.findall(r"api-\S+ (\d+)", faults.group(1)))
    assert api_faults >= 1, output
