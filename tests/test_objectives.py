"""Every objective pinned: total loss and each term against an independent numpy computation on
fixed tensors (features, cached embeddings, labels, teacher outputs), run under bf16 autocast
as on a GPU: only backbone outputs are bf16, every loss is float32."""

import numpy as np
import pytest
import torch
from torch import nn

from dait_cache.cache import open_cache
from dait_cache.config import TrainConfig
from dait_cache.errors import DaitError
from dait_cache.train.objectives import VLMAlignment
from dait_cache.train.student import BUILDERS, student_config
from dait_cache.train.teacher import alignment_objective

B, C, D_POOL, EPOCH, EPOCHS, TAU, ALPHA = 4, 4, 6, 3, 10, 2.0, 0.5


def bf16(a):
    """Values exactly representable in bfloat16, so the backbone's bf16 outputs lose nothing."""
    return torch.tensor(a, dtype=torch.float32).bfloat16().float().numpy().astype(np.float64)


class Head(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, pooled):
        return (self.logits + 0 * pooled.sum()).bfloat16()


class Fixed(nn.Module):
    """A backbone whose feature map, pooled features and logits are fixed bf16 tensors."""

    def __init__(self, fmap, pooled, logits):
        super().__init__()
        self.fmap = nn.Parameter(torch.tensor(fmap, dtype=torch.float32))
        self.pooled = nn.Parameter(torch.tensor(pooled, dtype=torch.float32))
        self.classifier = Head(logits)
        self.num_features = pooled.shape[1]
        self.mean, self.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def forward_features(self, x):
        return (self.fmap[: len(x)] + 0 * x.float().mean()).bfloat16()

    def forward_head(self, m, pre_logits=True):
        return (self.pooled[: len(m)] + 0 * m.float().mean()).bfloat16()


RNG = np.random.default_rng(0)
S_MAP, S_POOL, S_LOGITS = (
    bf16(RNG.normal(size=(B, 5, 2, 2))),
    bf16(RNG.normal(size=(B, D_POOL))),
    bf16(RNG.normal(size=(B, C))),
)
T_MAP, T_POOL, T_LOGITS = (
    bf16(RNG.normal(size=(B, 3, 2, 2))),
    bf16(RNG.normal(size=(B, 7))),
    bf16(RNG.normal(size=(B, C))),
)
LABELS = np.array([0, 2, 1, 2])


# ---------------------------------------------------------------- numpy references


def n(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ce(z, y):
    return -log_softmax(z)[np.arange(len(y)), y].mean()


def kl_tau(target, model, tau=TAU):
    lp_t, lp_m = log_softmax(target / tau), log_softmax(model / tau)
    return tau**2 * (np.exp(lp_t) * (lp_t - lp_m)).sum(-1).mean()


def w(module):
    return module.weight.detach().double().numpy(), module.bias.detach().double().numpy()


def linear(x, module):
    weight, bias = w(module)
    return x @ weight.T + bias


def mlp(x, seq):
    return linear(np.maximum(linear(x, seq[0]), 0), seq[2])


def smooth_l1(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d * d, d - 0.5).mean()


def rkd(s, t):
    def dist(e):
        d = np.sqrt(np.maximum((e[:, None] - e[None]) ** 2, 0).sum(-1))
        return d / d[d > 0].mean()

    def angles(e):
        diff = e[None, :, :] - e[:, None, :]  # [a, b] = e_b - e_a
        u = diff / np.maximum(np.linalg.norm(diff, axis=-1, keepdims=True), 1e-12)
        return np.einsum("abd,acd->abc", u, u).ravel()

    return 25 * smooth_l1(dist(s), dist(t)) + 50 * smooth_l1(angles(s), angles(t))


def lam(rate, bias=0.0):
    return min(1.0, max(0.0, rate * EPOCH + bias))


# ---------------------------------------------------------------- running an objective


@pytest.fixture(scope="module")
def cache(tiny_cache_workspace):
    return open_cache(tiny_cache_workspace / "cub" / "cache")


def batch_for(cache):
    v = cache.img_emb("train")[:B, 1].astype(np.float32)
    return {
        "pixels": torch.zeros(B, 3, 4, 4, dtype=torch.uint8),
        "x": torch.zeros(B, 3, 4, 4),
        "label": torch.from_numpy(LABELS),
        "vlm_img": torch.from_numpy(v),
    }, v.astype(np.float64)


def run(cache, method, **cfg_kw):
    cfg = student_config(TrainConfig(method=method, epochs=EPOCHS, temperature=TAU, kd_alpha=ALPHA, **cfg_kw))
    torch.manual_seed(0)
    student = Fixed(S_MAP, S_POOL, S_LOGITS)
    teacher = Fixed(T_MAP, T_POOL, T_LOGITS)
    objective = BUILDERS[method](cfg, cache, student, teacher)
    if method in ("dait-f", "dait-l") or cfg_kw.get("teacher"):
        objective.attach_teacher(teacher)
    batch, v = batch_for(cache)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits, terms = objective(student, batch, EPOCH)
    assert loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
    return objective, student, v, float(loss.detach()), {k: float(t) for k, t in terms.items()}


def assert_pinned(got_loss, got_terms, want_loss, want_terms):
    assert set(got_terms) == set(want_terms)
    for k in want_terms:
        assert got_terms[k] == pytest.approx(want_terms[k], rel=2e-5, abs=1e-7), k
    assert got_loss == pytest.approx(want_loss, rel=2e-5, abs=1e-7)


def text(cache):
    return cache.class_text_emb().astype(np.float64), cache.text_emb.astype(np.float64)


def vlm_scale(cache) -> float:
    """The VLM's logit scale as encode recorded it: the tiny VLM keeps open_clip's initial 1 / 0.07
    (read from the manifest, not through the cache reader that the objectives use)."""
    scale = cache.manifest["vlm"]["logit_scale"]
    assert scale == pytest.approx(1 / 0.07, rel=1e-6)
    return scale


def test_none(cache):
    _, _, _, loss, terms = run(cache, "none")
    want = ce(S_LOGITS, LABELS)
    assert_pinned(loss, terms, want, {"ce": want})


def test_kd_against_clip_zero_shot(cache):
    _, _, v, loss, terms = run(cache, "kd")
    t, _ = text(cache)
    target = vlm_scale(cache) * n(v) @ n(t).T
    c, kd = ce(S_LOGITS, LABELS), kl_tau(target, S_LOGITS)
    assert_pinned(loss, terms, (1 - ALPHA) * c + ALPHA * kd, {"ce": c, "kd": kd})


def test_kd_and_rkd_against_a_named_teacher_use_its_outputs(cache):
    _, _, _, loss, terms = run(cache, "kd", teacher="t")
    c, kd = ce(S_LOGITS, LABELS), kl_tau(T_LOGITS, S_LOGITS)
    assert_pinned(loss, terms, (1 - ALPHA) * c + ALPHA * kd, {"ce": c, "kd": kd})
    _, _, _, loss, terms = run(cache, "rkd", teacher="t")
    r = rkd(S_POOL, T_POOL)
    assert_pinned(loss, terms, c + r, {"ce": c, "rkd": r})


def test_rkd_against_cached_embeddings(cache):
    _, _, v, loss, terms = run(cache, "rkd")
    c, r = ce(S_LOGITS, LABELS), rkd(S_POOL, v)
    assert_pinned(loss, terms, c + r, {"ce": c, "rkd": r})


def alignment(obj, f, v, t, weight, normalize, lam_, logits):
    v_in, t_in = (n(v), n(t)) if normalize else (v, t)
    target = (1 / 0.07) * n(v) @ n(t).T
    model = (1 / 0.07) * n(f) @ n(mlp(t_in, obj.mlp_txt)).T
    sia = weight / TAU**2 * kl_tau(target, model)
    ira = np.abs(n(f) - n(mlp(v_in, obj.mlp_img))).mean()
    c = ce(logits, LABELS)
    return lam_ * c + (1 - lam_) * (sia + ira) / 2, {"ce": c, "sia": sia, "ira": ira}


def test_dait_stage_one(cache):
    cfg = TrainConfig(epochs=EPOCHS, temperature=TAU)
    torch.manual_seed(0)
    model = Fixed(S_MAP, S_POOL, S_LOGITS)
    obj = alignment_objective(cfg, cache, D_POOL)
    assert type(obj) is VLMAlignment
    batch, v = batch_for(cache)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, terms = obj(model, batch, EPOCH)
    t, _ = text(cache)
    want, want_terms = alignment(obj, S_POOL, v, t, TAU**2, False, lam(1 / EPOCHS), S_LOGITS)
    assert_pinned(float(loss.detach()), {k: float(x) for k, x in terms.items()}, want, want_terms)


def test_vl2lite_uses_its_own_weight_inputs_and_schedule(cache):
    obj, _, v, loss, terms = run(cache, "vl2lite")
    t, _ = text(cache)
    want, want_terms = alignment(obj, S_POOL, v, t, TAU**2 / 2, True, lam(1 / (8 * EPOCHS)), S_LOGITS)
    assert_pinned(loss, terms, want, want_terms)


def test_dait_l_and_dait_f(cache):
    _, _, _, loss, terms = run(cache, "dait-l")
    c, kd, lam_ = ce(S_LOGITS, LABELS), kl_tau(T_LOGITS, S_LOGITS), lam(1 / EPOCHS)
    assert_pinned(loss, terms, lam_ * c + (1 - lam_) * kd, {"ce": c, "kd": kd})
    obj, _, _, loss, terms = run(cache, "dait-f")
    weight, bias = w(obj.adapter)
    adapted = np.einsum("oc,bchw->bohw", weight[:, :, 0, 0], S_MAP) + bias[None, :, None, None]
    sra = ((adapted - T_MAP) ** 2).mean()
    assert_pinned(loss, terms, lam_ * c + (1 - lam_) * sra, {"ce": c, "sra": sra})


def test_rise(cache):
    obj, student, v, loss, terms = run(cache, "rise")
    t, raw = text(cache)
    head = student.classifier
    assert np.allclose(np.linalg.norm(type(head)(D_POOL, torch.from_numpy(3 * t)).weight.detach(), axis=1), 1)
    emb = linear(S_POOL, head.proj)
    z = (1 / 0.07) * n(emb) @ n(head.weight.detach().double().numpy()).T
    c = ce(z, LABELS)
    kd = kl_tau(vlm_scale(cache) * n(v) @ n(t).T, z)
    align = (1 - (n(emb) * n(t)[LABELS]).sum(-1)).mean()
    comp = n(raw)[LABELS]

    def soft(a):
        return np.exp(log_softmax(a))

    rd = (
        10
        * (
            (soft(np.einsum("bd,bad->ba", n(emb), comp)) - soft(np.einsum("bd,bad->ba", n(raw.mean(1))[LABELS], comp)))
            ** 2
        ).mean()
    )
    assert_pinned(loss, terms, c + ALPHA * kd + align + rd, {"ce": c, "kd": kd, "align": align, "rd": rd})


def test_borlan(cache):
    obj, _, _, loss, terms = run(cache, "borlan")
    _, raw = text(cache)
    normed = n(raw)
    mean, var, temp = normed.mean(1), normed.var(1), 0.07
    zz = n(linear(S_POOL, obj.proj))
    logits = zz @ mean.T / temp + (zz * zz) @ var.T / (2 * temp**2)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    con = (lse - (zz * mean[LABELS]).sum(-1) / temp).mean()
    c = ce(S_LOGITS, LABELS)
    assert_pinned(loss, terms, c + con, {"ce": c, "contrast": con})


def test_rise_and_borlan_refuse_a_cache_without_the_prompt_ensemble(dogs_cache_workspace):
    single = open_cache(dogs_cache_workspace / "dogs" / "cache")
    assert single.text_emb.shape[1] == 1
    for method in ("rise", "borlan"):
        with pytest.raises(DaitError, match=f"{method} needs the prompt ensemble.*encode --prompts ensemble"):
            BUILDERS[method](student_config(TrainConfig(method=method)), single, Fixed(S_MAP, S_POOL, S_LOGITS), None)


def test_vl2lite_mlps_see_directions_and_dait_the_raw_embedding(cache):
    """Scaling the cached image and class-text embeddings changes nothing for vl2lite (both MLPs
    take normalised inputs, as VL2Lite's code does) and changes DAIT's stage 1 (raw inputs)."""

    def losses(obj, model, factor):
        batch, _ = batch_for(cache)
        out = []
        for f in (1.0, factor):
            batch["vlm_img"] = batch["vlm_img"] * f
            obj.class_text.mul_(f)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out.append(float(obj(model, batch, EPOCH)[0].detach()))
        return out

    for factor in (3.0, 0.25):
        obj, student, *_ = run(cache, "vl2lite")  # a fresh objective: the cached text at its own scale
        loss, again = losses(obj, student, factor)
        assert again == pytest.approx(loss, rel=1e-6)
    torch.manual_seed(0)
    dait = alignment_objective(TrainConfig(epochs=EPOCHS, temperature=TAU), cache, D_POOL)
    loss, again = losses(dait, Fixed(S_MAP, S_POOL, S_LOGITS), 3.0)
    assert abs(again - loss) > 1e-3


def test_a_frozen_teacher_answers_in_eval_mode_whatever_its_mode(cache):
    from dait_cache.models import create_backbone
    from dait_cache.train.objectives import FrozenTeacher

    torch.manual_seed(0)
    model = create_backbone("resnet18", C, pretrained=False)
    teacher = FrozenTeacher(model)
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    want = [t.clone() for t in teacher(pixels)]
    model.train()  # batch-norm would use the batch's statistics
    assert all(torch.equal(a, b) for a, b in zip(teacher(pixels), want))
    assert not any(p.requires_grad for p in model.parameters())


def test_an_objective_saves_only_what_it_trains_and_moves_its_teacher(cache):
    """A checkpoint's objective state holds the trainable extras only: no cached text (it comes
    from the cache), no teacher (it is frozen and has its own run folder)."""
    mlps = {f"mlp_{m}.{i}.{p}" for m in ("img", "txt") for i in (0, 2) for p in ("weight", "bias")}
    extras = {"dait-f": {"adapter.weight", "adapter.bias"}, "vl2lite": mlps, "borlan": {"proj.weight", "proj.bias"}}
    for method in BUILDERS:
        objective = run(cache, method, **({"teacher": "t"} if method in ("kd", "rkd") else {}))[0]
        assert set(objective.state_dict()) == extras.get(method, set()), method
        assert set(dict(objective.named_parameters())) == extras.get(method, set()), method
    objective = run(cache, "dait-f")[0]
    objective.to_device(torch.device("meta"))  # a device a CPU machine has: the teacher goes along
    assert objective.teacher.model.fmap.device.type == "meta" and objective.adapter.weight.device.type == "meta"
