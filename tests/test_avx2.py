"""The most numerics-sensitive tests again on AVX2 kernels, so that a CI machine with AVX-512 also covers what an
AVX2-only CPU (an AMD EPYC) computes.

`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` make torch, oneDNN and MKL take their
AVX2 code paths: an approximation of such a CPU (its float results still differ in places; a RegNet learning bound
that held here failed on a real EPYC), so the learning bounds themselves carry margins measured on both kinds
(`benchmarks/bound_margins.py`, `benchmarks/RESULTS.md`).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# cached vs online teacher logits (exact up to fp16), the KD loss formulas, the new augmentations' learning bounds,
# and every extra arch's learning bound: about a minute on 2 cores
HANDFUL = ["tests/test_ablation.py::test_swept_student_augment_cached_logits_are_the_online_teachers",
           "tests/test_augment.py", "tests/test_losses.py", "tests/test_archs.py::test_builds_and_learns_the_batch"]
NATIVE = torch.backends.cpu.get_cpu_capability()


@pytest.mark.slow
@pytest.mark.skipif(NATIVE in ("AVX2", "DEFAULT"), reason=f"this CPU's own kernels are {NATIVE}: the suite itself "
                                                          "runs on them")
def test_numerics_sensitive_tests_pass_on_avx2_kernels():
    env = {**os.environ, **AVX2}
    isa = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert isa.stdout.strip() == "AVX2", isa.stdout + isa.stderr  # the variables took effect
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *HANDFUL], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout.splitlines()[-1]
