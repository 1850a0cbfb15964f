"""Training objectives: each owns its trainable extras (MLPs, adapters) and computes the loss.

``objective(model, batch, epoch) -> (loss, logits, terms)``; ``batch`` holds ``pixels`` (uint8 on
the device), ``x`` (pixels normalised for the model), ``label``, ``vlm_img`` (cached embedding of
the very view in ``pixels``). Formulas: DESIGN section 6, via :mod:`dait_cache.losses`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses as L
from ..models import Backbone
from ..data.views import normalize_pixels


def mlp(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(inplace=True), nn.Linear(d_out, d_out))


class FrozenTeacher:
    """The one place a teacher is frozen: eval mode, no gradients, never in a state_dict."""

    def __init__(self, model: Backbone):
        self.model = model.eval().requires_grad_(False)

    def to(self, device) -> "FrozenTeacher":
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.model.eval()  # even if someone called .train() on the whole tree
        fmap = self.model.forward_features(normalize_pixels(pixels, self.model.mean, self.model.std))
        pooled = self.model.forward_head(fmap, pre_logits=True)
        return fmap.float(), pooled.float(), self.model.classifier(pooled).float()


class Objective(nn.Module):
    """Cross-entropy only; the base of every objective."""

    name = "ce"

    def __init__(self, tau: float = 2.0, lambda_rate: float = 0.0, lambda_bias: float = 1.0):
        super().__init__()
        self.tau, self.lambda_rate, self.lambda_bias = tau, lambda_rate, lambda_bias
        self.teacher: Optional[FrozenTeacher] = None

    def lam(self, epoch: int) -> float:
        return L.lambda_at(epoch, self.lambda_rate, self.lambda_bias)

    def attach_teacher(self, teacher: Optional[Backbone]) -> None:
        # object.__setattr__ keeps the frozen teacher out of parameters(), train() and state_dict.
        object.__setattr__(self, "teacher", FrozenTeacher(teacher) if teacher is not None else None)

    def to_device(self, device) -> "Objective":
        self.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    @staticmethod
    def run(model: Backbone, x: torch.Tensor):
        fmap = model.forward_features(x)
        pooled = model.forward_head(fmap, pre_logits=True)
        return fmap, pooled, model.classifier(pooled)

    def forward(self, model: Backbone, batch: dict, epoch: int):
        _, _, z = self.run(model, batch["x"])
        ce = F.cross_entropy(z, batch["label"])
        return ce, z, {"ce": ce.detach()}


class VLMAlignment(Objective):
    """DAIT stage 1 (and the ``vl2lite`` baseline on a student): CE + (SIA + IRA) / 2."""

    name = "dait"

    def __init__(self, vlm_dim: int, feat_dim: int, class_text: torch.Tensor, **kw):
        super().__init__(**kw)
        self.mlp_img = mlp(vlm_dim, feat_dim)
        self.mlp_txt = mlp(vlm_dim, feat_dim)
        self.register_buffer("class_text", class_text.float(), persistent=False)

    def forward(self, model, batch, epoch):
        _, f, z = self.run(model, batch["x"])
        v, t = batch["vlm_img"].detach(), self.class_text  # cached targets never learn
        lam = self.lam(epoch)
        ce = F.cross_entropy(z, batch["label"])
        sia = L.sia_loss(f.float(), self.mlp_txt(t), v, t, tau=self.tau)
        ira = L.ira_loss(f.float(), self.mlp_img(v))
        loss = lam * ce + (1 - lam) * (sia + ira) / 2
        return loss, z, {"ce": ce.detach(), "sia": sia.detach(), "ira": ira.detach()}


class FeatureDistill(Objective):
    """DAIT-F: lambda * CE + (1 - lambda) * SRA(conv1x1(F_S), F_T)."""

    name = "dait-f"

    def __init__(self, student_channels: int, teacher_channels: int, **kw):
        super().__init__(**kw)
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, model, batch, epoch):
        fmap, _, z = self.run(model, batch["x"])
        t_map, _, _ = self.teacher(batch["pixels"])
        lam = self.lam(epoch)
        ce = F.cross_entropy(z, batch["label"])
        sra = L.sra_loss(self.adapter(fmap).float(), t_map)
        return lam * ce + (1 - lam) * sra, z, {"ce": ce.detach(), "sra": sra.detach()}


class LogitDistill(Objective):
    """DAIT-L: lambda * CE + (1 - lambda) * tau^2 KL(teacher || student)."""

    name = "dait-l"

    def forward(self, model, batch, epoch):
        _, _, z = self.run(model, batch["x"])
        _, _, z_t = self.teacher(batch["pixels"])
        lam = self.lam(epoch)
        ce = F.cross_entropy(z, batch["label"])
        kd = L.kd_loss(z.float(), z_t, self.tau)
        return lam * ce + (1 - lam) * kd, z, {"ce": ce.detach(), "kd": kd.detach()}


class HintonKD(Objective):
    """kd: (1 - a) CE + a tau^2 KL, targets from a CNN teacher or the VLM's zero-shot logits."""

    name = "kd"

    def __init__(self, class_text: torch.Tensor, logit_scale: float, alpha: float = 0.5, **kw):
        super().__init__(**kw)
        self.alpha, self.logit_scale = alpha, logit_scale
        self.register_buffer("class_text", class_text.float(), persistent=False)

    def targets(self, batch):
        if self.teacher is not None:
            return self.teacher(batch["pixels"])[2]
        return L.clip_zero_shot_logits(batch["vlm_img"], self.class_text, self.logit_scale)

    def forward(self, model, batch, epoch):
        _, _, z = self.run(model, batch["x"])
        ce = F.cross_entropy(z, batch["label"])
        kd = L.kd_loss(z.float(), self.targets(batch), self.tau)
        return (1 - self.alpha) * ce + self.alpha * kd, z, {"ce": ce.detach(), "kd": kd.detach()}


class RelationalKD(Objective):
    """rkd: CE + RKD(pooled student features, teacher pooled features or cached VLM embeddings)."""

    name = "rkd"

    def forward(self, model, batch, epoch):
        _, f, z = self.run(model, batch["x"])
        target = self.teacher(batch["pixels"])[1] if self.teacher is not None else batch["vlm_img"]
        ce = F.cross_entropy(z, batch["label"])
        rkd = L.rkd_loss(f, target)
        return ce + rkd, z, {"ce": ce.detach(), "rkd": rkd.detach()}


class TextHead(nn.Module):
    """Cosine classifier whose class weights start at the VLM's class text embeddings."""

    def __init__(self, feat_dim: int, class_text: torch.Tensor, scale: float = L.VL2LITE_SCALE):
        super().__init__()
        self.proj = nn.Linear(feat_dim, class_text.shape[1])
        self.weight = nn.Parameter(L.n(class_text.float()).clone())
        self.scale = scale

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.scale * L.n(self.proj(pooled)) @ L.n(self.weight).T


class RISE(HintonKD):
    """rise: text-initialised classifier, CE + a * KD to zero-shot logits + text alignment."""

    name = "rise"

    def __init__(self, model: Backbone, class_text: torch.Tensor, logit_scale: float, **kw):
        super().__init__(class_text, logit_scale, **kw)
        model.classifier = TextHead(model.num_features, class_text)

    def forward(self, model, batch, epoch):
        _, f, z = self.run(model, batch["x"])
        ce = F.cross_entropy(z, batch["label"])
        kd = L.kd_loss(z.float(), L.clip_zero_shot_logits(batch["vlm_img"], self.class_text,
                                                           self.logit_scale), self.tau)
        align = L.text_alignment_loss(model.classifier.proj(f).float(), self.class_text, batch["label"])
        loss = ce + self.alpha * kd + align
        return loss, z, {"ce": ce.detach(), "kd": kd.detach(), "align": align.detach()}


class BORLAN(Objective):
    """borlan: CE + contrast of the projected embedding with per-class prompt distributions."""

    name = "borlan"

    def __init__(self, feat_dim: int, text_emb: torch.Tensor, **kw):
        super().__init__(**kw)
        normed = L.n(text_emb.float())  # (C, P, D)
        self.proj = nn.Linear(feat_dim, text_emb.shape[-1])
        self.register_buffer("class_mean", normed.mean(1), persistent=False)
        self.register_buffer("class_std", normed.std(1, unbiased=False), persistent=False)

    def forward(self, model, batch, epoch):
        _, f, z = self.run(model, batch["x"])
        ce = F.cross_entropy(z, batch["label"])
        con = L.distribution_contrastive_loss(self.proj(f).float(), self.class_mean, self.class_std,
                                              batch["label"])
        return ce + con, z, {"ce": ce.detach(), "contrast": con.detach()}
