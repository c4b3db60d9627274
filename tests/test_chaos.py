"""A short chaos run (benchmarks/chaos.py) is part of the suite: faults never break the promise."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import HERE


def test_short_chaos_run_finds_no_overlap_and_no_token_going_back() -> None:
    result = subprocess.run(
        [sys.executable, str(HERE.parent / "benchmarks" / "chaos.py"), "--duration", "25",
         "--replicas", "4", "--fault-every", "1.0"],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "overlapping leadership intervals  0" in result.stdout
    assert "fencing-token order violations    0" in result.stdout
    assert "chaos: PASS" in result.stdout
    handovers = int(result.stdout.split("handovers")[1].split()[0])
    assert handovers >= 5


def test_short_kubernetes_chaos_run_finds_no_overlap_and_no_token_going_back() -> None:
    # One Lease on the fake API server (started by the script), with API-server faults too.
    result = subprocess.run(
        [sys.executable, str(HERE.parent / "benchmarks" / "chaos.py"), "--backend", "kubernetes",
         "--duration", "25", "--replicas", "4", "--fault-every", "0.5"],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "overlapping leadership intervals  0" in result.stdout
    assert "fencing-token order violations    0" in result.stdout
    assert "chaos: PASS" in result.stdout
    handovers = int(result.stdout.split("handovers")[1].split()[0])
    assert handovers >= 3, result.stdout
    faults = re.search(r"faults injected +(.*)", result.stdout)
    assert faults is not None, result.stdout
    api_faults = sum(int(count) for count in re.findall(r"api-\S+ (\d+)", faults.group(1)))
    assert api_faults >= 1, result.stdout
    assert "API requests served" in result.stdout
