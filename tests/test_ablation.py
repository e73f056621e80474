"""The `sweep:` section: any key as an axis, validated value by value, with work shared by content hash."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdsweep.config import load_config
from kdsweep.errors import ConfigError
from kdsweep.paths import Paths
from kdsweep.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
ABLATION = str(ROOT / "configs" / "ablation.yaml")
# one T, alpha and p: per combination 1 baseline + 1 KD student + 1 pruned; tiny data, one epoch each
TINY = ["data.train_limit=160", "data.test_limit=80", "teacher.epochs=1", "student.epochs=1", "prune.recovery_epochs=1",
        "kd.temperature=[4]", "kd.alpha=[0.9]", "prune.amount=[0.5]", "measure.iters=3", "measure.warmup=1",
        "measure.runtimes=[torch]"]
SWEEP = ["sweep.student.arch=[mobilenet_v3_small,resnet18]", "sweep.student.augment=[[],[crop]]"]


def test_old_hashes_and_keys_unchanged_without_a_sweep():
    """Keys and hashes of a config with augmentation, structured pruning and INT8, computed by the code before the
    sweep section existed (commit f19b2d3): an older experiment resumes without retraining."""
    cfg = load_config(SMOKE, ["data.augment=[crop]", "kd.temperature=[4]", "kd.alpha=[0.9]", "prune.amount=[0.5]",
                              "prune.method=[l1_unstructured,l1_structured]", "quantize.method=[none,int8]",
                              "quantize.stages=[teacher,pruned]"])
    assert {v.key: v.config_hash for v in make_plan(cfg)} == {
        "teacher-s0": "bbe62e9de00ef414", "baseline-s0": "bfbeb3bafc06c276", "student-T4-a0.9-s0": "ad6b2808098bf191",
        "pruned-T4-a0.9-p0.5-s0": "7545d586b6d6b052", "pruned-T4-a0.9-p0.5-structured-s0": "0b3cb15686a79902",
        "int8-teacher-s0": "8ae9f8984ea5bf1f", "int8-pruned-T4-a0.9-p0.5-s0": "bf2fb73267438f74",
        "int8-pruned-T4-a0.9-p0.5-structured-s0": "3655d04264d86caf"}
    assert os.path.basename(Paths("/x").teacher_logits(cfg, 0)) == "teacher_logits-s0-ec3b0369f4.pt"
    # a per-stage augment equal to data.augment is the same work, hence the same hashes
    same = load_config(cfg.model_dump(mode="json"), ["teacher.augment=[crop]", "student.augment=[crop]"])
    assert [v.config_hash for v in make_plan(same)] == [v.config_hash for v in make_plan(cfg)]


def test_plan_shares_work_across_student_settings():
    cfg = load_config(SMOKE, TINY + SWEEP + ["sweep.teacher.epochs=[1,2]"])
    plan = make_plan(cfg)
    by_stage = {s: len(plan.stage(s)) for s in ("teacher", "baseline", "student", "pruned")}
    # teachers: one per teacher.epochs (not per student arch or augment); baselines: one per student setting (they
    # have no teacher); KD students and pruned: every combination
    assert by_stage == {"teacher": 2, "baseline": 4, "student": 8, "pruned": 8}
    assert len({v.key for v in plan}) == len(plan) == len({v.config_hash for v in plan})
    teachers = plan.stage("teacher")
    assert sorted(v.values["teacher.epochs"] for v in teachers) == [1, 2] and all(len(v.values) == 1 for v in teachers)
    by_key = plan.by_key()
    for v in plan.stage("student"):  # a student's parent is the teacher of its own teacher.epochs
        assert by_key[v.parent].values["teacher.epochs"] == v.values["teacher.epochs"]
        assert set(v.values) == {"student.arch", "student.augment", "teacher.epochs"}
    for v in plan.stage("baseline"):
        assert set(v.values) == {"student.arch", "student.augment"}
    # a list axis in the sweep takes the list instead of multiplying configs
    cfg2 = load_config(SMOKE, TINY + ["sweep.kd.alpha=[0.5,0.9]"])
    assert cfg2.kd.alpha == [0.5, 0.9] and cfg2.sweep == {}
    assert [v.key for v in make_plan(cfg2).stage("student")] == ["student-T4-a0.5-s0", "student-T4-a0.9-s0"]


def test_plan_limit_names_the_key():
    cfg = load_config(SMOKE, TINY + SWEEP + ["max_variants=12"])
    with pytest.raises(ConfigError, match=r"^config key 'max_variants': the plan has 13 variants"):
        make_plan(cfg)
    # far more combinations than the limit: refused before expanding them
    huge = load_config(SMOKE, ["max_variants=1", "sweep.teacher.epochs=" + str(list(range(1, 40)))])
    with pytest.raises(ConfigError, match=r"^config key 'max_variants': the sweep has 39 combinations"):
        make_plan(huge)


@pytest.mark.parametrize("item, message", [
    ("sweep.student.arch=[mobilenet_v3_small,nosuchnet]", "config key 'sweep.student.arch': value 'nosuchnet': "),
    ("sweep.student.archh=[resnet18]", "config key 'sweep.student.archh': unknown config key (did you mean "
                                       "'sweep.student.arch'?)"),
    ("sweep.teacher.epochs=3", "config key 'sweep.teacher.epochs': expected a list of values"),
    ("sweep.teacher.epochs=[]", "config key 'sweep.teacher.epochs': an empty list"),
    ("sweep.teacher.lr=[-1]", "config key 'sweep.teacher.lr': value -1: "),
    ("sweep.student.augment=[[crop],[tilt]]", "config key 'sweep.student.augment': value ['tilt']: "),
    ("sweep.measure.iters=[5,10]", "config key 'sweep.measure.iters': not an axis"),
    ("sweep.data.dataset=[digits,cifar10]", "config key 'sweep.data.dataset': not an axis"),
])
def test_bad_sweep_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, item, message):
    from kdsweep.cli import main

    store = tmp_path / "runs"
    assert main(["run", SMOKE, "--storage", str(store), "--set", item]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdsweep: error: " + message), err
    assert not store.exists()


def test_ablation_config_plans_43_variants_with_one_teacher(capsys):
    from kdsweep.cli import main

    assert main(["plan", ABLATION]) == 0
    out = capsys.readouterr().out
    counts = {ln.split()[0]: int(ln.split()[1]) for ln in out.splitlines()
              if len(ln.split()) > 1 and ln.split()[0] in ("teacher", "baseline", "student", "pruned")
              and ln.split()[1].isdigit()}
    assert counts == {"teacher": 1, "baseline": 6, "student": 12, "pruned": 24}
    assert "sweep: student.arch (2) x student.augment (3) = 6 combinations" in out
    assert "3 teacher pass(es)" in out  # one per student augmentation, shared by both archs


@pytest.mark.slow
def test_ablation_sweep_trains_each_variant_once_and_resumes(tmp_path):
    """configs/ablation.yaml at toy size (one alpha, one p): 2 archs x 3 augmentations (crop, randaugment, mixup)."""
    import kdsweep
    from kdsweep.analysis import load_experiment

    exp = kdsweep.run(ABLATION, overrides=TINY, storage=tmp_path, name="abl")
    cfg = load_config(exp / "config.yaml")
    plan = make_plan(cfg)
    rows = load_experiment(exp).rows
    assert len(plan) == 19 and set(rows["key"]) == {v.key for v in plan}
    assert (rows["status"] == "ok").all(), rows[["key", "status", "error"]]
    # every variant trained exactly once; one teacher across both student archs and all three augment lists
    assert (rows["train_runs"] == 1).all()
    assert len(plan.stage("teacher")) == 1
    runs = {p.parent.name: int(p.read_text()) for p in (exp / "artifacts").glob("*/train_runs")}
    assert len(runs) == 19 and set(runs.values()) == {1}
    # one teacher pass per distinct set of student views (three augment lists), shared by both archs
    assert len(list((exp / "artifacts").glob("teacher_logits-*.pt"))) == 3
    axes = rows.set_index("key")["axes"]
    key = "student-T4-a0.9-s0-student.arch=mobilenet_v2-student.augment=crop+mixup"
    assert json.loads(axes[key]) == {"student.arch": "mobilenet_v2", "student.augment": ["crop", "mixup"]}
    assert not isinstance(axes["teacher-s0"], str)  # the teacher depends on no swept key: null
    assert set(rows.loc[rows["stage"] == "student", "arch"]) == {"mobilenet_v3_small", "mobilenet_v2"}
    assert set(rows["student.augment"].dropna()) == {"crop", "crop+randaugment", "crop+mixup"}  # analysis columns
    before = {v.key: (exp / "artifacts" / f"{v.key}-{v.config_hash[:10]}" / "model.pt").stat().st_mtime_ns
              for v in plan}
    kdsweep.run(ABLATION, overrides=TINY, storage=tmp_path, name="abl")  # resume: nothing left to train
    after = {v.key: (exp / "artifacts" / f"{v.key}-{v.config_hash[:10]}" / "model.pt").stat().st_mtime_ns
             for v in plan}
    assert after == before


@pytest.mark.slow
def test_swept_student_augment_cached_logits_are_the_online_teachers(tmp_path, monkeypatch):
    """Per swept student augmentation (RandAugment, Mixup): the cached teacher logits are the teacher's on the views
    the student sees, in every cached epoch (fp16 storage); and in training, the first step's soft targets from the
    cache are the online teacher's on the same batch, the student's logits are identical, and so is the step's loss.

    One step per epoch (the batch is the training set). Comparing first-epoch mean losses over several steps instead
    measured Adam amplifying fp16 rounding: 0.2398 cached vs 0.2422 online on an AVX2 EPYC, outside rel 1e-2. The
    one-step loss differs by at most 1.7e-6 relative (2026-12-07, Xeon native and ATEN_CPU_CAPABILITY=avx2)."""
    import torch

    from kdsweep import engine
    from kdsweep.checkpoint import load_checkpoint
    from kdsweep.data import augment_params, load_dataset, train_batches, train_views
    from kdsweep.models import build_model
    from kdsweep.stages import ensure_teacher_logits, train_variant, view_of

    first_step: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    now: list[tuple[str, str]] = []  # (mode, augmentation) of the variant training now

    def recording(logits: torch.Tensor, t_logits: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if now and t_logits is not None:  # a KD student's step (the teacher trains without soft targets)
            first_step.setdefault(now[-1], (logits[0].detach().clone(), t_logits.detach().float().clone()))
        return kd_losses(logits, t_logits, *args, **kwargs)

    kd_losses = engine.kd_losses  # the engine's loss of its (M, B, C) member logits; one member here
    monkeypatch.setattr(engine, "kd_losses", recording)
    overrides = TINY + ["student.batch_size=160", "sweep.student.arch=[mobilenet_v3_small]",
                        "sweep.student.augment=[[crop,randaugment],[crop,mixup]]"]
    losses = {}
    for mode in ("cached", "online"):
        cfg = load_config(ABLATION, overrides + [f"kd.teacher_logits={mode}"])
        plan = make_plan(cfg)
        by_key, paths = plan.by_key(), Paths(tmp_path / mode)
        data = load_dataset(cfg.data)
        assert len(train_batches(len(data.train_y), 160, 0, 0)) == 1
        teacher = plan.stage("teacher")[0]
        train_variant(cfg, teacher, paths, data, torch.device("cpu"), by_key)
        for v in plan.stage("student"):
            aug = v.values["student.augment"][-1]
            if mode == "cached":
                cache = load_checkpoint(ensure_teacher_logits(cfg, v.seed, paths, data, torch.device("cpu"), teacher,
                                                              v)).float()
                net = build_model(cfg.teacher.arch, data.num_classes, str(paths.model(teacher)), key="teacher").eval()
                view, n = view_of(cfg, v), len(data.train_y)
                for e in range(cache.shape[0]):
                    idx = train_batches(n, cfg.student.batch_size, v.seed, e)[0]
                    with torch.no_grad():
                        online = net(train_views(data.train_x, idx, view, augment_params(v.seed, e, n, view),
                                                 torch.device("cpu")).x)
                    assert (cache[e, idx] - online).abs().max() <= 1e-2 * online.abs().max()  # fp16 storage
                    assert (cache[e, idx.roll(1)] - online).abs().max() > 0.1 * online.abs().max()  # and it can fail
            now.append((mode, aug))
            rec = train_variant(cfg, v, paths, data, torch.device("cpu"), by_key)
            assert rec["status"] == "ok"
            assert (rec["teacher_logits"] == "online") == (mode == "online")
            losses[mode, aug] = rec["history"][0]["train_loss"]
    assert {aug for _, aug in losses} == {"randaugment", "mixup"}
    for aug in ("randaugment", "mixup"):
        (s_cached, t_cached), (s_online, t_online) = first_step["cached", aug], first_step["online", aug]
        assert torch.equal(s_cached, s_online)  # same initialisation, same views: the same student logits
        scale = t_online.abs().max()
        assert (t_cached - t_online).abs().max() <= 1e-3 * scale  # the cache's fp16 rounding, nothing else
        assert (t_cached.roll(1, 0) - t_online).abs().max() > 0.1 * scale  # another sample's targets would show
        assert losses["cached", aug] == pytest.approx(losses["online", aug], rel=1e-4)
    assert losses["cached", "randaugment"] != losses["cached", "mixup"]  # the augmentations really differ
