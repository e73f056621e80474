#!/usr/bin/env python
"""Write the generated reference pages: docs/configuration.md (pydantic schema), docs/cli.md (argument parser) and
docs/results.md (results schema).

    python scripts/gen_docs.py          # rewrite them
    python scripts/gen_docs.py --check  # exit 1 if one is stale (tests/test_docs.py does the same)
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kdsweep.reference import cli_page, configuration_page, results_page  # noqa: E402 - after the path above

PAGES = {"docs/configuration.md": configuration_page, "docs/cli.md": cli_page, "docs/results.md": results_page}


def main(argv: list[str]) -> int:
    stale = [name for name, page in PAGES.items()
             if not (ROOT / name).is_file() or (ROOT / name).read_text() != page()]
    if "--check" in argv:
        for name in stale:
            print(f"stale: {name} (run python scripts/gen_docs.py)", file=sys.stderr)
        return 1 if stale else 0
    for name, page in PAGES.items():
        (ROOT / name).write_text(page())
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
