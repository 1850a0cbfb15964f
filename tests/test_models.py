"""One backbone interface over timm and torchvision."""

import pytest
import torch

from dait_cache.errors import ModelError
from dait_cache.models import create_backbone, feature_shape

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
    assert feature_shape(m, 224) == (EXPECTED[name], 7, 7)


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
