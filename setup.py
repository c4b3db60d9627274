"""Metadata lives in setup.cfg; only the long description for the package index is made here."""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import setup

# README.md opens with the commands of a clone of the repository (editable installs, the test
# suite), which mean nothing on the package index: there that first code block becomes the
# install from the index. The rest of the README is the long description as it is, with links
# to files of the repository reduced to their text.
INDEX_OPENING = """```sh
pip install "singleton_jobs[apscheduler]"
singleton-jobs demo        # a demo replica; start more in other terminals
```

The source distribution also carries the test suite, the examples and the benchmarks."""


#: A Markdown link to a file of the repository (``[text](docs/cli.md)``): on the package index
#: it would lead nowhere, so it becomes its text (the pages ship in the sdist).
RELATIVE_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|#)[^)\s]+\)")


def long_description() -> str:
    readme = (Path(__file__).parent / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"^```.*?^```$", readme, flags=re.DOTALL | re.MULTILINE)
    if first_block is not None and "pip install -e" in first_block.group():
        readme = readme[:first_block.start()] + INDEX_OPENING + readme[first_block.end():]
    return RELATIVE_LINK.sub(r"\1", readme)


setup(long_description=long_description())
