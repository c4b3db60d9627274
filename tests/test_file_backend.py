"""The file backend: format, corrupt content, bad paths, permissions, process races."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAST, wait_until
from hypothesis import given
from hypothesis import strategies as st

from singleton_jobs import (
    ConfigurationError,
    FileElector,
    FileLeaseStore,
    LeaseRecord,
    LeaseStoreError,
    default_lease_dir,
)
from singleton_jobs.backends.file import format_record, parse_record
from singleton_jobs.lease import UNKNOWN_HOLDER

NOW = 1_767_000_000.0


@pytest.fixture
def electors() -> Iterator[list[FileElector]]:
    made: list[FileElector] = []
    yield made
    for elector in made:
        elector.stop()


def test_record_round_trips_including_identities_with_colons() -> None:
    record = LeaseRecord("host:8080/worker:1", 15.0, NOW, NOW + 2.5, 3)
    data = format_record(record)
    assert data.startswith(b"host:8080/worker:1:1767000002.500000\n")
    assert parse_record(data, now=NOW) == record


def test_reads_the_seed_format_pid_colon_seconds() -> None:
    record = parse_record(b"12345:1704897025", now=NOW)
    assert record == LeaseRecord("12345", 0.0, 1704897025.0, 1704897025.0, 0)
    assert parse_record(b"12345:1704897025\n", now=NOW).holder == "12345"


CORRUPT = {
    "empty": b"",
    "binary": b"\x00\xff\xfe\x01garbage\x80",
    "huge": b"big:1700000000\n" + b"x=1\n" * 5000,
    "no colon": b"just-a-name",
    "no timestamp": b"holder:",
    "non-numeric timestamp": b"holder:yesterday",
    "negative timestamp": b"holder:-5",
    "far-future timestamp": b"holder:99999999999",
    "nan timestamp": b"holder:nan",
    "infinite timestamp": b"holder:inf",
    "identity with newline": b"bad\nholder:1700000000",
    "identity with control character": b"bad\tholder:1700000000",
    "non-utf8 identity": b"\xff\xfe:1700000000",
    "negative transitions": b"holder:1700000000\ntransitions=-1",
    "non-numeric lease duration": b"holder:1700000000\nlease_duration=long",
    "broken field line": b"holder:1700000000\ntransitions",
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_content_parses_as_held_by_nobody_valid(content: bytes) -> None:
    record = parse_record(content, now=NOW)
    assert record.holder == UNKNOWN_HOLDER and not record.readable


@given(st.binary(max_size=600))
def test_any_bytes_parse_to_a_record_without_raising(data: bytes) -> None:
    record = parse_record(data, now=NOW)
    assert isinstance(record, LeaseRecord)
    assert record.transitions >= 0 and record.lease_duration >= 0


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_lease_is_taken_over_only_after_one_lease_duration(
        tmp_path: Path, content: bytes, electors: list[FileElector]) -> None:
    path = tmp_path / "corrupt.lease"
    path.write_bytes(content)
    elector = FileElector(path, identity="rescuer", lease_duration=0.4, renew_deadline=0.25,
                          retry_period=0.05)
    electors.append(elector)
    started = time.monotonic()
    elector.start()
    assert elector.wait_for_leadership(5)
    assert time.monotonic() - started >= 0.4
    assert parse_record(path.read_bytes()).holder == "rescuer"


def test_two_electors_on_a_corrupt_lease_elect_one_leader(
        tmp_path: Path, electors: list[FileElector]) -> None:
    path = tmp_path / "corrupt.lease"
    path.write_bytes(b"\x00garbage")
    for name in ("a", "b"):
        electors.append(FileElector(path, identity=name, **FAST).start())  # type: ignore[arg-type]
    assert wait_until(lambda: any(e.is_leader for e in electors), 5)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert sum(e.is_leader for e in electors) <= 1


def test_seed_lease_of_a_live_pid_is_respected_then_taken_over(
        tmp_path: Path, electors: list[FileElector]) -> None:
    path = tmp_path / "seed.lease"
    path.write_text(f"12345:{int(time.time())}")
    elector = FileElector(path, identity="new", lease_duration=0.5, renew_deadline=0.3,
                          retry_period=0.05)
    electors.append(elector)
    started = time.monotonic()
    elector.start()
    assert wait_until(lambda: elector.leader == "12345", 2)
    assert elector.wait_for_leadership(5)
    assert time.monotonic() - started >= 0.5
    assert elector.fencing_token == 1


def test_lease_and_lock_files_are_private_by_default(
        tmp_path: Path, electors: list[FileElector]) -> None:
    os.umask(0o022)
    elector = FileElector(tmp_path / "private.lease", **FAST).start()  # type: ignore[arg-type]
    electors.append(elector)
    assert elector.wait_for_leadership(5)
    assert stat.S_IMODE((tmp_path / "private.lease").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "private.lease.lock").stat().st_mode) == 0o600


def test_mode_argument_is_applied_exactly(tmp_path: Path, electors: list[FileElector]) -> None:
    old = os.umask(0o077)
    try:
        elector = FileElector(tmp_path / "shared.lease", mode=0o640, **FAST).start()  # type: ignore[arg-type]
        electors.append(elector)
        assert elector.wait_for_leadership(5)
        assert wait_until(lambda: len(os.listdir(tmp_path)) == 3, 2)  # lease, .lock, .fence
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.lease").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "shared.lease.fence").stat().st_mode) == 0o640


def test_release_keeps_the_file_and_nothing_is_ever_deleted(
        tmp_path: Path, electors: list[FileElector]) -> None:
    path = tmp_path / "kept.lease"
    elector = FileElector(path, identity="owner", **FAST).start()  # type: ignore[arg-type]
    assert elector.wait_for_leadership(5)
    elector.stop()
    assert path.read_text().startswith(":")  # released: empty holder
    assert sorted(os.listdir(tmp_path)) == ["kept.lease", "kept.lease.fence", "kept.lease.lock"]


def test_lease_of_another_holder_is_not_touched_by_a_stopping_follower(
        tmp_path: Path, electors: list[FileElector]) -> None:
    path = tmp_path / "theirs.lease"
    leader = FileElector(path, identity="leader", lease_duration=5.0, renew_deadline=3.0,
                         retry_period=0.05).start()
    electors.append(leader)
    assert leader.wait_for_leadership(5)
    follower = FileElector(path, identity="follower", lease_duration=5.0, renew_deadline=3.0,
                           retry_period=0.05).start()
    assert wait_until(lambda: follower.leader == "leader", 5)
    follower.stop()
    assert parse_record(path.read_bytes()).holder == "leader"
    assert leader.is_leader


def test_directory_as_lease_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=f"lease path {tmp_path} is a directory"):
        FileLeaseStore(tmp_path)


def test_missing_parent_directory_is_refused(tmp_path: Path) -> None:
    expected = f"directory {tmp_path / 'nope'} for lease file x.lease does not exist"
    with pytest.raises(ConfigurationError, match=expected):
        FileLeaseStore(tmp_path / "nope" / "x.lease")


def test_symlink_at_lease_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    (tmp_path / "link.lease").symlink_to(target)
    with pytest.raises(ConfigurationError, match="is a symlink"):
        FileLeaseStore(tmp_path / "link.lease")
    assert target.read_text() == "precious"


def test_symlink_swapped_in_while_running_is_not_followed(
        tmp_path: Path, electors: list[FileElector]) -> None:
    path = tmp_path / "swap.lease"
    target = tmp_path / "precious"
    target.write_text("precious")
    elector = FileElector(path, **FAST)  # type: ignore[arg-type]
    electors.append(elector)
    path.symlink_to(target)
    with pytest.raises(LeaseStoreError, match="symlink"):
        elector.store.get(timeout=1)
    elector.start()
    time.sleep(3 * FAST["lease_duration"])
    assert not elector.is_leader and elector.running
    assert target.read_text() == "precious"


def _construct_as_nobody(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    try:
        FileLeaseStore(path)
        queue.put("constructed")
    except ConfigurationError as exc:
        queue.put(str(exc))


def test_permission_denied_is_a_clear_error(tmp_path_factory: pytest.TempPathFactory) -> None:
    # A directory this user (or, as root, the 'nobody' user of the child) cannot write to.
    directory = Path(tmp_path_factory.mktemp("locked"))
    os.chmod(directory.parent, 0o755)
    os.chmod(directory, 0o555)
    for parent in directory.parents:
        if parent == Path("/"):
            break
        if os.geteuid() == 0 and not os.stat(parent).st_mode & 0o001:
            os.chmod(parent, os.stat(parent).st_mode | 0o001)  # let 'nobody' traverse
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_construct_as_nobody, args=(str(directory / "x.lease"), queue))
    child.start()
    message = queue.get(timeout=30)
    child.join(10)
    assert message.startswith(f"permission denied for lease path {directory / 'x.lease'}")


@contextlib.contextmanager
def tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A real 64 KiB tmpfs at ``mount_point`` (mounting needs root; CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root (CI runs as root)")
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options}size=64k", "tmpfs",
                    str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "ro", "ro,") as mount_point:
        yield mount_point


def test_read_only_filesystem_is_a_clear_error(read_only_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="is on a read-only filesystem"):
        FileLeaseStore(read_only_dir / "x.lease")


def test_default_directory_is_private_and_per_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    directory = Path(default_lease_dir())
    assert directory == tmp_path / "singleton_jobs"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert FileLeaseStore(name="leader").path == str(directory / "leader.lease")


def test_default_directory_open_to_others_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "singleton_jobs").mkdir(mode=0o777)
    os.chmod(tmp_path / "singleton_jobs", 0o777)
    with pytest.raises(ConfigurationError, match="chmod 700"):
        default_lease_dir()


def test_default_directory_as_symlink_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "attacker").mkdir(mode=0o700)
    (tmp_path / "singleton_jobs").symlink_to(tmp_path / "attacker")
    with pytest.raises(ConfigurationError, match="not a directory"):
        default_lease_dir()


def _create_in_child(path: str, identity: str, barrier: multiprocessing.Barrier,  # type: ignore[name-defined]
                     results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = FileLeaseStore(path)
    barrier.wait()
    version = store.create(LeaseRecord(identity, 15.0, NOW, NOW, 0), timeout=10)
    results.put((identity, version is not None))


def _update_in_child(path: str, identity: str, barrier: multiprocessing.Barrier,  # type: ignore[name-defined]
                     results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = FileLeaseStore(path)
    snapshot = store.get(timeout=10)
    assert snapshot is not None
    barrier.wait()
    version = store.update(LeaseRecord(identity, 15.0, NOW, NOW, 1), snapshot[1], timeout=10)
    results.put((identity, version is not None))


@pytest.mark.parametrize("operation", [_create_in_child, _update_in_child])
def test_processes_racing_on_one_file_have_exactly_one_winner(tmp_path: Path,
                                                              operation: object) -> None:
    path = str(tmp_path / "race.lease")
    if operation is _update_in_child:
        FileLeaseStore(path).create(LeaseRecord("old", 15.0, NOW, NOW, 0), timeout=1)
    context = multiprocessing.get_context("fork")
    contenders = 6
    barrier = context.Barrier(contenders)
    results = context.Queue()
    children = [context.Process(target=operation, args=(path, f"p{i}", barrier, results))
                for i in range(contenders)]
    for child in children:
        child.start()
    outcomes = dict(results.get(timeout=30) for _ in children)
    for child in children:
        child.join(10)
    winners = [name for name, won in outcomes.items() if won]
    assert len(winners) == 1
    assert parse_record(Path(path).read_bytes()).holder == winners[0]


def test_default_directory_without_runtime_dir_is_in_the_home_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    directory = Path(default_lease_dir())
    assert directory == tmp_path / ".cache" / "singleton_jobs"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def _sample_leaders(electors: list[FileElector], seconds: float) -> list[set[str]]:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append({e.identity for e in electors if e.is_leader})
        time.sleep(0.002)
    return samples


def test_garbage_written_over_a_running_leader_is_repaired_by_it(
        tmp_path: Path, electors: list[FileElector]) -> None:
    path = tmp_path / "vandalized.lease"
    a = FileElector(path, identity="a", **FAST).start()  # type: ignore[arg-type]
    electors.append(a)
    assert a.wait_for_leadership(5)
    token = a.fencing_token
    b = FileElector(path, identity="b", **FAST).start()  # type: ignore[arg-type]
    electors.append(b)
    assert wait_until(lambda: b.leader == "a", 5)
    path.write_bytes(b"\x00\x01 not a lease")
    samples = _sample_leaders([a, b], 3 * FAST["lease_duration"])
    assert all(leaders == {"a"} for leaders in samples)  # a kept leading throughout
    assert parse_record(path.read_bytes()).holder == "a"
    assert a.fencing_token == token


def test_lease_file_deleted_under_a_running_leader_never_makes_two_leaders(
        tmp_path: Path, electors: list[FileElector]) -> None:
    path = tmp_path / "deleted.lease"
    a = FileElector(path, identity="a", **FAST).start()  # type: ignore[arg-type]
    electors.append(a)
    assert a.wait_for_leadership(5)
    followers = [FileElector(path, identity=name, **FAST).start()  # type: ignore[arg-type]
                 for name in ("b", "c")]
    electors.extend(followers)
    assert wait_until(lambda: all(f.leader == "a" for f in followers), 5)
    for _ in range(5):  # deleted again and again, also while nobody holds it
        path.unlink(missing_ok=True)
        samples = _sample_leaders([a, *followers], 0.3)
        assert all(len(leaders) <= 1 for leaders in samples)
    # One lease duration after the last deletion, exactly one of them leads again.
    assert wait_until(lambda: sum(e.is_leader for e in electors) == 1, 5)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root (CI runs as root)")
def test_lease_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "planted.lease"
    path.write_text("attacker:1700000000\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigurationError, match="belongs to uid 65534, not to this user"):
        FileLeaseStore(path)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "tiny", "") as mount_point:
        yield mount_point


def test_disk_full_makes_the_leader_step_down_cleanly_and_recover(
        tiny_filesystem: Path, electors: list[FileElector],
        caplog: pytest.LogCaptureFixture) -> None:
    stopped = []
    elector = FileElector(tiny_filesystem / "full.lease", identity="cramped",
                          on_stopped_leading=lambda: stopped.append(1), **FAST)  # type: ignore[arg-type]
    electors.append(elector)
    elector.start()
    assert elector.wait_for_leadership(5)
    filler = tiny_filesystem / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)
    assert wait_until(lambda: stopped, 5)  # renewals fail with ENOSPC: it steps down
    assert not elector.is_leader and elector.running
    assert "No space left on device" in caplog.text
    filler.unlink()
    assert elector.wait_for_leadership(5)  # and leads again once there is room


def test_filesystem_turning_read_only_makes_the_leader_step_down(
        tiny_filesystem: Path, electors: list[FileElector],
        caplog: pytest.LogCaptureFixture) -> None:
    elector = FileElector(tiny_filesystem / "ro.lease", identity="frozen", **FAST)  # type: ignore[arg-type]
    electors.append(elector)
    elector.start()
    assert elector.wait_for_leadership(5)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_filesystem)], check=True)
    try:
        assert wait_until(lambda: not elector.is_leader, 5)
        time.sleep(3 * FAST["retry_period"])
        assert not elector.is_leader and elector.running
        assert "Read-only file system" in caplog.text
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_filesystem)], check=True)
    assert elector.wait_for_leadership(5)


def test_wall_clock_jumps_change_nothing_about_who_leads(
        tmp_path: Path, electors: list[FileElector]) -> None:
    path = tmp_path / "clock.lease"
    offsets = [0.0]
    for name in ("a", "b", "c"):
        elector = FileElector(path, identity=name, **FAST)  # type: ignore[arg-type]
        elector._wall = lambda: time.time() + offsets[0]  # type: ignore[method-assign]
        electors.append(elector.start())
    assert wait_until(lambda: any(e.is_leader for e in electors), 5)
    leader = next(e for e in electors if e.is_leader)
    for offset in (3 * 3600.0, -5 * 3600.0, 7 * 3600.0, -3 * 3600.0, 0.0):
        offsets[0] = offset
        samples = _sample_leaders(electors, 0.4)
        assert all(leaders == {leader.identity} for leaders in samples)


@pytest.mark.parametrize("destroy", ["garbage", "delete"])
def test_fencing_token_keeps_growing_after_the_lease_file_is_destroyed(
        tmp_path: Path, electors: list[FileElector], destroy: str) -> None:
    path = tmp_path / "destroyed.lease"
    for round_ in range(3):  # three terms: tokens 0, 1, 2
        elector = FileElector(path, identity=f"old-{round_}", **FAST)  # type: ignore[arg-type]
        elector.start()
        assert elector.wait_for_leadership(5)
        elector.stop()
    if destroy == "garbage":
        path.write_bytes(b"\xff\xfe garbage")
    else:
        path.unlink()
    # A replica that never saw the old counter takes over.
    newcomer = FileElector(path, identity="newcomer", **FAST)  # type: ignore[arg-type]
    electors.append(newcomer)
    newcomer.start()
    assert newcomer.wait_for_leadership(5)
    assert newcomer.fencing_token == 3
