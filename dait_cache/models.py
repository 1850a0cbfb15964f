"""Backbones for teachers and students: one factory, one interface over timm and torchvision.

Every backbone offers ``forward_features(x) -> map (B, C, h, w)``,
``forward_head(map, pre_logits=True) -> pooled (B, num_features)``, ``classifier(pooled) -> logits``,
``num_features`` (the pooled width, which may differ from the map's channels: see
:func:`feature_shape`), and the normalisation constants of its pretrained weights (``mean``, ``std``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from torch import nn

from .config import prefixed_path
from .errors import ModelError, first_line, load_failure

log = logging.getLogger(__name__)

# Short names users type -> the model they mean.
ALIASES: dict[str, str] = {
    "resnet18": "resnet18.tv_in1k",
    "mobilenetv2": "mobilenetv2_100",
    "efficientnet_b0": "efficientnet_b0",
    "shufflenetv2": "shufflenet_v2_x1_0",
    "regnety_016": "regnety_016",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PretrainedArg = bool | str | os.PathLike


def _offline(name: str, exc: Exception, hub_unreachable: bool = False) -> ModelError:
    if hub_unreachable:
        return ModelError(
            f"cannot get pretrained weights for {name!r}: the Hugging Face Hub cannot be reached "
            "from this machine (or HF_HUB_OFFLINE is set) and they are not in its local cache; "
            "pass --weights PATH (a local state dict) or --no-pretrained"
        )
    return ModelError(
        f"could not obtain pretrained weights for {name!r} ({type(exc).__name__}: {exc}); "
        "if this machine is offline pass --weights PATH (a local state dict) or "
        "--no-pretrained"
    )


class Backbone(nn.Module):
    """A network split into features / pooling / classifier.

    ``net`` holds no classifier (it was taken out and lives in ``classifier``), so every
    parameter is registered once and each one is used by ``forward``: DDP can run with
    ``find_unused_parameters=False``. ``classifier_name`` is where the network kept it.
    """

    def __init__(
        self,
        name: str,
        features: Callable,
        head: Callable,
        classifier: nn.Module,
        net: nn.Module,
        num_features: int,
        mean,
        std,
        classifier_name: str = "fc",
    ):
        super().__init__()
        self.name = name
        self.net = net
        self._features, self._head = features, head
        self.classifier = classifier
        self.classifier_name = classifier_name
        self.num_features = num_features
        self.mean, self.std = tuple(mean), tuple(std)

    def network_state_dict(self) -> dict:
        """The state dict in the network's own layout (timm / torchvision keys, classifier included)."""
        state = dict(self.net.state_dict())
        state.update({f"{self.classifier_name}.{k}": v for k, v in self.classifier.state_dict().items()})
        return state

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        pooled = self._head(x)
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), pre_logits=False)


def _load_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise ModelError(f"weights file {path} not found; pass an existing file to --weights")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file, a pickle, a foreign format: one line, not torch's advice
        raise ModelError(
            f"weights file {path} cannot be read ({load_failure(exc)}); pass a state dict "
            "(.pth, .bin or .safetensors) for --weights"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def _check_loaded(name: str, num_classes: int, net: nn.Module, init: torch.Tensor, path: str, keys: list[str]) -> None:
    """Refuse a weights file that set none of the network's parameters. timm loads a file whose
    classifier does not fit non-strictly, so a file of other keys (a Lightning checkpoint's
    ``model.`` prefix, another network) loaded nothing, silently: training then starts from
    random weights. The same network drawn from the same RNG state shows which parameters moved;
    ``keys`` are the file's first keys, named when nothing fits."""
    import timm

    torch.set_rng_state(init)  # the same draws again: the caller's RNG ends where one build leaves it
    fresh = dict(timm.create_model(name, pretrained=False, num_classes=num_classes).named_parameters())
    head = net.pretrained_cfg.get("classifier", "fc") if net.pretrained_cfg else "fc"
    body = [(k, p) for k, p in net.named_parameters() if not k.startswith(f"{head}.")]
    moved = sum(not torch.equal(p, fresh[k]) for k, p in body)
    if body and moved == 0:
        raise ModelError(
            f"weights file {path} set none of {name}'s parameters (its keys, e.g. {', '.join(map(repr, keys))}, "
            f"are not {name}'s, e.g. {body[0][0]!r}); pass a state dict of {name} in timm's layout"
        )
    if moved < len(body):
        log.warning("weights file %s set %d of %s's %d parameters; the rest keep their random init",
                    path, moved, name, len(body))  # fmt: skip


def _timm(name: str, num_classes: int, pretrained: PretrainedArg) -> Backbone:
    import timm

    kw = {}
    if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
        if not os.path.isfile(pretrained):
            raise ModelError(f"weights file {pretrained} not found; pass an existing file to --weights")
        kw["pretrained_cfg_overlay"] = {"file": str(pretrained)}
    offline = False
    if pretrained is True:
        from .hub import prefer_offline

        offline = prefer_offline()
    if kw:
        keys = list(_load_state(str(pretrained)))[:2]  # unreadable: one line, before timm's own attempt
        init = torch.get_rng_state()
    try:
        net = timm.create_model(name, pretrained=bool(pretrained), num_classes=num_classes, **kw)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise _unknown_arch(name) from None
        if kw:  # a local file that does not fit: nothing was downloaded
            raise ModelError(
                f"weights file {pretrained} does not fit {name} ({load_failure(exc)}); pass a state dict of {name}"
            ) from None
        raise _offline(name, exc, offline) from None
    except (OSError, ConnectionError, ValueError) as exc:
        if not pretrained:  # no weights were asked for: the name itself, or a hub name's config
            raise ModelError(f"cannot build {name!r} ({type(exc).__name__}: {first_line(exc)})") from None
        raise _offline(name, exc, offline) from None
    if kw:
        _check_loaded(name, num_classes, net, init, str(pretrained), keys)
    cfg = net.pretrained_cfg or {}
    classifier = net.get_classifier()
    net.reset_classifier(0)  # the Backbone owns the classifier; the net keeps no second copy
    # The pooled width is what forward_head(pre_logits=True) returns: wider than the map for
    # models with a pre-logits MLP (VGG: 512 channels, 4096 pooled).
    pooled = getattr(net, "head_hidden_size", None) or net.num_features
    return Backbone(
        name,
        net.forward_features,
        lambda m: net.forward_head(m, pre_logits=True),
        classifier,
        net,
        pooled,
        cfg.get("mean", IMAGENET_MEAN),
        cfg.get("std", IMAGENET_STD),
        classifier_name=cfg.get("classifier", "fc"),
    )


def _shufflenet(name: str, num_classes: int, pretrained: PretrainedArg) -> Backbone:
    from torchvision import models

    net = models.shufflenet_v2_x1_0()
    if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
        state = _load_state(str(pretrained))
    elif pretrained:
        try:
            state = models.ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # urllib's offline errors come in several types
            raise _offline(name, exc) from None
    else:
        state = None
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise ModelError(f"weights for {name} do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    classifier = nn.Linear(net.fc.in_features, num_classes)
    net.fc = nn.Identity()  # the Backbone owns the classifier; the net keeps no second copy

    def features(x):
        x = net.maxpool(net.conv1(x))
        return net.conv5(net.stage4(net.stage3(net.stage2(x))))

    return Backbone(
        name,
        features,
        lambda m: m.mean((2, 3)),
        classifier,
        net,
        classifier.in_features,
        IMAGENET_MEAN,
        IMAGENET_STD,
        classifier_name="fc",
    )


# Builders that are not timm models; everything else goes to timm.
TORCHVISION_BUILDERS: dict[str, Callable[[str, int, PretrainedArg], Backbone]] = {
    "shufflenet_v2_x1_0": _shufflenet,
}


def resolve_arch(name: str) -> str:
    return ALIASES.get(name, name)


def _unknown_arch(name: str) -> ModelError:
    return ModelError(
        f"unknown architecture {name!r}; use one of {', '.join(ALIASES)} or any timm model name (timm.list_models())"
    )


# The sources timm takes as a prefix of a model name (``hf-hub:timm/resnet18.a1_in1k``).
TIMM_SOURCES = ("hf-hub", "local-dir")


def check_arch(name: str) -> None:
    """Refuse a name no builder knows before any work (what follows a timm source prefix, a hub
    repository or a folder, is timm's to check)."""
    import timm

    arch = resolve_arch(name)
    source, colon, rest = arch.partition(":")
    if colon:
        if rest and (folder := prefixed_path(arch, "local-dir")) is not None and not folder.is_dir():
            raise ModelError(
                f"--arch {name!r}: folder {rest} not found; local-dir: takes a folder holding a timm "
                "model's config.json and weights (what timm.models.save_for_hf writes)"
            )
        if source in TIMM_SOURCES and rest:
            return
        raise ModelError(
            f"unknown architecture {name!r}: timm takes a prefixed name only as hf-hub:<repo> or "
            "local-dir:<folder>; or use a plain timm model name (timm.list_models())"
        )
    if arch in TORCHVISION_BUILDERS or timm.is_model(arch):
        return
    raise _unknown_arch(name)


def create_backbone(name: str, num_classes: int, pretrained: PretrainedArg = True) -> Backbone:
    """Build ``name`` (an alias, a torchvision builder or any timm model) for ``num_classes``.

    ``pretrained`` is True (hub weights), False (random init) or a path to a local weights file.
    """
    arch = resolve_arch(name)
    builder = TORCHVISION_BUILDERS.get(arch, _timm)
    return builder(arch, num_classes, pretrained)


def _dummy_forward(model: Backbone, image_size: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` (a forward of ``model``) on one zero image, in eval mode without grad; the mode is restored."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return fn(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        model.train(was)


def check_view_size(model: Backbone, image_size: int) -> None:
    """Refuse a model that cannot classify ``image_size`` views (a ViT built for 224 px, a net
    that pools a 32 px view to nothing) before the run folder claims a start."""
    try:
        _dummy_forward(model, image_size, model)
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = first_line(exc).rstrip(".")
        raise ModelError(
            f"{model.name} cannot take this cache's {image_size}x{image_size} views ({reason}); "
            "choose another --arch, or encode a cache at the size it needs (encode --image-size)"
        ) from None


def feature_shape(model: Backbone, image_size: int) -> tuple[int, int, int]:
    """(C, h, w) of ``forward_features`` at ``image_size`` (one dummy forward, no grad)."""
    return tuple(_dummy_forward(model, image_size, model.forward_features).shape[1:])
