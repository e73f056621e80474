"""The house keeps its shape: ruff is clean, the import contracts in `.importlinter` hold (and would catch an upward
import), every `# noqa` says why, modules stay small, a trial process never loads the analysis or matplotlib, the
readers never load torch or Ray, and the version has one source."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kdsweep

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["kdsweep", "tests", "benchmarks"]
MAX_MODULE_LINES = 430  # "no module over ~400 lines": a new job past that gets its own module
LINT_IMPORTS = [sys.executable, "-c",
                "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def _python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (the modules it imports are its own), from the repository root."""
    return _run([sys.executable, "-c", textwrap.dedent(code)], ROOT)


def test_ruff_is_clean():
    out = _run([sys.executable, "-m", "ruff", "check", "--no-cache", *LINTED], ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_contracts_hold():
    out = _run([*LINT_IMPORTS, "--no-cache", "--no-logo"], ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and " kept" in out.stdout


@pytest.mark.parametrize("module,line,broken", [
    # a lazy upward import (inside a function) from the storage layer to the driver: layers and cycles both break
    ("storage.py", "def _up():\n    from . import sweeper\n", "kdsweep.storage -> kdsweep.sweeper"),
    # the training stack reaching for the analysis would load matplotlib in every trial process
    ("engine.py", "from .analysis import load\n", "kdsweep.engine -> kdsweep.analysis"),
    # the config layer importing torch would make `kdsweep status` load it
    ("config.py", "import torch\n", "kdsweep.config -> torch"),
])
def test_a_forbidden_import_breaks_the_contracts(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "kdsweep", tmp_path / "kdsweep", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    with open(tmp_path / "kdsweep" / module, "a") as f:
        f.write("\n\n" + line)
    out = _run([*LINT_IMPORTS, "--no-cache", "--no-logo"], tmp_path, PYTHONPATH=str(tmp_path))
    assert out.returncode != 0, out.stdout
    assert "BROKEN" in out.stdout and broken in out.stdout, out.stdout


def test_every_noqa_names_its_rule_and_why():
    bare = []
    for path in (p for d in LINTED for p in (ROOT / d).rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = re.search(r"(?<![`'\"])#\s*noqa\b(.*)$", line)  # a comment, not a quoted mention
            if m and not re.fullmatch(r":\s*[A-Z]+\d+(\s*,\s*[A-Z]+\d+)*\s*(-|--)\s*\S.*", m.group(1)):
                bare.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bare, "a noqa needs its rule and a reason ('# noqa: BLE001 - why'):\n" + "\n".join(bare)


def test_no_module_is_large():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "kdsweep").rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_a_trial_process_imports_neither_the_analysis_nor_matplotlib():
    out = _python("""
        import sys
        import kdsweep.trainables
        print(sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib"
                     or m.startswith(("kdsweep.analysis", "kdsweep.status", "kdsweep.sweeper"))))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_reading_an_experiment_and_validating_a_config_import_neither_torch_nor_ray():
    # `kdsweep status` and `analyze` run where no GPU stack is installed or wanted; a config validates without disk
    # checks or optional packages (those are preflight's)
    out = _python("""
        import sys
        from kdsweep.config import load_config
        from kdsweep.plan import make_plan
        import kdsweep.status, kdsweep.analysis, kdsweep.cli
        cfg = load_config("configs/ablation.yaml", ["student.arch=no_such_arch", "data.root=/no/such/dir",
                                                      "data.download=false", "teacher.weights=/no/such.pt"])
        make_plan(cfg)
        print(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "torch_pruning", "timm", "ray",
                                                               "onnx", "onnxruntime", "matplotlib"}))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_version_has_one_source():
    from importlib.metadata import version

    declared = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert kdsweep.__version__ == declared == version("kdsweep")
