"""A service whose parent process schedules and whose process pools do the work.

    python examples/deploy/multiprocessing_pool.py      # in two or three terminals

The parent (one per service instance, alive as long as it) owns the elector and the scheduler.
On the leading instance the leader-only job hands its work to a ``multiprocessing.Pool`` and a
``ProcessPoolExecutor``; their workers only compute and never call a guarded function. Both
pools fork their workers before the elector starts, so no thread is running at the fork. A
worker forked later (a replaced one) inherits the elector dead: ``is_leader`` is False there
and ``start()`` raises. If each worker must campaign by itself, create and start its elector in
the pool's ``initializer=``: an elector started in a multiprocessing child releases its lease
when the child exits (pool workers leave through ``os._exit()``, which skips atexit, so the
library registers a multiprocessing exit hook for it).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor

from jobs import make_elector, nightly_report, start_scheduler

from singleton_jobs import exit_on_sigterm


def render_page(number: int) -> str:
    """What a pool worker does: plain work, no elector."""
    return f"page {number} rendered in {os.getpid()}"


def main() -> None:
    fork = multiprocessing.get_context("fork")
    with fork.Pool(3) as pool, ProcessPoolExecutor(3, mp_context=fork) as executor:
        executor.submit(os.getpid).result()  # forks all its workers now (the fork method does)

        def report_job() -> None:
            token = nightly_report()  # the leader-only part: runs in the leading parent only
            if token is not None:
                pages = pool.map(render_page, range(3))
                summary = executor.submit(render_page, 3).result()
                print(f"report {token}: {', '.join(pages)}, {summary}", flush=True)

        stop = start_scheduler(make_elector(), job=report_job)
        try:
            signal.pause()  # until Ctrl+C, or SIGTERM (which exit_on_sigterm makes SystemExit)
        except KeyboardInterrupt:
            pass
        finally:
            stop()  # the last run ends, the lease is released; then the pools shut down


if __name__ == "__main__":
    exit_on_sigterm()
    main()

