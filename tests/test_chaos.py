"""A short chaos run (benchmarks/chaos.py) is part of the suite: faults never break the promise."""

from __future__ import annotations

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
