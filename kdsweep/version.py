"""kdsweep's version: `pyproject.toml` is its one source, read from the installed package's metadata."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path


def _version() -> str:
    try:
        return metadata.version("kdsweep")
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not pip-installed (the GPU machines)
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
        except OSError:
            found = None
        return found.group(1) if found else "0+unknown"


__version__ = _version()
