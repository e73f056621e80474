"""The generated reference pages (docs/configuration.md, docs/cli.md) are current, and every config key says what it
means."""
from __future__ import annotations

import subprocess
import sys

from kdsweep.reference import cli_page, config_keys, configuration_page, results_page
from kdsweep.results import COLUMNS, DESCRIPTIONS

from .conftest import ROOT


def test_every_config_key_has_a_type_a_default_and_a_meaning() -> None:
    keys = config_keys()
    assert len(keys) > 50 and not [k for k, _, _, meaning in keys if not meaning]
    row = {k: (kind, default) for k, kind, default, _ in keys}
    assert row["student.epochs"] == ("int", 8) and row["teacher.epochs"] == ("int", 3)  # each stage's own default
    assert row["measure.latency_device"] == ("`auto` \\| `cpu` \\| `cuda`", "auto")


def test_generated_pages_are_current() -> None:
    for name, page in (("configuration.md", configuration_page), ("cli.md", cli_page), ("results.md", results_page)):
        assert (ROOT / "docs" / name).read_text() == page(), f"docs/{name} is stale: python scripts/gen_docs.py"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    cli = (ROOT / "docs" / "cli.md").read_text()
    assert "## `kdsweep analyze`" in cli and "`--facet`" in cli and "| 2 | bad input" in cli


def test_every_results_column_is_described() -> None:
    assert list(DESCRIPTIONS) == list(COLUMNS) and all(DESCRIPTIONS.values())  # in the contract's order
    page = results_page()
    assert all(f"| `{c}` |" in page for c in COLUMNS) and "| `latency_ms` | double |" in page


def readme_commands() -> list[str]:
    """The `kdsweep ...` lines of the README's code blocks that run offline in seconds: no placeholder (CONFIG, [...]),
    and a command that neither trains nor needs an experiment (`--version`, `--help`, `plan`)."""
    import re

    found = []
    for body in re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S):
        for line in body.splitlines():
            cmd = line.split("  #")[0].strip()
            if cmd.startswith("kdsweep ") and not re.search(r"[A-Z]{3,}|\[", cmd) and \
                    (cmd.split()[1] in ("plan", "--version") or "--help" in cmd):
                found.append(cmd)
    return found


def test_every_readme_command_that_runs_offline_runs(capsys, tmp_path, monkeypatch) -> None:
    import shlex

    import pytest

    from kdsweep.cli import main

    commands = readme_commands()
    assert {"kdsweep --version", "kdsweep plan configs/seed.yaml --estimate", "kdsweep run --help"} <= set(commands)
    monkeypatch.chdir(ROOT)
    for cmd in commands:
        argv = shlex.split(cmd)[1:] + (["--storage", str(tmp_path)] if cmd.split()[1] == "plan" else [])
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's --version and --help
            code = exit_.code
        assert code == 0, cmd
        assert capsys.readouterr().out.strip(), cmd
    assert not list(tmp_path.iterdir())  # none of them writes anything
    import kdsweep  # the README's Python block reads results through the package after a plain import

    assert callable(kdsweep.results.read_results) and callable(kdsweep.analysis.tradeoff_tables)
    with pytest.raises(AttributeError):
        kdsweep.no_such_module  # noqa: B018 - the attribute access is the test


def test_every_test_the_docs_cite_exists() -> None:
    import re

    source = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    modules = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    cited = {n for p in pages for n in re.findall(r"\b(test_[a-z0-9_]+)\b", p.read_text())}
    cited -= modules | {"test_limit", "test_acc", "test_images"}  # test files, a config key, columns named test_*
    assert len(cited) > 20 and not [n for n in cited if f"def {n}(" not in source]
