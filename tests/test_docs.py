"""The generated reference pages (docs/configuration.md, docs/cli.md) are current, and every config key says what it
means."""
from __future__ import annotations

import subprocess
import sys

from kdsweep.reference import cli_page, config_keys, configuration_page

from .conftest import ROOT


def test_every_config_key_has_a_type_a_default_and_a_meaning() -> None:
    keys = config_keys()
    assert len(keys) > 50 and not [k for k, _, _, meaning in keys if not meaning]
    row = {k: (kind, default) for k, kind, default, _ in keys}
    assert row["student.epochs"] == ("int", 8) and row["teacher.epochs"] == ("int", 3)  # each stage's own default
    assert row["measure.latency_device"] == ("`auto` \\| `cpu` \\| `cuda`", "auto")


def test_generated_pages_are_current() -> None:
    for name, page in (("configuration.md", configuration_page), ("cli.md", cli_page)):
        assert (ROOT / "docs" / name).read_text() == page(), f"docs/{name} is stale: python scripts/gen_docs.py"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    cli = (ROOT / "docs" / "cli.md").read_text()
    assert "## `kdsweep analyze`" in cli and "`--facet`" in cli and "| 2 | bad input" in cli
