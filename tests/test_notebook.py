"""notebooks/analyze_results.ipynb: committed without outputs, and runs end to end on a real experiment."""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import ROOT
from .test_analysis import png_info, put

NOTEBOOK = ROOT / "notebooks" / "analyze_results.ipynb"


def execute(experiment: Path, out: Path, monkeypatch: pytest.MonkeyPatch):  # a NotebookNode
    """Run the notebook in a fresh kernel (cwd notebooks/, like Jupyter) against `experiment`; raise on any error."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("KDSWEEP_EXPERIMENT", str(experiment))
    monkeypatch.setenv("KDSWEEP_ANALYSIS_OUT", str(out))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def check_ran(nb, out: Path) -> None:
    outs = outputs(nb)
    assert not [o for o in outs if o.output_type == "error"]
    images = [o for o in outs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "expected metrics_grid.png and the pruning-cost plot"
    assert png_info(out / "metrics_grid.png")[0] >= 1200
    assert (out / "results.csv").read_text().startswith("Variant,Accuracy,LatencyMs,SizeMB")
    text = "".join(o.get("text", "") for o in outs)
    assert "teacher" in text and "written to" in text


def test_committed_notebook_has_no_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert 'os.environ.get("KDSWEEP_EXPERIMENT", "runs/smoke")' in code[0].source


def test_notebook_runs_on_a_two_seed_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = tmp_path / "seeds"
    for seed, acc in enumerate((0.90, 0.92)):
        put(exp, "teacher", seed, acc=acc, lat=4.0, nz=40.0)
        put(exp, "baseline", seed, acc=acc - 0.1, lat=2.0, nz=6.0)
        put(exp, "student", seed, t=4, a=0.9, acc=acc - 0.05, lat=2.0, nz=6.0)
        put(exp, "pruned", seed, t=4, a=0.9, p=0.5, acc=acc - 0.07, lat=2.0, nz=3.0)
    nb = execute(exp, tmp_path / "out", monkeypatch)
    check_ran(nb, tmp_path / "out")


@pytest.mark.slow
def test_notebook_runs_on_smoke_experiment(smoke_exp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = execute(smoke_exp, tmp_path / "out", monkeypatch)
    check_ran(nb, tmp_path / "out")
    assert "student-kd T=4 a=0.9 p=0.5" in "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs(nb))
