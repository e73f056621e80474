"""Knowledge-distillation loss, for one model or for every member of a fused group at once."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
              temperature: torch.Tensor, alpha: torch.Tensor, label_smoothing: float = 0.0, *,
              lam: torch.Tensor | None = None, partner_targets: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network") KD loss of each of M models: shape (M,).

        L_m = alpha_m * T_m^2 * KL(softmax(t/T_m) || softmax(s_m/T_m)) + (1 - alpha_m) * CE(s_m, y; label_smoothing)

    `student_logits` (M, B, C) are M models' logits on the same batch; `temperature` and `alpha` are (M,). KL is
    averaged over the batch (`batchmean`); T^2 keeps the soft-target gradients on the same scale as the hard ones
    when T changes. alpha = 0 is plain cross-entropy (the no-KD baseline; `teacher_logits` (B, C) may then be None).
    With mixup/cutmix views, `lam` (B,) and `partner_targets` mix the hard labels per sample:
    CE = mean_i [lam_i * CE(s_i, y_i) + (1 - lam_i) * CE(s_i, y_partner_i)], each with the label smoothing; the
    teacher's logits are already those of the mixed image, so the KL term is unchanged. Model m's loss depends on
    its own logits only, so the gradient of the sum is each model's own gradient.
    """
    s = student_logits.float()
    m, b, c = s.shape
    flat = s.reshape(m * b, c)

    def ce_of(y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(flat, y.repeat(m), label_smoothing=label_smoothing, reduction="none").view(m, b)

    if lam is None:
        ce = ce_of(targets).mean(1)
    else:
        w = lam.to(s.device, s.dtype)
        ce = (w * ce_of(targets) + (1 - w) * ce_of(partner_targets)).mean(1)
    if teacher_logits is None:  # the caller knows every alpha is 0 (checking here would sync the host)
        return ce
    temp = temperature.to(s.device, s.dtype).view(m, 1, 1)
    a = alpha.to(s.device, s.dtype)
    log_t = F.log_softmax(teacher_logits.float()[None] / temp, dim=-1)
    kl = F.kl_div(F.log_softmax(s / temp, dim=-1), log_t, reduction="none", log_target=True).sum(-1).mean(1)
    return a * temp.view(m) ** 2 * kl + (1 - a) * ce


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
            temperature: float, alpha: float, label_smoothing: float = 0.0, *, lam: torch.Tensor | None = None,
            partner_targets: torch.Tensor | None = None) -> torch.Tensor:
    """`kd_losses` of one model: (B, C) logits, scalar temperature and alpha -> a scalar loss."""
    one = torch.tensor([float(temperature)]), torch.tensor([float(alpha)])
    return kd_losses(student_logits[None], None if alpha == 0 else teacher_logits, targets, *one, label_smoothing,
                     lam=lam,
                     partner_targets=partner_targets)[0]
