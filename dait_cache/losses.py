"""Every loss as a small pure function (docs/design.md section 6).

Notation: ``n(x) = x / ||x||`` row-wise (:func:`l2_normalize`). KL is ``KL(p_target || p_model)`` with batch-mean
reduction. Inputs coming from the cache (VLM embeddings) or a frozen teacher are detached here,
so gradients never flow into them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VL2LITE_SCALE = 1 / 0.07
DEFAULT_TAU = 2.0


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-12)


def kl_targets(target_logits: torch.Tensor, model_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(target/tau) || softmax(model/tau)), batch mean."""
    return tau**2 * F.kl_div(
        F.log_softmax(model_logits / tau, dim=-1),
        F.log_softmax(target_logits.detach() / tau, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


def sia_loss(
    feat: torch.Tensor,
    text_feat: torch.Tensor,
    vlm_img: torch.Tensor,
    vlm_text: torch.Tensor,
    tau: float = DEFAULT_TAU,
    scale: float = VL2LITE_SCALE,
    weight: float | None = None,
) -> torch.Tensor:
    """Semantic (image-text) alignment: the model's image->class distribution, computed with
    its own features ``feat`` (B, d) against projected text ``text_feat`` (C, d), matches the
    VLM's distribution from ``vlm_img`` (B, D) against ``vlm_text`` (C, D).

    ``weight`` multiplies the batch-mean KL: tau^2 by default (DAIT); VL2Lite's code uses tau^2/2.
    """
    target = scale * l2_normalize(vlm_img.detach()) @ l2_normalize(vlm_text.detach()).T
    model = scale * l2_normalize(feat) @ l2_normalize(text_feat).T
    kl = kl_targets(target, model, tau) / tau**2
    return (tau**2 if weight is None else weight) * kl


def ira_loss(feat: torch.Tensor, img_feat: torch.Tensor) -> torch.Tensor:
    """Image representation alignment: mean |n(f) - n(MLP_img(v))| over B*d."""
    return (l2_normalize(feat) - l2_normalize(img_feat)).abs().mean()


def lambda_at(epoch: int, rate: float, bias: float = 0.0) -> float:
    """CE weight at ``epoch`` (from 0): clip(rate * epoch + bias, 0, 1)."""
    return float(min(1.0, max(0.0, rate * epoch + bias)))


def sra_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Spatial representation alignment: mean squared error between the (already 1x1-projected)
    student map and the teacher map, resizing the student bilinearly when sizes differ."""
    if student_map.shape[-2:] != teacher_map.shape[-2:]:
        student_map = F.interpolate(student_map, size=teacher_map.shape[-2:], mode="bilinear", align_corners=False)
    return (student_map - teacher_map.detach()).pow(2).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """Hinton KD: tau^2 * batch-mean KL(softmax(teacher/tau) || softmax(student/tau))."""
    return kl_targets(teacher_logits, student_logits, tau)


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * e @ e.T).clamp(min=1e-12).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _mean_normalised(d: torch.Tensor) -> torch.Tensor:
    positive = d[d > 0]
    return d / positive.mean() if positive.numel() else d


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = l2_normalize(e.unsqueeze(0) - e.unsqueeze(1))  # (B, B, dim): unit vectors between pairs
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_loss(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor, w_dist: float = 25.0, w_angle: float = 50.0
) -> torch.Tensor:
    """Relational KD (Park et al. 2019): distance- and angle-wise smooth-L1 between the pairwise
    structure of student and teacher features; both are scale invariant."""
    s, t = student_feat.float(), teacher_feat.detach().float()
    with torch.no_grad():
        t_dist = _mean_normalised(_pairwise_distances(t))
        t_angle = _angles(t)
    loss_d = F.smooth_l1_loss(_mean_normalised(_pairwise_distances(s)), t_dist)
    loss_a = F.smooth_l1_loss(_angles(s), t_angle)
    return w_dist * loss_d + w_angle * loss_a


def clip_zero_shot_logits(vlm_img: torch.Tensor, class_text: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """The VLM's zero-shot logits ``logit_scale * n(v) @ n(t).T`` (no gradient)."""
    return logit_scale * l2_normalize(vlm_img.detach().float()) @ l2_normalize(class_text.detach().float()).T


def text_alignment_loss(emb: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RISE's alignment: mean (1 - cos(emb, t_y)) between an embedding and its class text."""
    return (1 - (l2_normalize(emb) * l2_normalize(class_text.detach())[labels]).sum(-1)).mean()


def rise_relative_distance_loss(
    emb: torch.Tensor, class_anchor: torch.Tensor, compare: torch.Tensor, labels: torch.Tensor, weight: float = 10.0
) -> torch.Tensor:
    """RISE's relative-distance term: for a sample of class y, the softmax over anchors a of
    cos(emb, compare[y, a]) matches the softmax of cos(class_anchor[y], compare[y, a]);
    ``weight`` x mean squared error. ``compare`` (C, A, D): one text embedding per class and
    anchor prompt; ``class_anchor`` (C, D): the class's ensembled text embedding."""
    comp = l2_normalize(compare.detach())[labels]  # (B, A, D)
    teacher = torch.einsum("bd,bad->ba", l2_normalize(class_anchor.detach())[labels], comp).softmax(-1)
    student = torch.einsum("bd,bad->ba", l2_normalize(emb), comp).softmax(-1)
    return weight * F.mse_loss(student, teacher)


def gaussian_contrastive_loss(
    emb: torch.Tensor,
    class_mean: torch.Tensor,
    class_var: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """BorLan's closed-form alignment with Gaussian class text embeddings N(mu_c, diag(var_c)):
    the upper bound (Jensen) of the expected contrastive loss of z = l2_normalize(emb),

        -z.mu_y / T + log sum_c exp(z.mu_c / T + z^T diag(var_c) z / (2 T^2)),

    using E[exp(z.t / T)] = exp(z.mu / T + z^T Sigma z / (2 T^2)); no sampling."""
    z = l2_normalize(emb)
    mean, var = class_mean.detach(), class_var.detach()
    logits = z @ mean.T / temperature + (z * z) @ var.T / (2 * temperature**2)
    positive = (z * mean[labels]).sum(-1) / temperature
    return (torch.logsumexp(logits, dim=-1) - positive).mean()
