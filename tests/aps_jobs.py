"""Job functions for the APScheduler tests, importable by reference ("aps_jobs:record_run")."""

from __future__ import annotations

import asyncio
import os
import time


def record_run(journal: str, label: str = "job", takes: float = 0.0) -> None:
    """Append ``pid label start end`` (monotonic seconds) to ``journal`` in one write."""
    start = time.monotonic()
    if takes:
        time.sleep(takes)
    end = time.monotonic()
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {label} {start:.6f} {end:.6f}\n".encode())
    finally:
        os.close(fd)


async def record_run_async(journal: str, label: str = "async") -> None:
    await asyncio.sleep(0)
    record_run(journal, label)


def record_run_with_parent(journal: str, label: str = "job") -> None:
    """Like :func:`record_run`, with the parent's pid in the label (``label@ppid``): run in a
    process pool, it tells which replica's pool ran the body."""
    record_run(journal, f"{label}@{os.getppid()}")
