"""One backbone interface over timm and torchvision."""

import pytest
import torch

from dait_cache.errors import ModelError
from dait_cache.models import check_arch, check_view_size, create_backbone, feature_shape

EXPECTED = {  # name -> (channels of the final map, pooled dim)
    "regnety_016": 888,
    "resnet18": 512,
    "mobilenetv2": 1280,
    "efficientnet_b0": 1280,
    "shufflenetv2": 1024,
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_interface(name):
    m = create_backbone(name, num_classes=7, pretrained=False)
    x = torch.randn(2, 3, 64, 64)
    m.eval()
    fmap = m.forward_features(x)
    assert fmap.shape == (2, EXPECTED[name], 2, 2)
    pooled = m.forward_head(fmap, pre_logits=True)
    assert pooled.shape == (2, EXPECTED[name]) and m.num_features == EXPECTED[name]
    logits = m.forward_head(fmap, pre_logits=False)
    assert logits.shape == (2, 7)
    assert torch.allclose(m(x), logits) and torch.allclose(m.classifier(pooled), logits)
    assert len(m.mean) == 3 and len(m.std) == 3
    assert torch.allclose(pooled, fmap.mean((2, 3)), atol=1e-6)  # every one pools by global average
    assert feature_shape(m, 224) == (EXPECTED[name], 7, 7)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "shufflenetv2"])
def test_each_parameter_is_registered_once_and_the_network_layout_round_trips(name):
    import timm
    import torchvision

    m = create_backbone(name, num_classes=7, pretrained=False)
    if name == "shufflenetv2":
        net = torchvision.models.shufflenet_v2_x1_0(num_classes=7)
    else:
        net = timm.create_model(m.name, pretrained=False, num_classes=7)
    # the network keeps no second classifier: the same parameter count as the plain network
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in net.parameters())
    assert not any(k.startswith(f"{m.classifier_name}.") for k in m.net.state_dict())
    net.load_state_dict(m.network_state_dict())  # strict: the classifier under the network's own name
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(net.eval()(x), m.eval()(x), atol=1e-5)


def test_normalisation_comes_from_the_models_own_config():
    assert create_backbone("mobilevit_xxs", 3, pretrained=False).mean == (0.0, 0.0, 0.0)
    assert create_backbone("resnet18", 3, pretrained=False).std == (0.229, 0.224, 0.225)


def test_dummy_forwards_leave_the_model_as_they_found_it():
    m = create_backbone("resnet18", 3, pretrained=False).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert feature_shape(m, 32) == (512, 1, 1)
    check_view_size(m, 32)
    assert m.training  # the caller's mode is restored ...
    after = m.state_dict()  # ... and no batch-norm statistic moved (the forwards ran in eval mode)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_view_sizes_and_names_are_checked_before_any_work():
    # VGG pools a 16 px view to nothing: PyTorch raises a RuntimeError deep inside
    with pytest.raises(ModelError, match=r"^vgg13 cannot take this cache's 16x16 views \(Given input size"):
        check_view_size(create_backbone("vgg13", 3, pretrained=False), 16)
    for ok in ("mobilenetv2", "shufflenetv2", "resnet10t", "hf-hub:timm/resnet18.a1_in1k"):
        check_arch(ok)
    with pytest.raises(ModelError, match="unknown architecture 'resnet_nope'"):
        check_arch("resnet_nope")


@pytest.mark.parametrize("name", ["tv:resnet18", "hf-hub:", "timm:resnet18"])
def test_a_prefix_timm_does_not_take_is_an_unknown_architecture(name):
    # any name with a ':' passed as "timm's to check"; timm's ValueError then read as "could not
    # obtain pretrained weights ... pass --no-pretrained", with --no-pretrained given
    with pytest.raises(ModelError) as err:
        check_arch(name)
    assert str(err.value) == (
        f"unknown architecture {name!r}: timm takes a prefixed name only as hf-hub:<repo> or "
        "local-dir:<folder>; or use a plain timm model name (timm.list_models())"
    )
    with pytest.raises(ModelError, match=rf"^cannot build {name!r} \(ValueError: "):
        create_backbone(name, 3, pretrained=False)


def test_a_local_dir_architecture_names_a_folder_that_exists(tmp_path):
    (tmp_path / "net").mkdir()
    check_arch(f"local-dir:{tmp_path / 'net'}")
    with pytest.raises(ModelError, match=rf"^--arch 'local-dir:{tmp_path}/gone': folder {tmp_path}/gone not found; "):
        check_arch(f"local-dir:{tmp_path / 'gone'}")


@pytest.mark.parametrize("name, channels, pooled", [("resnet50", 2048, 2048), ("vgg13", 512, 4096)])
def test_the_papers_other_teachers_pool_to_their_head_width(name, channels, pooled):
    # VGG's pre-logits MLP makes its pooled width (what DAIT projects) wider than its map
    m = create_backbone(name, num_classes=5, pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    fmap = m.forward_features(x)
    assert fmap.shape[:2] == (2, channels)
    assert m.forward_head(fmap, pre_logits=True).shape == (2, pooled) and m.num_features == pooled
    assert m(x).shape == (2, 5) and m.classifier.in_features == pooled


def test_any_timm_name_and_unknown_name():
    assert create_backbone("resnet10t", 3, pretrained=False).num_features == 512
    with pytest.raises(ModelError, match="unknown architecture 'resnet_nope'.*regnety_016"):
        create_backbone("resnet_nope", 3, pretrained=False)


def test_local_weights_file(tmp_path):
    src = create_backbone("resnet18", 10, pretrained=False)
    torch.save(src.network_state_dict(), tmp_path / "r18.pth")
    m = create_backbone("resnet18", 4, pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(m.net.conv1.weight, src.net.conv1.weight)
    assert m.classifier.out_features == 4
    sn = create_backbone("shufflenetv2", 10, pretrained=False)
    torch.save(sn.network_state_dict(), tmp_path / "sn.pth")
    m = create_backbone("shufflenetv2", 3, pretrained=str(tmp_path / "sn.pth"))
    assert torch.equal(m.net.conv1[0].weight, sn.net.conv1[0].weight)
    with pytest.raises(ModelError, match="not found"):
        create_backbone("resnet18", 4, pretrained=str(tmp_path / "missing.pth"))
    # a ShuffleNet file that lacks part of the body is refused, not loaded in part
    torch.save({k: v for k, v in sn.network_state_dict().items() if not k.startswith("stage4.")}, tmp_path / "cut.pth")
    with pytest.raises(ModelError, match=r"weights for shufflenet_v2_x1_0 do not fit: missing \['stage4"):
        create_backbone("shufflenetv2", 3, pretrained=str(tmp_path / "cut.pth"))


def test_a_weights_file_that_does_not_fit_is_refused_in_one_line(tmp_path, caplog):
    # a trained network's values: none equals its fresh init
    src = {
        k: v + 0.5 if v.is_floating_point() else v
        for k, v in create_backbone("resnet18", 10, False).network_state_dict().items()
    }
    files = {
        "noise.pth": None,  # random bytes: torch.load raised UnpicklingError, advising weights_only=False
        "empty.safetensors": None,  # safetensors raised its own SafetensorError
        "lightning.ckpt": {"state_dict": {f"model.{k}": v for k, v in src.items()}},  # loaded nothing, silently
    }
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "empty.safetensors").write_bytes(b"{}")
    torch.save(files["lightning.ckpt"], tmp_path / "lightning.ckpt")
    said = {}
    for name in files:
        for arch in ("resnet18", "shufflenetv2"):
            with pytest.raises(ModelError) as err:
                create_backbone(arch, 4, pretrained=str(tmp_path / name))
            said[(name, arch)] = str(err.value)
    unreadable = "cannot be read (not tensors torch loads with weights_only=True: damaged, not a torch file, or a"
    assert said[("noise.pth", "resnet18")] == said[("noise.pth", "shufflenetv2")]
    assert said[("noise.pth", "resnet18")].startswith(f"weights file {tmp_path / 'noise.pth'} {unreadable}")
    assert "weights_only=False" not in said[("noise.pth", "resnet18")]
    assert said[("empty.safetensors", "resnet18")].startswith(
        f"weights file {tmp_path / 'empty.safetensors'} cannot be read (SafetensorError: "
    )
    assert said[("lightning.ckpt", "resnet18")] == (
        f"weights file {tmp_path / 'lightning.ckpt'} set none of resnet18.tv_in1k's parameters (its keys, e.g. "
        "'model.conv1.weight', 'model.bn1.weight', are not resnet18.tv_in1k's, e.g. 'conv1.weight'); pass a "
        "state dict of resnet18.tv_in1k in timm's layout"
    )
    assert said[("lightning.ckpt", "shufflenetv2")].startswith("weights for shufflenet_v2_x1_0 do not fit: missing")
    # a file that fits in part loads, with a warning naming how much
    torch.save(dict(list(src.items())[:3]), tmp_path / "part.pth")
    before = torch.get_rng_state()
    m = create_backbone("resnet18", 4, pretrained=str(tmp_path / "part.pth"))
    next_draw = torch.rand(3)
    assert torch.equal(m.net.conv1.weight, src["conv1.weight"]) and torch.equal(m.net.bn1.bias, src["bn1.bias"])
    assert "set 3 of resnet18.tv_in1k's 60 parameters; the rest keep their random init" in caplog.text
    # the check's second build leaves the caller's RNG where one build leaves it (runs stay seeded alike)
    torch.set_rng_state(before)
    plain = create_backbone("resnet18", 4, pretrained=False)
    assert torch.equal(torch.rand(3), next_draw) and torch.equal(
        m.net.layer1[0].conv1.weight, plain.net.layer1[0].conv1.weight
    )


def test_offline_download_names_the_options(monkeypatch):
    import timm.models._builder as builder

    def offline(*a, **k):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(ModelError, match="--weights PATH.*--no-pretrained"):
        create_backbone("resnet18", 4, pretrained=True)
    import torchvision.models as tvm

    monkeypatch.setattr(tvm.ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(ModelError, match="--no-pretrained"):
        create_backbone("shufflenetv2", 4, pretrained=True)
