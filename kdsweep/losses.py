"""Knowledge-distillation loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
            temperature: float, alpha: float, label_smoothing: float = 0.0, *, lam: torch.Tensor | None = None,
            partner_targets: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network") KD loss.

        L = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y; label_smoothing)

    KL is averaged over the batch (`batchmean`); T^2 keeps the soft-target gradients on the same scale as the hard
    ones when T changes. alpha = 0 is plain cross-entropy (the no-KD baseline; teacher logits may then be None).
    With mixup/cutmix views, `lam` (B,) and `partner_targets` mix the hard labels per sample:
    CE = mean_i [lam_i * CE(s_i, y_i) + (1 - lam_i) * CE(s_i, y_partner_i)], each with the label smoothing; the
    teacher's logits are already those of the mixed image, so the KL term is unchanged.
    """
    s = student_logits.float()
    if lam is None:
        ce = F.cross_entropy(s, targets, label_smoothing=label_smoothing)
    else:
        ce_a = F.cross_entropy(s, targets, label_smoothing=label_smoothing, reduction="none")
        ce_b = F.cross_entropy(s, partner_targets, label_smoothing=label_smoothing, reduction="none")
        w = lam.to(s.device, s.dtype)
        ce = (w * ce_a + (1 - w) * ce_b).mean()
    if alpha == 0:
        return ce
    t = teacher_logits.float()
    kl = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1),
                  reduction="batchmean", log_target=True)
    return alpha * temperature**2 * kl + (1 - alpha) * ce
