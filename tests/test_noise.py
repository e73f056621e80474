"""Accuracy with its noise: binomial (Wilson) CIs for one seed, Student's t over several, ties with the best of each
kind in the headline and the Pareto fronts, and one warning when a ranking rests on one seed."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from kdsweep.analysis import analyze, headline_table, tradeoff_tables
from kdsweep.analysis.stats import t_critical, wilson
from kdsweep.results import write_rows

from .conftest import ROOT
from .test_analysis import key_of, label_of, put


def put_full(exp: Path, stage: str, seed: int = 0, t=None, a=None, p=None, acc=0.9, images=400) -> None:
    """A result file as the sweep writes it now, with the test-set size."""
    key = key_of(stage, seed, t, a, p)
    row = {"variant": label_of(stage, t, a, p), "stage": stage, "temperature": t, "prune_amount": p, "seed": seed,
           "alpha": 0.0 if stage == "baseline" else a, "test_acc": acc, "latency_ms": 2.0, "latency_ci95_ms": 0.01,
           "size_nonzero_mb": 6.0, "status": "ok", "key": key, "runtime": "torch", "latency_device": "cpu",
           "test_images": images, "parent": key_of("student", seed, t, a) if stage == "pruned" else None}
    (exp / "results").mkdir(parents=True, exist_ok=True)
    write_rows([row], exp / "results" / f"{key}.parquet")


def test_wilson_interval_matches_its_closed_form():
    lo, hi = wilson(0.5, 100)
    assert (lo, hi) == pytest.approx((0.40383, 0.59617), abs=1e-5)
    lo, hi = wilson(1.0, 360)  # all right: the upper end is 1, the lower n / (n + z^2), not a zero-width interval
    assert hi == 1.0 and lo == pytest.approx(360 / (360 + 1.959964**2), rel=1e-9)
    assert all(math.isnan(x) for x in wilson(0.9, 0))


def test_one_seed_headline_shows_binomial_cis_ties_and_warns_once(tmp_path: Path):
    exp = tmp_path / "one"
    put_full(exp, "teacher", acc=0.95)
    for t, acc in ((2, 0.90), (4, 0.88), (6, 0.80)):  # on 400 images 0.88 overlaps 0.90's CI, 0.80 does not
        put_full(exp, "student", t=t, a=0.9, acc=acc)
    v = tradeoff_tables(exp).variants.set_index("variant")
    lo, hi = wilson(0.90, 400)
    assert (v.loc["student-kd T=2 a=0.9", "test_acc_lo"], v.loc["student-kd T=2 a=0.9", "test_acc_hi"]) == (lo, hi)
    assert set(v["test_acc_ci_kind"]) == {"binomial"}
    assert v["acc_tie"].to_dict() == {"teacher": True, "student-kd T=2 a=0.9": True, "student-kd T=4 a=0.9": True,
                                      "student-kd T=6 a=0.9": False}
    assert v["acc_rank"].tolist() == ["", "best", "tie", ""]
    text = headline_table(tradeoff_tables(exp))
    assert f"{lo * 100:.1f}–{hi * 100:.1f}" in text
    assert "accuracy ties with the best of each kind (95 % CIs overlap): KD student 2 of 3" in text
    assert text.count("rests on one seed") == 1 and "400 test images" in text
    md = (analyze(exp, tmp_path / "out") / "tradeoffs.md").read_text()
    assert "(binomial)" in md and "| best |" in md and "within the accuracy CI of the front's most accurate" in md


def test_an_experiment_from_before_test_images_takes_the_size_from_its_config(tmp_path: Path):
    exp = tmp_path / "old"
    put(exp, "teacher", acc=0.95, lat=2.0, nz=40.0)  # the old columns only: no test_images
    put(exp, "student", t=4, a=0.9, acc=0.90, lat=1.0, nz=6.0)
    assert "test-set size is unknown" in " ".join(tradeoff_tables(exp).notes)  # no config either: no interval
    shutil.copy(ROOT / "configs" / "smoke.yaml", exp / "config.yaml")  # digits: 360 test images
    v = tradeoff_tables(exp).variants.set_index("variant")
    assert (v.loc["teacher", "test_acc_lo"], v.loc["teacher", "test_acc_hi"]) == wilson(0.95, 360)
    assert "360 test images" in " ".join(tradeoff_tables(exp).notes)


def test_three_seeds_give_mean_and_t_interval_and_no_one_seed_warning(tmp_path: Path):
    exp = tmp_path / "three"
    for seed, (ta, sa) in enumerate([(0.90, 0.80), (0.92, 0.84), (0.94, 0.82)]):
        put_full(exp, "teacher", seed, acc=ta)
        put_full(exp, "student", seed, t=4, a=0.9, acc=sa)
    t = tradeoff_tables(exp)
    s = t.variants.set_index("variant").loc["student-kd T=4 a=0.9"]
    half = t_critical(2) * 0.02 / math.sqrt(3)  # std of (0.80, 0.84, 0.82) is 0.02
    assert s.n == 3 and s.test_acc_ci_kind == "seeds"
    assert (s.test_acc_lo, s.test_acc_hi) == pytest.approx((0.82 - half, 0.82 + half))
    assert not any("one seed" in n for n in t.notes)
    assert "82.00 ± 2.00" in headline_table(t)
