"""An asyncio service whose ``async def`` job runs on the leader only.

    pip install "singleton_jobs[apscheduler]"
    python examples/apscheduler_asyncio.py               # in two terminals
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import timezone

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from singleton_jobs import FileElector, current_term
from singleton_jobs.apscheduler import LeaderOnlyJobStore


async def refresh_exchange_rates() -> None:
    await asyncio.sleep(0.1)  # stands for an HTTP call; cancelled here if leadership ends
    token = current_term().fencing_token  # the term this run belongs to
    print(f"[{os.getpid()}] rates refreshed (fencing token {token})", flush=True)


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    elector = FileElector(name="apscheduler-asyncio-example", lease_duration=6, renew_deadline=4,
                          retry_period=1)
    scheduler = AsyncIOScheduler(timezone=timezone.utc)
    # A per-replica MemoryJobStore (the default): followers keep the schedule moving.
    scheduler.add_jobstore(LeaderOnlyJobStore(elector), "leader")
    scheduler.add_job(refresh_exchange_rates, "interval", seconds=2, jobstore="leader")
    scheduler.start()
    try:
        await asyncio.Event().wait()
    finally:
        scheduler.shutdown()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
