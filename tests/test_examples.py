"""The example scripts run, and elect one runner for their leader-only job."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HERE, Process, wait_until

EXAMPLES = HERE.parent / "examples"


@pytest.mark.parametrize(("script", "leader_line", "database", "ready_line"), [
    ("cleanup_job.py", "cleaning up", "sqlite", "following"),
    ("apscheduler_shared_sqlalchemy.py", "sending the report", "sqlite", "replica ready"),
    ("apscheduler_shared_sqlalchemy.py", "sending the report", "postgresql", "replica ready"),
    ("apscheduler_asyncio.py", "rates refreshed", "sqlite", "campaigning for lease"),
])
def test_example_runs_its_job_on_one_of_two_replicas(
        spawn: Callable[..., Process], tmp_path: Path, script: str, leader_line: str,
        database: str, ready_line: str, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    if database == "postgresql":
        url = request.getfixturevalue("fresh_postgres_database")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "JOBS_DATABASE": url}
    first = spawn(str(EXAMPLES / script), env=env)
    assert first.wait_for_line(lambda line: leader_line in line, 30), first.output()
    second = spawn(str(EXAMPLES / script), env=env)
    # The follower has finished starting up (a state, not a line printed before it).
    assert second.wait_for_line(lambda line: ready_line in line, 30), second.output()
    for process in (second, first):  # the follower first, so it never takes over
        process.signal(signal.SIGINT)
        assert process.popen.wait(20) == 0, process.output()
    assert leader_line not in second.output()
    assert "Traceback" not in first.output() + second.output()
    assert "=None" not in first.output() + second.output()  # no half-known state printed


def test_shared_store_example_exits_cleanly_on_ctrl_c_during_start_up(
        spawn: Callable[..., Process], tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path),
           "JOBS_DATABASE": f"sqlite:///{tmp_path / 'jobs.sqlite'}"}
    replica = spawn(str(EXAMPLES / "apscheduler_shared_sqlalchemy.py"), env=env)
    # As soon as the interpreter has started (the signal handlers are set first in main()).
    assert replica.wait_for_line(lambda line: "campaigning for lease" in line, 30), \
        replica.output()
    replica.signal(signal.SIGINT)
    assert replica.popen.wait(20) == 0, replica.output()
    assert "Traceback" not in replica.output()


def test_fenced_writes_example_refuses_the_late_write_of_a_paused_leader(
        spawn: Callable[..., Process], fresh_postgres_database: str) -> None:
    import sqlalchemy

    timings = ["--lease-duration", "2", "--renew-deadline", "1", "--retry-period", "0.1"]
    script = str(EXAMPLES / "fenced_writes.py")
    first = spawn(script, fresh_postgres_database, "--work-seconds", "2", *timings)
    computing = first.wait_for_line(lambda line: line.startswith("COMPUTING"), 30)
    assert computing, first.output()
    second = spawn(script, fresh_postgres_database, "--work-seconds", "0.2", *timings)
    assert second.wait_for_line(lambda line: line.startswith("STARTED"), 30), second.output()
    # Paused between its leadership check and its write; replaced while it sleeps.
    first.signal(signal.SIGSTOP)
    wrote = second.wait_for_line(lambda line: line.startswith("WROTE"), 30)
    assert wrote, second.output()
    first.signal(signal.SIGCONT)  # it wakes up and writes with its old token
    old_token = int(computing.split()[2])
    refused = first.wait_for_line(lambda line: line.startswith("REFUSED"), 30)
    assert refused and refused.startswith(f"REFUSED token {old_token} batch 1: the table holds "
                                          "token "), first.output()
    new_token = int(wrote.split()[2])
    assert new_token > old_token
    engine = sqlalchemy.create_engine(fresh_postgres_database)
    with engine.connect() as connection:
        body, fence = connection.execute(
            sqlalchemy.text("SELECT body, fence FROM fenced_report")).one()
    engine.dispose()
    assert fence >= new_token and f"by replica-{second.pid}" in body
    for process in (first, second):
        process.signal(signal.SIGTERM)  # exit_on_sigterm(): unwinds, releases, exits 143
        assert process.popen.wait(20) == 128 + signal.SIGTERM, process.output()
    assert "Traceback" not in first.output() + second.output()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_migrate_then_schedule_example_migrates_once_and_every_replica_waits_for_it(
        spawn: Callable[..., Process], tmp_path: Path, database: str,
        request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'service.sqlite'}"
    if database == "postgresql":
        url = request.getfixturevalue("fresh_postgres_database")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "JOBS_DATABASE": url,
           "MIGRATION_SECONDS": "1"}
    script = str(EXAMPLES / "migrate_then_schedule.py")
    fleet = [spawn(script, env=env) for _ in range(3)]
    for replica in fleet:
        assert replica.wait_for_line(lambda line: "schema ready" in line, 60), replica.output()
    migrated = [r for r in fleet if "migrating the schema" in r.output()]
    assert len(migrated) == 1
    done_at = next(at for at, line in migrated[0].lines if "schema migrated" in line)
    for replica in fleet:  # nobody went on before the migration was over
        ready_at = next(at for at, line in replica.lines if "schema ready" in line)
        assert ready_at >= done_at
    assert wait_until(lambda: any("report written" in r.output() for r in fleet), 30), \
        "\n".join(r.output() for r in fleet)
    late = spawn(script, env=env)  # next week's restart
    assert late.wait_for_line(lambda line: "schema ready (by another replica)" in line, 30), \
        late.output()
    assert "migrating" not in late.output()
    for replica in [*fleet, late]:
        replica.signal(signal.SIGINT)
        assert replica.popen.wait(20) == 0, replica.output()
    assert "Traceback" not in "".join(r.output() for r in [*fleet, late])


def test_celery_beat_example_sends_from_one_replica_and_hands_over_on_sigterm() -> None:
    import subprocess

    from servers import REDIS_URL, require_server

    require_server(REDIS_URL)
    env = {**os.environ, "SECONDS_BEFORE_STOP": "8", "REDIS_URL": REDIS_URL,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent),
                                                       os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(["bash", str(EXAMPLES / "celery_beat" / "run.sh")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    before, marker, after = result.stdout.partition("--- SIGTERM to replica-1")
    assert marker, result.stdout
    assert "[replica-1]" in before and "became leader" in before
    assert "report sent" in before
    # replica-1 released on SIGTERM; replica-2's beat took over and sent from then on.
    assert "[replica-1]" in after and "released" in after
    assert "[replica-2]" in after and "became leader" in after.split("--- stopping")[0]
    tokens = {line.rsplit(" ", 1)[1] for line in result.stdout.splitlines()
              if "report sent by the beat of term" in line}
    assert len(tokens) == 2, result.stdout  # one term per leader, nothing else sent
