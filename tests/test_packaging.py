"""What a user gets from the package index: the built sdist and wheel, and their metadata.

The distributions are built once for the module, the way `python -m build` builds them: an sdist
from a copy of the source tree, then the wheel from that unpacked sdist. One isolated build
environment serves both (`python -m build` makes one per distribution, which doubles the time).
"""

from __future__ import annotations

import email.message
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import HERE
from packaging.requirements import Requirement

import singleton_jobs

ROOT = HERE.parent
#: Files of the test suite that are not test modules: without them nothing collects.
TEST_HELPERS = ["conftest.py", "k8s_api.py", "contender.py", "scheduler_replica.py", "servers.py",
                "aps_jobs.py", "aps_stores.py"]
#: Folders whose tracked files the tests start or read, so the sdist must carry all of them.
SHIPPED_FOLDERS = ["tests", "examples", "benchmarks", "docs"]
NOT_SOURCE = shutil.ignore_patterns(".git", "*.egg-info", "build", "dist", ".tox", "__pycache__",
                                    "*.py[cod]", ".*_cache", ".hypothesis", ".benchmarks")


@dataclass
class Built:
    sdist: Path
    wheel: Path
    unpacked_sdist: Path  # a pristine copy, for running its tests
    output: str  # what the build backend printed and warned


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    from build import ProjectBuilder
    from build.env import DefaultIsolatedEnv

    work = tmp_path_factory.mktemp("packaging")
    # A copy: a stale singleton_jobs.egg-info/SOURCES.txt in a checkout adds its files to the
    # sdist whatever MANIFEST.in says, and the build leaves build/ and egg-info behind.
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    output: list[str] = []

    def runner(cmd: Sequence[str], cwd: str | None = None,
               extra_environ: Mapping[str, str] | None = None) -> None:
        env = {**os.environ, **(extra_environ or {})}
        # With it set, setuptools warns that byte-compiling is disabled: a warning about this
        # environment, not about the project.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        result = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=240)
        output.append(result.stdout)
        assert result.returncode == 0, result.stdout

    # build turns the backend's Python warnings into warnings of this process: record them.
    with warnings.catch_warnings(record=True) as caught, DefaultIsolatedEnv() as env:
        warnings.simplefilter("always")
        sdist_builder = ProjectBuilder.from_isolated_env(env, source, runner=runner)
        env.install(sdist_builder.build_system_requires)
        env.install(sdist_builder.get_requires_for_build("sdist"))
        sdist = Path(sdist_builder.build("sdist", work / "dist"))
        wheel_source = unpack(sdist, work / "wheel-source")
        wheel_builder = ProjectBuilder.from_isolated_env(env, wheel_source, runner=runner)
        env.install(wheel_builder.get_requires_for_build("wheel"))
        wheel = Path(wheel_builder.build("wheel", work / "dist"))
    output.extend(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return Built(sdist, wheel, unpack(sdist, work / "unpacked"), "".join(output))


def unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as archive:
        # The "data" filter refuses links and paths out of ``into``; Pythons before the security
        # releases of 2023 lack it (and their sdists come from our own build).
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(into, **safe)  # type: ignore[arg-type]
    (top,) = into.iterdir()
    return top


def sdist_names(built: Built) -> set[str]:
    """The sdist's file names, relative to its top folder."""
    with tarfile.open(built.sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def wheel_metadata(built: Built) -> email.message.Message:
    with zipfile.ZipFile(built.wheel) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(wheel.read(name).decode())


def tracked_files(folders: list[str]) -> set[str]:
    """The files git tracks in ``folders`` (every file there, outside a git checkout)."""
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--", *folders],
                                capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        listed = None
    if listed is not None and listed.returncode == 0 and listed.stdout:
        return {name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()}
    return {path.relative_to(ROOT).as_posix() for folder in folders
            for path in (ROOT / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}


def test_wheel_and_sdist_carry_the_mit_license(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        licenses = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert licenses, wheel.namelist()
        text = wheel.read(licenses[0]).decode()
    assert text.startswith("MIT License") and "the singleton_jobs authors" in text
    assert "LICENSE" in sdist_names(built)
    assert (built.unpacked_sdist / "LICENSE").read_text() == text
    metadata = wheel_metadata(built)
    assert metadata["License-Expression"] == "MIT"
    assert not [c for c in metadata.get_all("Classifier", []) if c.startswith("License ::")]


def test_build_prints_no_warning(built: Built) -> None:
    warnings = [line for line in built.output.splitlines()
                if re.search(r"warn|deprecat", line, re.IGNORECASE)]
    assert not warnings, "\n".join(warnings)


def test_sdist_carries_the_whole_test_suite_and_what_it_reads(built: Built) -> None:
    names = sdist_names(built)
    expected = {f"tests/{helper}" for helper in TEST_HELPERS} | tracked_files(SHIPPED_FOLDERS) | {
        "README.md", "CHANGELOG.md", "LICENSE", "tox.ini", "Makefile", "benchmarks/chaos.py",
        "examples/kubernetes/deployment.yaml"}
    assert not expected - names, f"missing from the sdist: {sorted(expected - names)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_unpacked_sdist_collects_its_tests_without_errors(built: Built) -> None:
    env = {**os.environ, "PYTHONPATH": str(built.unpacked_sdist)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-n", "0"],
        cwd=built.unpacked_sdist, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^\d+ tests collected", result.stdout, re.MULTILINE), result.stdout[-3000:]
    assert "error" not in result.stdout.splitlines()[-1].lower()


def test_index_description_opens_with_an_install_from_the_index(built: Built) -> None:
    description = wheel_metadata(built).get_payload()
    assert isinstance(description, str)
    opening = description.split("\n## ")[0]
    assert "pip install -e" not in opening, opening
    assert 'pip install "singleton_jobs[apscheduler]"' in opening, opening
    # Made from the README: everything after the README's first code block is there, links to
    # files of the repository reduced to their text (they would lead nowhere on the index).
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after_first_block = readme.split("```", 2)[2]
    assert "](docs/" in after_first_block
    assert re.sub(r"\[([^\]]+)\]\((?!https?://|#)[^)\s]+\)", r"\1",
                  after_first_block).strip() in description
    assert not re.search(r"\]\((?!https?://|#)", description), "a relative link on the index"


def test_twine_check_passes_strictly(built: Built) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(built.sdist), str(built.wheel)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_version_matches_the_metadata_and_the_changelog(built: Built) -> None:
    assert wheel_metadata(built)["Version"] == singleton_jobs.__version__
    assert built.sdist.name == f"singleton_jobs-{singleton_jobs.__version__}.tar.gz"
    changelog = (built.unpacked_sdist / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[(\d[^\]]*)\]", changelog, re.MULTILINE)
    assert releases and releases[0] == singleton_jobs.__version__, releases


def test_apscheduler_extra_installs_sqlalchemy_for_the_shared_job_store(built: Built) -> None:
    requirements = [Requirement(r) for r in wheel_metadata(built).get_all("Requires-Dist", [])]
    installed = {r.name.lower() for r in requirements
                 if r.marker is not None and r.marker.evaluate({"extra": "apscheduler"})}
    assert {"apscheduler", "sqlalchemy"} <= installed, installed
