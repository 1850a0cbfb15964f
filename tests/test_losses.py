"""Each loss against a value computed by hand (numpy, explicit formulas) on small tensors."""

import numpy as np
import pytest
import torch

from dait_cache import losses as L


def np_n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):  # KL(p || q), batch mean
    return float((p * (np.log(p) - np.log(q))).sum(-1).mean())


@pytest.fixture
def t():
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.randn(*shape, generator=g, dtype=torch.float64)
        for k, shape in {"f": (4, 6), "tf": (3, 6), "v": (4, 5), "vt": (3, 5), "zs": (4, 3), "zt": (4, 3)}.items()
    }


def test_sia_equals_hand_computation(t):
    s, tau = 1 / 0.07, 2.0
    p = np_softmax(s * np_n(t["v"].numpy()) @ np_n(t["vt"].numpy()).T / tau)
    q = np_softmax(s * np_n(t["f"].numpy()) @ np_n(t["tf"].numpy()).T / tau)
    assert L.sia_loss(t["f"], t["tf"], t["v"], t["vt"]).item() == pytest.approx(tau**2 * np_kl(p, q), rel=1e-9)
    # VL2Lite's code weights the same batch-mean KL by tau^2 / 2
    vl2lite = L.sia_loss(t["f"], t["tf"], t["v"], t["vt"], weight=tau**2 / 2).item()
    assert vl2lite == pytest.approx(tau**2 / 2 * np_kl(p, q), rel=1e-9)


def test_sia_is_zero_when_distributions_match(t):
    # teacher features identical (up to scale) to the VLM's -> same distribution
    assert L.sia_loss(3 * t["v"], 0.5 * t["vt"], t["v"], t["vt"]).item() == pytest.approx(0, abs=1e-12)
    assert L.sia_loss(t["f"], t["tf"], t["v"], t["vt"]).item() > 1e-3


def test_ira_equals_hand_computation_and_zero_on_identical(t):
    f, g = t["f"].numpy(), t["tf"][[0, 1, 2, 0]].numpy()
    expected = np.abs(np_n(f) - np_n(g)).mean()
    assert L.ira_loss(t["f"], t["tf"][[0, 1, 2, 0]]).item() == pytest.approx(expected, rel=1e-12)
    assert L.ira_loss(t["f"], 7 * t["f"]).item() == pytest.approx(0, abs=1e-12)


def test_lambda_is_linear_and_clipped():
    assert L.lambda_at(0, 0.1, 0.0) == 0.0
    assert L.lambda_at(5, 0.1, 0.0) == pytest.approx(0.5)
    assert L.lambda_at(20, 0.1, 0.0) == 1.0
    assert L.lambda_at(3, 0.1, -1.0) == 0.0
    assert L.lambda_at(10, 1 / 800, 0) == pytest.approx(10 / 800)


def test_kd_equals_hand_computation_and_zero_on_identical(t):
    tau = 3.0
    p, q = np_softmax(t["zt"].numpy() / tau), np_softmax(t["zs"].numpy() / tau)
    assert L.kd_loss(t["zs"], t["zt"], tau).item() == pytest.approx(tau**2 * np_kl(p, q), rel=1e-9)
    assert L.kd_loss(t["zs"], t["zs"].clone()).item() == pytest.approx(0, abs=1e-12)


def test_sra_equals_mse_and_resizes():
    s = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).view(2, 3, 2, 2)
    tm = torch.ones(2, 3, 2, 2, dtype=torch.float64)
    assert L.sra_loss(s, tm).item() == pytest.approx(float(((s.numpy() - 1) ** 2).mean()))
    # a constant 2x2 map upsampled to 4x4 stays constant
    const = torch.full((1, 2, 2, 2), 3.0)
    big = torch.zeros(1, 2, 4, 4)
    assert L.sra_loss(const, big).item() == pytest.approx(9.0)
    # bilinear (half-pixel centres): a row [0, 4] becomes [0, 1, 3, 4], nearest would give [0, 0, 4, 4]
    ramp = torch.tensor([0.0, 4.0]).expand(1, 1, 2, 2)
    assert L.sra_loss(ramp, torch.zeros(1, 1, 4, 4)).item() == pytest.approx((0 + 1 + 9 + 16) / 4)
    s2 = torch.randn(1, 2, 2, 2, requires_grad=True)
    L.sra_loss(s2, torch.randn(1, 2, 7, 7)).backward()
    assert s2.grad is not None and s2.grad.abs().sum() > 0


def _np_rkd(s, t):
    def dist(e):
        d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
        return d / d[d > 0].mean()

    def angles(e):
        diff = e[None] - e[:, None]
        norm = np.linalg.norm(diff, axis=-1, keepdims=True)
        diff = np.divide(diff, norm, out=np.zeros_like(diff), where=norm > 0)
        return np.einsum("ijk,ilk->ijl", diff, diff).reshape(-1)

    def smooth_l1(a, b):
        x = np.abs(a - b)
        return np.where(x < 1, 0.5 * x**2, x - 0.5).mean()

    return 25 * smooth_l1(dist(s), dist(t)) + 50 * smooth_l1(angles(s), angles(t))


def test_rkd_equals_hand_computation_and_is_scale_invariant(t):
    s, tv = t["f"].float(), t["v"].float()
    value = L.rkd_loss(s, tv).item()
    assert value == pytest.approx(_np_rkd(s.double().numpy(), tv.double().numpy()), rel=1e-4)
    assert L.rkd_loss(10 * s, tv).item() == pytest.approx(value, rel=1e-4)
    assert L.rkd_loss(s, 0.01 * tv).item() == pytest.approx(value, rel=1e-4)
    assert L.rkd_loss(s, 2 * s).item() == pytest.approx(0, abs=1e-5)


def test_zero_shot_logits_and_alignment(t):
    z = L.clip_zero_shot_logits(t["v"], t["vt"], 100.0)
    assert np.allclose(z.numpy(), 100 * np_n(t["v"].numpy()) @ np_n(t["vt"].numpy()).T)
    y = torch.tensor([0, 1, 2, 0])
    emb = t["vt"][y] * 5
    assert L.text_alignment_loss(emb, t["vt"], y).item() == pytest.approx(0, abs=1e-12)


def test_gradients_never_reach_cached_tensors(t):
    f = t["f"].clone().requires_grad_(True)
    tf = t["tf"].clone().requires_grad_(True)
    v = t["v"].clone().requires_grad_(True)
    vt = t["vt"].clone().requires_grad_(True)
    zt = t["zt"].clone().requires_grad_(True)
    (
        L.sia_loss(f, tf, v, vt)
        + L.kd_loss(t["zs"].requires_grad_(True), zt)
        + L.rkd_loss(f, v)
        + L.sra_loss(f.view(4, 6, 1, 1), v[:, :5].view(4, 5, 1, 1)[:, :1].expand(4, 6, 1, 1))
    ).backward()
    assert f.grad is not None and tf.grad is not None
    assert v.grad is None and vt.grad is None and zt.grad is None


def np_logsumexp(a):
    m = a.max(-1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(-1, keepdims=True)))[..., 0]


def test_gaussian_contrastive_is_the_closed_form_upper_bound():
    rng = np.random.default_rng(0)
    emb, mean = rng.normal(size=(5, 6)), rng.normal(size=(4, 6)) / 3
    var, y, T = rng.uniform(0, 0.02, size=(4, 6)), np.array([0, 1, 2, 3, 1]), 0.07
    z = np_n(emb)
    logits = z @ mean.T / T + (z * z) @ var.T / (2 * T * T)
    expect = (np_logsumexp(logits) - (z * mean[y]).sum(1) / T).mean()
    t = torch.from_numpy
    got = L.gaussian_contrastive_loss(t(emb), t(mean), t(var), t(y)).item()
    assert got == pytest.approx(expect, rel=1e-10)
    # The bound lies above the sampled expectation of the contrastive loss ...
    samples = mean + np.sqrt(var) * rng.normal(size=(4000, 4, 6))
    sampled = np.mean([(np_logsumexp(z @ s.T / T) - (z * s[y]).sum(1) / T).mean() for s in samples])
    assert sampled <= got
    # ... and is plain cross-entropy against the class means when the variance is zero.
    zero = L.gaussian_contrastive_loss(t(emb), t(mean), t(np.zeros_like(var)), t(y)).item()
    assert zero == pytest.approx((np_logsumexp(z @ mean.T / T) - (z * mean[y]).sum(1) / T).mean(), rel=1e-10)


def test_rise_relative_distance_matches_numpy():
    rng = np.random.default_rng(1)
    emb, anchor, compare, y = (
        rng.normal(size=(3, 5)),
        rng.normal(size=(4, 5)),
        rng.normal(size=(4, 6, 5)),
        np.array([2, 0, 2]),
    )

    def soft(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    comp = np_n(compare)[y]
    teacher = soft(np.einsum("bd,bad->ba", np_n(anchor)[y], comp))
    student = soft(np.einsum("bd,bad->ba", np_n(emb), comp))
    expect = 10 * ((student - teacher) ** 2).mean()
    t = torch.from_numpy
    assert L.rise_relative_distance_loss(t(emb), t(anchor), t(compare), t(y)).item() == pytest.approx(expect, rel=1e-10)
