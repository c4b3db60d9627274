"""The documentation builds without warnings, and every Python sample in it runs.

Every ```python block in docs/**/*.md is either run or marked, on the line just before it,
``<!-- not-tested: why -->``. The runnable blocks of one page run in order, in one namespace
(as a reader would paste them into one session), in a process of their own; their placeholder
servers and paths are pointed at what exists here: a temporary directory for files, a fresh
database on the local PostgreSQL server, the local Redis server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import REDIS_URL, require_server

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
if not DOCS.is_dir():
    pytest.skip("docs/ is not part of this tree (an unpacked sdist that does not carry it)",
                allow_module_level=True)

# An opening fence of a Python block: ```python, ~~~py, ```{code-block} python, … (indented too,
# as inside a list item).
PYTHON_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?:\{code(?:-block)?\}[ \t]+)?"
    r"(?:python3?|py)[ \t]*$")
MARKER = re.compile(r"^[ \t]*<!--[ \t]*not-tested\b(?P<rest>.*?)-->[ \t]*$")

# What the samples name as stand-ins, and what replaces them when they run here.
POSTGRES_PLACEHOLDER = "postgresql+psycopg://app@db/app"
REDIS_PLACEHOLDER = "redis://cache:6379/0"
PATH_PLACEHOLDER = "/var/run/myapp/"

# Runs one page's blocks in order in __main__ (so that jobs defined in a sample can be found by
# reference, as APScheduler's shared stores need), with the .md file's own line numbers in
# tracebacks; then fails if a sample left an elector running.
RUNNER = """
import json, sys
import __main__
for block in json.load(sys.stdin):
    source = "\\n" * (block["line"] - 1) + block["code"]
    exec(compile(source, block["path"], "exec"), __main__.__dict__)
from singleton_jobs.election import live_electors
running = [elector for elector in live_electors() if elector.running]
if running:
    sys.exit(f"the samples left electors running (stop what you start): {running}")
"""


@dataclass(frozen=True)
class Block:
    page: str           # relative to docs/
    line: int           # 1-based line of the block's first line of code
    code: str
    not_tested: str | None  # the marker's reason; None for a block that runs

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The Python blocks of one page, with the not-tested marker each one carries."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(DOCS).as_posix()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = PYTHON_FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = index + 1
        while end < len(lines) and not (lines[end].strip().startswith(fence[0] * len(fence))
                                        and not lines[end].strip().strip(fence[0])):
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip()
                for line in lines[index + 1:end]]
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = MARKER.match(lines[before]) if before >= 0 else None
        reason = None
        if marker is not None:
            reason = marker["rest"].strip().lstrip(":").strip()
        blocks.append(Block(page, index + 2, "\n".join(body) + "\n", reason))
        index = end + 1
    return blocks


def doc_pages() -> list[Path]:
    return sorted(path for path in DOCS.rglob("*.md") if "_build" not in path.parts)


ALL_BLOCKS = [block for path in doc_pages() for block in python_blocks(path)]
PAGES_WITH_SAMPLES = sorted({block.page for block in ALL_BLOCKS if block.not_tested is None})


def test_every_python_sample_runs_or_says_why_not() -> None:
    assert len(ALL_BLOCKS) >= 10, "the docs pages or their Python samples went missing"
    for block in ALL_BLOCKS:
        if block.not_tested is not None:
            assert len(block.not_tested) >= 10, (
                f"{block.where}: say why the sample does not run: "
                "<!-- not-tested: needs a Kubernetes cluster -->")
    # A marker belongs right before a Python block: a stray one hides nothing and misleads.
    for path in doc_pages():
        text = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(text, 1):
            if MARKER.match(line):
                following = next((later for later in text[number:] if later.strip()), "")
                assert PYTHON_FENCE.match(following), (
                    f"docs/{path.relative_to(DOCS).as_posix()}:{number}: a not-tested marker "
                    "must be the line before a ```python block")


@pytest.mark.parametrize("page", PAGES_WITH_SAMPLES)
def test_python_samples_of_page_run(page: str, tmp_path: Path,
                                    request: pytest.FixtureRequest) -> None:
    blocks = [block for block in ALL_BLOCKS if block.page == page and block.not_tested is None]
    source = "".join(block.code for block in blocks)
    replacements = {PATH_PLACEHOLDER: f"{tmp_path}/"}
    if POSTGRES_PLACEHOLDER in source:
        replacements[POSTGRES_PLACEHOLDER] = request.getfixturevalue("fresh_postgres_database")
    if REDIS_PLACEHOLDER in source:
        require_server(REDIS_URL)
        replacements[REDIS_PLACEHOLDER] = REDIS_URL
    payload = []
    for block in blocks:
        code = block.code
        for placeholder, actual in replacements.items():
            code = code.replace(placeholder, actual)
        payload.append({"path": str(DOCS / block.page), "line": block.line, "code": code})
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(payload), env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (
        f"a sample of docs/{page} failed (exit {done.returncode}):\n"
        f"{done.stdout}\n{done.stderr}")


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    missing = [name for name in ("sphinx", "myst_parser", "furo")
               if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -r docs/requirements.txt")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"sphinx-build -W failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "html" / "api.html").is_file()


def test_readme_links_to_pages_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert links, "the README no longer links into docs/"
    assert [link for link in links if not (ROOT / link).is_file()] == []
