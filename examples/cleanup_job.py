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
            # The first replica leads within milliseconds; a follower learns who leads at
            # its first read. Either way, a moment's wait makes the first line say so.
            elector.wait_for_leadership(timeout=1.0)
            while True:
                deleted = clean_up_expired_sessions()  # None on followers
                if deleted is None:
                    print(f"{elector.identity}: following {elector.leader or 'nobody yet'}; "
                          "skipped", flush=True)
                else:
                    print(f"{elector.identity}: leading; deleted {deleted}", flush=True)
                time.sleep(2)
    except KeyboardInterrupt:
        pass
