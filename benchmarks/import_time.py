"""Cold import time of ``singleton_jobs``, side by side with ``filelock``.

Run from the repository root::

    python benchmarks/import_time.py [--runs 15] [--against PATH]

Each run is a fresh ``python -X importtime -c "import NAME"``; the figure is the
cumulative microseconds that CPython reports for the top-level module. Runs of the two
modules alternate so machine noise hits both alike. ``--against PATH`` adds a third column:
``singleton_jobs`` imported from another checkout (e.g. a ``git worktree`` of the previous
release), to show a change's cost side by side. Bytecode caches are written and warmed first
(``PYTHONDONTWRITEBYTECODE`` is dropped for the subprocesses), as on an installed package. A
last subprocess reports which optional dependencies ``import singleton_jobs`` pulls into
``sys.modules``.

Target: median under 30 ms for ``singleton_jobs``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence

TARGET_US = 30_000
MODULES = ("singleton_jobs", "filelock")
HEAVY_DEPENDENCIES = ("filelock", "kubernetes", "apscheduler", "sqlalchemy", "redis",
                      "prometheus_client")
AGAINST = "singleton_jobs@against"


#: This checkout: measured unless --against names another. Subprocesses run in a neutral
#: directory, so that ``-c`` (which puts the working directory first on sys.path) cannot pick
#: a checkout by accident.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEUTRAL = tempfile.gettempdir()


def environment(path: str = HERE) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = path
    return env


def cumulative_import_us(module: str, path: str = HERE) -> int:
    """Cumulative import time of top-level ``module`` in a fresh interpreter, in µs (from
    ``path`` first if given)."""
    command = [sys.executable, "-X", "importtime", "-c", f"import {module}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True,
                            env=environment(path), cwd=NEUTRAL)
    # "import time: <self us> | <cumulative us> | <two spaces per nesting level><name>"
    for line in result.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line.split("|")
        if len(parts) == 3 and parts[2] == f" {module}":
            return int(parts[1])
    raise RuntimeError(f"no top-level line for {module} in -X importtime output:\n"
                       f"{result.stderr[-2000:]}")


def loaded_dependencies() -> dict[str, bool]:
    """Which HEAVY_DEPENDENCIES are in sys.modules after ``import singleton_jobs``."""
    code = ("import json, sys, singleton_jobs\n"
            f"names = {HEAVY_DEPENDENCIES!r}\n"
            "print(json.dumps({name: name in sys.modules for name in names}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, check=True, env=environment(), cwd=NEUTRAL)
    loaded: dict[str, bool] = json.loads(result.stdout)
    return loaded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Cold import time of singleton_jobs, side by side with filelock.")
    parser.add_argument("--runs", type=int, default=15,
                        help="fresh interpreters per module")
    parser.add_argument("--against", metavar="PATH",
                        help="also time singleton_jobs imported from this checkout")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be positive")

    columns = [*MODULES, *([AGAINST] if args.against else [])]

    def timed(column: str) -> int:
        if column == AGAINST:
            return cumulative_import_us("singleton_jobs", os.path.abspath(args.against))
        return cumulative_import_us(column)

    for column in columns:  # warm the bytecode caches so no run pays for compiling
        timed(column)
    samples: dict[str, list[int]] = {column: [] for column in columns}
    for run in range(args.runs):
        order = columns if run % 2 == 0 else columns[::-1]
        for column in order:
            samples[column].append(timed(column))
    loaded = loaded_dependencies()

    print(f"Cold import time, python -X importtime, {args.runs} alternating runs "
          f"each (Python {sys.version.split()[0]})")
    print()
    header = f"{'module':<22} {'min ms':>8} {'median ms':>10} {'max ms':>8}"
    print(header)
    print("-" * len(header))
    for module in columns:
        values = samples[module]
        print(f"{module:<22} {min(values) / 1000:>8.2f} "
              f"{statistics.median(values) / 1000:>10.2f} {max(values) / 1000:>8.2f}")
    print()
    print("in sys.modules after `import singleton_jobs`: "
          + ", ".join(f"{name}={'yes' if present else 'no'}"
                      for name, present in loaded.items()))
    print()

    ours = statistics.median(samples["singleton_jobs"])
    theirs = statistics.median(samples["filelock"])
    verdict = "PASS" if ours < TARGET_US else "FAIL"
    print("Headline (same run, side by side):")
    print(f"  singleton_jobs median / filelock median = {ours / theirs:.2f}x")
    if args.against:
        before = statistics.median(samples[AGAINST])
        print(f"  singleton_jobs median / the one at {args.against} = {ours / before:.2f}x")
    print(f"  singleton_jobs median {ours / 1000:.2f} ms; "
          f"target < {TARGET_US / 1000:.0f} ms: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
