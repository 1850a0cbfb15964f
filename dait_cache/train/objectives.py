"""Training objectives: each owns its trainable extras (MLPs, adapters) and computes the loss.

``objective(model, batch, epoch) -> (loss, logits, terms)``; ``batch`` holds ``pixels`` (uint8 on
the device), ``x`` (pixels normalised for the model), ``label``, ``vlm_img`` (cached embedding of
the very view in ``pixels``). Formulas: docs/design.md section 6, via :mod:`dait_cache.losses`.

Precision: only backbone forwards run under the caller's (bf16) autocast; every projection head,
logit and loss is computed in float32 with autocast off (:func:`fp32`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses as L
from ..data.views import normalize_pixels
from ..models import Backbone


def fp32(like: torch.Tensor) -> torch.autocast:
    """Autocast off on ``like``'s device: the block computes in the dtype of its (float32) inputs."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def mlp(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(inplace=True), nn.Linear(d_out, d_out))


class FrozenTeacher:
    """The one place a teacher is frozen: eval mode, no gradients, never in a state_dict."""

    def __init__(self, model: Backbone):
        self.model = model.eval().requires_grad_(False)

    def to(self, device) -> FrozenTeacher:
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
        self.teacher: FrozenTeacher | None = None

    def lambda_at(self, epoch: int) -> float:
        return L.lambda_at(epoch, self.lambda_rate, self.lambda_bias)

    def attach_teacher(self, teacher: Backbone | None) -> None:
        # FrozenTeacher is not a Module: the teacher stays out of parameters(), train() and state_dict.
        self.teacher = FrozenTeacher(teacher) if teacher is not None else None

    def to_device(self, device) -> Objective:
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
        with fp32(z):
            ce = F.cross_entropy(z.float(), batch["label"])
        return ce, z, {"ce": ce.detach()}


class VLMAlignment(Objective):
    """DAIT stage 1: lambda CE + (1 - lambda) (SIA + IRA) / 2, SIA weighted tau^2, the raw cached
    image embedding into MLP_img (docs/design.md section 6)."""

    name = "dait"
    normalize_inputs = False  # feed n(v), n(t) to the MLPs (VL2Lite's AlignNet does)

    def __init__(self, vlm_dim: int, feat_dim: int, class_text: torch.Tensor, **kw):
        super().__init__(**kw)
        self.mlp_img = mlp(vlm_dim, feat_dim)
        self.mlp_txt = mlp(vlm_dim, feat_dim)
        self.register_buffer("class_text", class_text.float(), persistent=False)

    @property
    def kl_weight(self) -> float:
        return self.tau**2

    def forward(self, model, batch, epoch):
        _, f, z = self.run(model, batch["x"])
        lam = self.lambda_at(epoch)
        with fp32(z):
            v, t = batch["vlm_img"].detach().float(), self.class_text  # cached targets never learn
            v_in, t_in = (L.l2_normalize(v), L.l2_normalize(t)) if self.normalize_inputs else (v, t)
            ce = F.cross_entropy(z.float(), batch["label"])
            sia = L.sia_loss(f.float(), self.mlp_txt(t_in), v, t, tau=self.tau, weight=self.kl_weight)
            ira = L.ira_loss(f.float(), self.mlp_img(v_in))
            loss = lam * ce + (1 - lam) * (sia + ira) / 2
        return loss, z, {"ce": ce.detach(), "sia": sia.detach(), "ira": ira.detach()}


class VL2LiteAlignment(VLMAlignment):
    """The ``vl2lite`` baseline as VL2Lite's released code computes it: the KL term weighted
    tau^2 / 2 (KLDivLoss mean x T^2 x C / 2) and L2-normalised embeddings into both MLPs."""

    name = "vl2lite"
    normalize_inputs = True

    @property
    def kl_weight(self) -> float:
        return self.tau**2 / 2


class FeatureDistill(Objective):
    """DAIT-F: lambda * CE + (1 - lambda) * SRA(conv1x1(F_S), F_T)."""

    name = "dait-f"

    def __init__(self, student_channels: int, teacher_channels: int, **kw):
        super().__init__(**kw)
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, model, batch, epoch):
        fmap, _, z = self.run(model, batch["x"])
        t_map, _, _ = self.teacher(batch["pixels"])
        lam = self.lambda_at(epoch)
        with fp32(z):
            ce = F.cross_entropy(z.float(), batch["label"])
            sra = L.sra_loss(self.adapter(fmap.float()), t_map.float())
            loss = lam * ce + (1 - lam) * sra
        return loss, z, {"ce": ce.detach(), "sra": sra.detach()}


class LogitDistill(Objective):
    """DAIT-L: lambda * CE + (1 - lambda) * tau^2 KL(teacher || student)."""

    name = "dait-l"

    def forward(self, model, batch, epoch):
        _, _, z = self.run(model, batch["x"])
        _, _, z_t = self.teacher(batch["pixels"])
        lam = self.lambda_at(epoch)
        with fp32(z):
            ce = F.cross_entropy(z.float(), batch["label"])
            kd = L.kd_loss(z.float(), z_t.float(), self.tau)
            loss = lam * ce + (1 - lam) * kd
        return loss, z, {"ce": ce.detach(), "kd": kd.detach()}


class HintonKD(Objective):
    """kd: (1 - a) CE + a tau^2 KL, targets from a CNN teacher or the VLM's zero-shot logits."""

    name = "kd"

    def __init__(self, class_text: torch.Tensor, logit_scale: float, alpha: float = 0.5, **kw):
        super().__init__(**kw)
        self.alpha, self.logit_scale = alpha, logit_scale
        self.register_buffer("class_text", class_text.float(), persistent=False)

    def forward(self, model, batch, epoch):
        _, _, z = self.run(model, batch["x"])
        # a teacher's forward stays under the caller's autocast; the targets are float32
        teacher_logits = self.teacher(batch["pixels"])[2] if self.teacher is not None else None
        with fp32(z):
            target = (
                teacher_logits.float()
                if teacher_logits is not None
                else L.clip_zero_shot_logits(batch["vlm_img"], self.class_text, self.logit_scale)
            )
            ce = F.cross_entropy(z.float(), batch["label"])
            kd = L.kd_loss(z.float(), target, self.tau)
            loss = (1 - self.alpha) * ce + self.alpha * kd
        return loss, z, {"ce": ce.detach(), "kd": kd.detach()}


class RelationalKD(Objective):
    """rkd: CE + RKD(pooled student features, teacher pooled features or cached VLM embeddings)."""

    name = "rkd"

    def forward(self, model, batch, epoch):
        _, f, z = self.run(model, batch["x"])
        target = self.teacher(batch["pixels"])[1] if self.teacher is not None else batch["vlm_img"]
        with fp32(z):
            ce = F.cross_entropy(z.float(), batch["label"])
            rkd = L.rkd_loss(f.float(), target.float())
            loss = ce + rkd
        return loss, z, {"ce": ce.detach(), "rkd": rkd.detach()}


class TextHead(nn.Module):
    """Cosine classifier whose class weights start at the VLM's class text embeddings; runs in
    float32 (its logits feed the losses)."""

    def __init__(self, feat_dim: int, class_text: torch.Tensor, scale: float = L.VL2LITE_SCALE):
        super().__init__()
        self.proj = nn.Linear(feat_dim, class_text.shape[1])
        self.weight = nn.Parameter(L.l2_normalize(class_text.float()).clone())
        self.scale = scale

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        with fp32(pooled):
            return self.scale * L.l2_normalize(self.proj(pooled.float())) @ L.l2_normalize(self.weight).T


def _no_ensemble(method: str, templates: int) -> str:
    return (
        f"{method} needs the prompt ensemble in the cache (it has {templates} "
        "template); re-encode with `dait-cache encode --prompts ensemble`"
    )


def ensemble_refusal(method: str, templates: int) -> str | None:
    """Why a cache of ``templates`` prompt templates cannot train ``method`` (rise and borlan
    estimate per-class text statistics from the prompt ensemble); None when it can."""
    return _no_ensemble(method, templates) if templates < 2 else None


def needs_ensemble(method: str, text_emb: torch.Tensor) -> None:
    """Refuse text embeddings (C, P, D) without the prompt ensemble."""
    if text_emb.ndim != 3 or text_emb.shape[1] < 2:
        from ..errors import DaitError

        raise DaitError(_no_ensemble(method, text_emb.shape[1]))


class RISE(HintonKD):
    """rise (Huang et al., ICCV 2023): a text-initialised classifier; CE + a KD to the VLM's
    zero-shot logits + absolute distance (1 - cos to the class text) + relative distance (RISE's
    softmax-over-anchors MSE x 10, with the ensemble's templates as the anchor prompts)."""

    name = "rise"

    def __init__(self, model: Backbone, text_emb: torch.Tensor, logit_scale: float, **kw):
        needs_ensemble("rise", text_emb)
        raw = text_emb.float()
        class_text = L.l2_normalize(L.l2_normalize(raw).mean(1))  # the design's t: mean of normalised templates
        super().__init__(class_text, logit_scale, **kw)
        model.classifier = TextHead(model.num_features, class_text)
        self.register_buffer("anchor", raw.mean(1), persistent=False)  # RISE: mean of raw embeddings
        self.register_buffer("compare", raw, persistent=False)

    def forward(self, model, batch, epoch):
        _, f, z = self.run(model, batch["x"])
        with fp32(z):
            y = batch["label"]
            emb = model.classifier.proj(f.float())
            ce = F.cross_entropy(z.float(), y)
            kd = L.kd_loss(
                z.float(), L.clip_zero_shot_logits(batch["vlm_img"], self.class_text, self.logit_scale), self.tau
            )
            align = L.text_alignment_loss(emb, self.class_text, y)
            rd = L.rise_relative_distance_loss(emb, self.anchor, self.compare, y)
            loss = ce + self.alpha * kd + align + rd
        return loss, z, {"ce": ce.detach(), "kd": kd.detach(), "align": align.detach(), "rd": rd.detach()}


class BORLAN(Objective):
    """borlan (Ma et al., ICCV 2023): CE + the closed-form contrast of the projected embedding
    with Gaussian class text embeddings, mean and diagonal variance over the prompt ensemble."""

    name = "borlan"

    def __init__(self, feat_dim: int, text_emb: torch.Tensor, temperature: float = 0.07, **kw):
        super().__init__(**kw)
        needs_ensemble("borlan", text_emb)
        normed = L.l2_normalize(text_emb.float())  # (C, P, D)
        self.temperature = temperature
        self.proj = nn.Linear(feat_dim, text_emb.shape[-1])
        self.register_buffer("class_mean", normed.mean(1), persistent=False)
        self.register_buffer("class_var", normed.var(1, unbiased=False), persistent=False)

    def forward(self, model, batch, epoch):
        _, f, z = self.run(model, batch["x"])
        with fp32(z):
            ce = F.cross_entropy(z.float(), batch["label"])
            con = L.gaussian_contrastive_loss(
                self.proj(f.float()), self.class_mean, self.class_var, batch["label"], self.temperature
            )
            loss = ce + con
        return loss, z, {"ce": ce.detach(), "contrast": con.detach()}
