"""A nightly-style cleanup that runs on one replica only. Start this script several times.

    python examples/cleanup_job.py            # in two or three terminals

Each copy campaigns for the same lease file; only the leader prints "cleaning up". Stop the
leader with Ctrl+C and another copy takes over within one retry period; kill it with
``kill -9`` and another takes over after the lease duration.
"""

from __future__ import annotations

import logging
import time

from singleton_jobs import FileElector, leader_only, set_default_elector


@leader_only
def clean_up_expired_sessions() -> int:
    """The job body: runs only on the leader; returns how many rows it deleted."""
    print(f"cleaning up (fencing token {elector.fencing_token})", flush=True)
    return 42


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    elector = FileElector(name="cleanup-job", lease_duration=6, renew_deadline=4, retry_period=1)
    set_default_elector(elector)
    try:
        with elector:  # leaving the with-block releases the lease, also on Ctrl+C
            while True:
                deleted = clean_up_expired_sessions()  # None on followers
                print(f"{elector.identity}: leader={elector.leader} deleted={deleted}",
                      flush=True)
                time.sleep(2)
    except KeyboardInterrupt:
        pass
