"""The frozen VLM wrapper against open_clip itself: preprocessing, embeddings, identity, prompts."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from tiny_vlm import TINY_CFG, make_tiny_vlm

from dait_cache import vlm as V
from dait_cache.errors import ModelError

MEAN_STD = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the loaded VLM, open_clip's own model built from the same files)."""
    import open_clip
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("vlm") / "tiny"
    name = make_tiny_vlm(folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["preprocess_cfg"].update(MEAN_STD)  # not CLIP's: a wrapper using CLIP's constants shows
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    vlm = V.load_vlm(name, None, "cpu")
    reference = open_clip.CLIP(**config["model_cfg"])
    reference.load_state_dict(load_file(str(folder / "open_clip_model.safetensors")))
    return vlm, reference.eval(), folder


def test_the_loaded_model_is_frozen_and_carries_its_own_preprocessing(tiny):
    vlm, _, folder = tiny
    assert not any(m.training for m in vlm.model.modules())  # open_clip builds in train mode (drop_path)
    assert not any(p.requires_grad for p in vlm.model.parameters())
    assert vlm.mean == tuple(MEAN_STD["mean"]) and vlm.std == tuple(MEAN_STD["std"])
    assert (vlm.native_size, vlm.embed_dim, vlm.device) == (64, TINY_CFG["embed_dim"], torch.device("cpu"))
    assert vlm.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)  # open_clip's init: log(1 / 0.07)
    weights = (folder / "open_clip_model.safetensors").read_bytes()
    assert vlm.weights_id == f"sha256:{hashlib.sha256(weights).hexdigest()}"
    assert vlm.pretrained is None and vlm.describe()["weights_id"] == vlm.weights_id
    # a local-dir: VLM brings its weights: a --pretrained given too is ignored, not recorded
    again = V.load_vlm(f"local-dir:{folder}", "openai", "cpu")
    assert again.pretrained is None and again.weights_id == vlm.weights_id


def test_image_embeddings_are_open_clips_on_the_normalised_pixels(tiny):
    vlm, reference, _ = tiny
    pixels = torch.randint(0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (MEAN_STD["mean"], MEAN_STD["std"]))
    with torch.no_grad():
        want = reference.encode_image((pixels.float() / 255 - mean) / std, normalize=False)
    got = vlm.encode_images(pixels)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got.norm(dim=-1), torch.ones(3))  # raw: the cache stores them unnormalised


def test_text_embeddings_are_open_clips_in_any_batch_size(tiny):
    import open_clip

    vlm, reference, _ = tiny
    texts = [f"a photo of a {c}, a type of bird" for c in ("jay", "wren", "tern", "gull", "kite")]
    with torch.no_grad():
        tokens = open_clip.tokenize(texts, context_length=TINY_CFG["text_cfg"]["context_length"])
        want = reference.encode_text(tokens, normalize=False)
    assert torch.allclose(vlm.encode_texts(texts), want, atol=1e-5)
    # batched in twos (the last batch of one): the same rows, to float rounding of other matmul shapes
    assert torch.allclose(vlm.encode_texts(texts, batch_size=2), want, atol=1e-5)


def test_prompts_follow_vl2lite_and_the_ensemble_adds_clips_templates():
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    assert V.prompt_templates("aircraft") == ["a photo of {}, one of the airplane models"]
    assert V.prompt_templates("cars") == ["a photo of {}, which is the model name of car"]
    assert V.prompt_templates("my_folder") == ["a photo of a {}."]  # a dataset VL2Lite never prompted
    ensemble = V.prompt_templates("dogs", "ensemble")
    assert ensemble[0] == "a photo of {}, a type of dog" and len(ensemble) == 1 + len(SIMPLE_IMAGENET_TEMPLATES)
    assert ensemble[1:] == [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES] and all("{}" in t for t in ensemble)
    with pytest.raises(ValueError, match="unknown prompt mode 'all'; valid: dataset, ensemble"):
        V.prompt_templates("dogs", "all")


def test_devices_and_weight_identities(tmp_path):
    assert V.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert V.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():  # this machine and CI: the one line instead of torch's assert
        with pytest.raises(
            ModelError, match="^--device cuda was asked for but no CUDA GPU is visible; use --device cpu$"
        ):
            V.resolve_device("cuda:0")
    assert V.weights_id("ViT-B-32", "openai") == "tag:openai"
    assert V.weights_id("ViT-B-32", V.RANDOM_WEIGHTS) == "random-init"
    assert V.weights_id("hf-hub:timm/some-clip", "ignored") == "hf-hub:timm/some-clip"
    (tmp_path / "w.bin").write_bytes(b"weights")
    assert V.weights_id("ViT-B-32", str(tmp_path / "w.bin")) == f"sha256:{hashlib.sha256(b'weights').hexdigest()}"


def test_a_vlm_without_weights_names_its_published_tags():
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model("RN50")
    with pytest.raises(ModelError) as err:
        V.check_vlm_name("RN50", None)
    assert str(err.value) == (
        f"VLM 'RN50' needs --pretrained: a tag ({', '.join(tags)}), a local weights file, "
        "or 'random' for random weights (speed measurements only)"
    )
    V.check_vlm_name("RN50", "openai")
    V.check_vlm_name("ViT-B/32", "openai")  # OpenAI's spelling, which open_clip takes
    V.check_vlm_name("hf-hub:org/repo", None)  # brings its own weights
