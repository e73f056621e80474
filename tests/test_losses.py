"""kd_loss against hand-computed values (math.exp / math.log, no torch in the reference computation)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdsweep.losses import kd_loss

S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
T_ = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
Y = [1, 0]


def _softmax(row, temp=1.0):
    e = [math.exp(v / temp) for v in row]
    z = sum(e)
    return [v / z for v in e]


def _kl_batchmean(student, teacher, temp):
    """sum_i sum_k p_t log(p_t / p_s) / B at temperature `temp`."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        ps, pt = _softmax(s_row, temp), _softmax(t_row, temp)
        total += sum(q * (math.log(q) - math.log(p)) for q, p in zip(pt, ps))
    return total / len(student)


def _ce_smoothed(student, targets, ls):
    """mean_i [(1-ls) * -log p_y + ls * mean_k -log p_k]."""
    total = 0.0
    for row, y in zip(student, targets):
        nll = [-math.log(p) for p in _softmax(row)]
        total += (1 - ls) * nll[y] + ls * sum(nll) / len(nll)
    return total / len(student)


def _t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def _y():
    return torch.tensor(Y, dtype=torch.int64)


def test_hand_computed_helpers_are_sane():
    # KL of a distribution with itself is 0; CE without smoothing is -log p_y
    assert _kl_batchmean(S, S, 2.0) == pytest.approx(0.0, abs=1e-12)
    assert _ce_smoothed([[0.0, 0.0, 0.0]], [2], 0.0) == pytest.approx(math.log(3))
    assert _ce_smoothed([[0.0, 0.0, 0.0]], [2], 0.3) == pytest.approx(math.log(3))


@pytest.mark.parametrize("temp,alpha,ls", [(2.0, 0.7, 0.1), (4.0, 0.9, 0.05), (1.0, 0.5, 0.0), (6.0, 0.3, 0.2)])
def test_kd_loss_matches_hand_computation(temp, alpha, ls):
    expected = alpha * temp**2 * _kl_batchmean(S, T_, temp) + (1 - alpha) * _ce_smoothed(S, Y, ls)
    got = kd_loss(_t(S), _t(T_), _y(), temperature=temp, alpha=alpha, label_smoothing=ls)
    assert got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_pinned_numbers_for_one_case():
    # the two parts written out for T=2, alpha=0.7, ls=0.1 (independent of the loop helpers above)
    ps1 = [math.exp(v / 2) for v in S[0]]
    pt1 = [math.exp(v / 2) for v in T_[0]]
    ps2 = [math.exp(v / 2) for v in S[1]]
    pt2 = [math.exp(v / 2) for v in T_[1]]
    ps1, pt1, ps2, pt2 = ([v / sum(a) for v in a] for a in (ps1, pt1, ps2, pt2))
    kl = (sum(q * math.log(q / p) for q, p in zip(pt1, ps1)) + sum(q * math.log(q / p) for q, p in zip(pt2, ps2))) / 2
    lse1 = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5))
    lse2 = math.log(math.exp(0.0) + math.exp(-1.0) + math.exp(3.0))
    nll1 = [lse1 - v for v in S[0]]
    nll2 = [lse2 - v for v in S[1]]
    ce = (0.9 * nll1[1] + 0.1 * sum(nll1) / 3 + 0.9 * nll2[0] + 0.1 * sum(nll2) / 3) / 2
    expected = 0.7 * 4.0 * kl + 0.3 * ce
    assert kd_loss(_t(S), _t(T_), _y(), 2.0, 0.7, 0.1).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("ls", [0.0, 0.05])
def test_alpha_zero_is_cross_entropy_and_ignores_teacher(ls):
    s, y = _t(S), _y()
    ref = F.cross_entropy(s, y, label_smoothing=ls)
    assert torch.allclose(kd_loss(s, None, y, temperature=4.0, alpha=0.0, label_smoothing=ls), ref)
    garbage = torch.full((2, 3), float("nan"))
    assert torch.allclose(kd_loss(s, garbage, y, temperature=4.0, alpha=0.0, label_smoothing=ls), ref)
    assert kd_loss(s, None, y, 4.0, 0.0, ls).item() == pytest.approx(_ce_smoothed(S, Y, ls), rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0, 6.0])
def test_alpha_one_is_t_squared_kl(temp):
    got = kd_loss(_t(S), _t(T_), _y(), temperature=temp, alpha=1.0, label_smoothing=0.3)
    assert got.item() == pytest.approx(temp**2 * _kl_batchmean(S, T_, temp), rel=1e-5)


def test_alpha_one_ignores_labels():
    a = kd_loss(_t(S), _t(T_), torch.tensor([0, 0]), 4.0, 1.0, 0.05)
    b = kd_loss(_t(S), _t(T_), torch.tensor([2, 1]), 4.0, 1.0, 0.05)
    assert torch.allclose(a, b)


def test_kd_part_is_zero_when_student_equals_teacher():
    s = _t(S)
    assert kd_loss(s, s.clone(), _y(), 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    half = kd_loss(s, s.clone(), _y(), 4.0, 0.5, 0.05)
    assert half.item() == pytest.approx(0.5 * _ce_smoothed(S, Y, 0.05), rel=1e-5)


def test_fp16_teacher_logits_are_accepted():
    t16 = _t(T_, torch.float16)
    got = kd_loss(_t(S), t16, _y(), 4.0, 0.9, 0.05)
    assert got.dtype == torch.float32
    t_rounded = t16.float().tolist()  # fp16 rounding of these small values is exact, but use what was passed
    expected = 0.9 * 16 * _kl_batchmean(S, t_rounded, 4.0) + 0.1 * _ce_smoothed(S, Y, 0.05)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_bf16_student_logits_are_upcast():
    s16 = _t(S, torch.bfloat16)
    got = kd_loss(s16, _t(T_), _y(), 2.0, 0.7, 0.1)
    assert got.dtype == torch.float32
    s_rounded = s16.float().tolist()
    expected = 0.7 * 4 * _kl_batchmean(s_rounded, T_, 2.0) + 0.3 * _ce_smoothed(s_rounded, Y, 0.1)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_student_gradient_matches_hand_derivation():
    s = _t(S).requires_grad_()
    kd_loss(s, _t(T_), _y(), 4.0, 0.9, 0.05).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # KD gradient w.r.t. student logits: alpha*T^2 * (p_s - p_t)/(T*B) + (1-alpha) * (p_s - target)/B
    temp, alpha, ls, b = 4.0, 0.9, 0.05, 2
    for i in range(b):
        ps_t, pt_t, ps = _softmax(S[i], temp), _softmax(T_[i], temp), _softmax(S[i])
        for k in range(3):
            target = (1 - ls) * (k == Y[i]) + ls / 3
            g = alpha * temp**2 * (ps_t[k] - pt_t[k]) / (temp * b) + (1 - alpha) * (ps[k] - target) / b
            assert s.grad[i, k].item() == pytest.approx(g, rel=1e-4, abs=1e-7)


# --- mixup / cutmix: per-sample mixed hard labels ----------------------------------------------------------

LAM = [0.3, 0.8]
YB = [2, 1]  # the partners' labels


def _mixed_ce(student, ya, yb, lam, ls):
    """mean_i [lam_i * CE(s_i, ya_i) + (1 - lam_i) * CE(s_i, yb_i)], each smoothed (hand-computed per row)."""
    return sum(w * _ce_smoothed([row], [a], ls) + (1 - w) * _ce_smoothed([row], [b], ls)
               for row, a, b, w in zip(student, ya, yb, lam)) / len(student)


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_mixed_labels_are_lambda_weighted_ce(ls):
    got = kd_loss(_t(S), None, _y(), 4.0, 0.0, ls, lam=_t(LAM), partner_targets=torch.tensor(YB))
    assert got.item() == pytest.approx(_mixed_ce(S, Y, YB, LAM, ls), rel=1e-6)
    # not the batch-mean lambda: per-sample weights matter (0.55 for both rows gives another number)
    assert got.item() != pytest.approx(_mixed_ce(S, Y, YB, [0.55, 0.55], ls), rel=1e-3)


@pytest.mark.parametrize("temp,alpha", [(4.0, 0.9), (2.0, 0.5)])
def test_kd_with_mixed_labels(temp, alpha):
    got = kd_loss(_t(S), _t(T_), _y(), temp, alpha, 0.05, lam=_t(LAM), partner_targets=torch.tensor(YB))
    expected = alpha * temp**2 * _kl_batchmean(S, T_, temp) + (1 - alpha) * _mixed_ce(S, Y, YB, LAM, 0.05)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_lambda_one_or_same_labels_is_the_plain_loss():
    plain = kd_loss(_t(S), _t(T_), _y(), 4.0, 0.7, 0.05)
    ones = kd_loss(_t(S), _t(T_), _y(), 4.0, 0.7, 0.05, lam=torch.ones(2), partner_targets=torch.tensor(YB))
    same = kd_loss(_t(S), _t(T_), _y(), 4.0, 0.7, 0.05, lam=_t(LAM), partner_targets=_y())
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6) and same.item() == pytest.approx(plain.item(), rel=1e-6)
