"""Sphinx configuration for the singleton_jobs documentation (``tox -e docs``)."""

from __future__ import annotations

import inspect
import os
import re
import sys
from typing import Any

# Document the checkout this file belongs to, not whichever copy happens to be installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import singleton_jobs  # noqa: E402

project = "singleton_jobs"
author = "singleton_jobs contributors"
copyright = "singleton_jobs contributors"
release = singleton_jobs.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

# The pages are Markdown (MyST); the API reference is generated from the reST docstrings.
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "requirements.txt"]

# Links into sections: [Redis](backends/redis.md#replication-and-failover).
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = f"singleton_jobs {release}"


def _signature(app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None,
               return_annotation: str | None) -> tuple[str, str | None] | None:
    """Show signatures the way a caller writes them.

    ``Elector.__new__(cls, *args, **kwargs)`` exists only to turn positional timings into a
    helpful TypeError, but autodoc prefers ``__new__`` to ``__init__`` and would print
    ``(*args, **kwargs)`` for every elector: show ``__init__``'s parameters instead. A Protocol
    is never instantiated: no signature. File permission bits read as octal (``mode=0o600``,
    not ``mode=384``).
    """
    if what == "class" and isinstance(obj, type):
        if getattr(obj, "_is_protocol", False):
            return "", return_annotation
        if signature and signature.startswith("(*args") and obj.__init__ is not object.__init__:
            from sphinx.util.inspect import stringify_signature

            init = inspect.signature(obj.__init__)
            init = init.replace(parameters=list(init.parameters.values())[1:])
            signature = stringify_signature(init, show_return_annotation=False)
    if signature and "mode: int = " in signature:
        signature = re.sub(r"(mode: int = )(\d+)", lambda m: m[1] + oct(int(m[2])), signature)
    return signature, return_annotation


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _signature)
