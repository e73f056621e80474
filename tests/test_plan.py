"""The stage DAG with compression axes: keys, labels, parents and counts of pruned and quantized variants."""
from __future__ import annotations

from kdsweep.config import load_config
from kdsweep.plan import Variant, describe, make_plan

from .conftest import ROOT, SMOKE

COMPRESS = str(ROOT / "configs" / "compress.yaml")


def test_compress_config_plans_every_kind_of_variant_once():
    cfg = load_config(COMPRESS)
    plan = make_plan(cfg)
    counts = {s: len(plan.stage(s)) for s in ("teacher", "baseline", "student", "pruned", "quantized")}
    assert counts == {"teacher": 1, "baseline": 1, "student": 2, "pruned": 2 * 2 * 2, "quantized": 1 + 2 + 8}
    keys = [v.key for v in plan]
    assert len(set(keys)) == len(keys) and len({v.config_hash for v in plan}) == len(plan)
    assert "23 variants in 5 stages" in describe(plan, cfg)


def test_structured_and_int8_keys_labels_and_parents():
    plan = make_plan(load_config(COMPRESS)).by_key()
    s = plan["pruned-T4-a0.9-p0.5-structured-s0"]
    assert (s.prune_method, s.parent, s.label) == ("l1_structured", "student-T4-a0.9-s0",
                                                   "student-kd T=4 a=0.9 p=0.5 structured")
    u = plan["pruned-T4-a0.9-p0.5-s0"]  # unstructured keeps the key and label it had before methods were an axis
    assert (u.prune_method, u.label) == ("l1_unstructured", "student-kd T=4 a=0.9 p=0.5")
    q = plan["int8-pruned-T4-a0.9-p0.5-structured-s0"]
    assert (q.stage, q.precision, q.parent, q.prune_method, q.prune_amount) == (
        "quantized", "int8", s.key, "l1_structured", 0.5)
    assert q.label == "student-kd T=4 a=0.9 p=0.5 structured int8" and q.base() == Variant(
        "pruned", 0, 4.0, 0.9, 0.5, prune_method="l1_structured")
    t = plan["int8-teacher-s0"]
    assert (t.label, t.parent, t.base().stage) == ("teacher int8", "teacher-s0", "teacher")
    assert "int8-baseline-s0" not in plan  # not in quantize.stages
    assert Variant.from_dict(q.to_dict()) == q


def test_quantized_hash_follows_its_parent_and_calibration():
    a = make_plan(load_config(COMPRESS)).by_key()
    b = make_plan(load_config(COMPRESS, ["prune.recovery_epochs=1"])).by_key()
    c = make_plan(load_config(COMPRESS, ["quantize.calib_batches=4"])).by_key()
    assert a["int8-pruned-T4-a0.9-p0.5-s0"].config_hash != b["int8-pruned-T4-a0.9-p0.5-s0"].config_hash
    assert a["int8-teacher-s0"].config_hash == b["int8-teacher-s0"].config_hash  # the teacher did not change
    assert all(a[k].config_hash != c[k].config_hash for k in a if k.startswith("int8-"))
    assert all(a[k].config_hash == c[k].config_hash for k in a if not k.startswith("int8-"))


def test_default_axes_leave_the_smoke_plan_as_it_was():
    plan = make_plan(load_config(SMOKE))
    assert len(plan) == 38 and not plan.stage("quantized")
    assert all(v.prune_method == "l1_unstructured" for v in plan.stage("pruned"))
    assert not any("structured" in v.key for v in plan)


def test_version_flag_prints_the_package_version(capsys) -> None:
    import re

    import pytest

    from kdsweep import __version__
    from kdsweep.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    pyproject = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert capsys.readouterr().out.strip() == f"kdsweep {__version__}" == f"kdsweep {pyproject.group(1)}"
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
    assert f"## {__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_plan_says_what_each_sweep_costs_and_shows_no_gpu_where_there_is_none(capsys, tmp_path) -> None:
    from kdsweep.cli import main

    out = {}
    for name in ("smoke", "seed"):
        assert main(["plan", str(ROOT / "configs" / f"{name}.yaml"), "--storage", str(tmp_path)]) == 0
        out[name] = capsys.readouterr().out
    assert "data: digits, 1,437 training images at 32 px" in out["smoke"]
    assert "data: cifar10, 50,000 training images at 224 px" in out["seed"]
    rows = {n: {ln.split()[0]: ln.split()[1:4] for ln in o.splitlines()
                if ln.split()[:1] in (["teacher"], ["baseline"], ["student"], ["pruned"])} for n, o in out.items()}
    assert rows["seed"]["student"] == ["9", "8", "3,600,000"]  # 9 students x 8 epochs x 50,000 images
    assert rows["smoke"]["pruned"] == ["27", "2", f"{27 * 2 * 1437:,}"]
    assert "6,850,000 training images in all" in out["seed"]
    import torch

    if not torch.cuda.is_available():
        assert "GPU," not in out["smoke"] and "0.25 GPU" not in out["smoke"] and "no GPU: up to" in out["smoke"]
    assert f"output: {tmp_path / 'seed'} (0 of 38 variants already trained there)" in out["seed"]
    assert not list(tmp_path.iterdir())  # planning writes nothing


def test_the_readme_plan_example_is_what_plan_prints(capsys, tmp_path, monkeypatch) -> None:
    from kdsweep.cli import main

    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("```\nplan for 'seed'") + 4:]
    shown = block[:block.index("```")].splitlines()
    monkeypatch.chdir(tmp_path)  # the default ./runs, empty
    assert main(["plan", str(ROOT / "configs" / "seed.yaml")]) == 0
    printed = capsys.readouterr().out.splitlines()
    import re

    # what depends on this machine: its CPUs and GPUs, and a GPU share per trial where it has GPUs
    machine = lambda lines: [re.sub(r", [\d.]+ GPU$", "", ln) for ln in lines if not ln.startswith("  here: ")]
    assert machine(printed) == machine(shown)
