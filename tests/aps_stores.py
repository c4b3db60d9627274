"""Job stores for the APScheduler tests: real stores with a slow read, and a store without
compare-and-set, to reach the LeaderOnlyJobStore's fallback."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from apscheduler.jobstores.base import BaseJobStore


class ReadGate:
    """Holds the first due-jobs read that found something, until the test lets it go.

    The read has already happened when it is held: its answer is what the database said then,
    and arrives late, as over a slow link or from a slow database.
    """

    def __init__(self) -> None:
        self.held = threading.Event()      # a read is being held
        self.released = threading.Event()  # the test let it go
        self._used = False

    def hold(self, jobs: list[Any]) -> None:
        if jobs and not self._used:
            self._used = True
            self.held.set()
            if not self.released.wait(60):
                raise TimeoutError("the test never released the held read")


def slow_reading(store_class: type[Any]) -> type[Any]:
    """A subclass of ``store_class`` whose ``get_due_jobs`` answers through a :class:`ReadGate`
    (the ``gate`` attribute): still an instance of the real store class."""

    class SlowReading(store_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.gate = ReadGate()

        def get_due_jobs(self, now: datetime) -> list[Any]:
            jobs: list[Any] = super().get_due_jobs(now)
            self.gate.hold(jobs)
            return jobs

    SlowReading.__name__ = f"SlowReading{store_class.__name__}"
    return SlowReading


class PlainJobStore(BaseJobStore):  # type: ignore[misc]
    """A shared store that offers no compare-and-set: every call goes to ``inner`` (a real
    SQLAlchemyJobStore), but this is not an instance of any store class the wrapper knows.

    ``after_update`` is called after each ``update_job`` has been written.
    """

    def __init__(self, inner: BaseJobStore) -> None:
        super().__init__()
        self.inner = inner
        self.after_update: Callable[[], None] | None = None

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self.inner.start(scheduler, alias)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def lookup_job(self, job_id: str) -> Any:
        return self.inner.lookup_job(job_id)

    def get_due_jobs(self, now: datetime) -> list[Any]:
        return self.inner.get_due_jobs(now)  # type: ignore[no-any-return]

    def get_next_run_time(self) -> datetime | None:
        return self.inner.get_next_run_time()  # type: ignore[no-any-return]

    def get_all_jobs(self) -> list[Any]:
        return self.inner.get_all_jobs()  # type: ignore[no-any-return]

    def add_job(self, job: Any) -> None:
        self.inner.add_job(job)

    def update_job(self, job: Any) -> None:
        self.inner.update_job(job)
        if self.after_update is not None:
            self.after_update()

    def remove_job(self, job_id: str) -> None:
        self.inner.remove_job(job_id)

    def remove_all_jobs(self) -> None:
        self.inner.remove_all_jobs()
