"""Encoders: NCHW images (normalised) -> (N, C) features, from the field's libraries.

``model.arch`` names one of:

* ``small_resnet``: lmdlt's CIFAR-style ResNet for tiny images (3 stages, width w, 2w, 4w);
* a torchvision classification model by name (``resnet18``, ``resnet50``, ``convnext_tiny``,
  ``efficientnet_b0``, ``vit_b_16``, ...: ``torchvision.models.list_models(module=
  torchvision.models)``), built with ``torchvision.models.get_model``;
* any timm model as ``timm:<name>`` (``timm.list_models()``), built with ``timm.create_model``.

The encoder is the model without its classifier: torchvision's last linear layer (and the
dropout beside it in the head) replaced by the identity, timm's model with ``num_classes=0``
and ``drop_rate=0`` (``forward_head(..., pre_logits=True)``). The feature dimension is read
from the model (the removed layer's ``in_features``; timm's ``head_hidden_size`` or
``num_features``). ``model.kwargs`` go to the constructor (``get_model`` / ``create_model``),
e.g. ``{drop_path_rate: 0.1}``, or a smaller ViT patch for small images (``{patch_size: 4}``).
A ViT is built for the experiment's image size (torchvision ``image_size``, timm ``img_size``;
pretrained position embeddings are interpolated). A first convolution for other than 3 input
channels takes the pretrained RGB weights summed (grey) or repeated (timm's
``adapt_input_conv``).

``stem`` (ResNets only, torchvision's and timm's): ``imagenet`` keeps the 7x7 stride-2
convolution and the max-pool; ``cifar`` replaces them by a 3x3 stride-1 convolution and no
pooling, for small images. Absent: ``imagenet`` with pretrained weights (the weights' own stem),
``cifar`` without (training from scratch on small images, which the ImageNet stem would
shrink fourfold before the first block). ``small_resnet`` is CIFAR-style by construction.

Each encoder carries a plain attribute ``lmdlt_spec`` (:class:`EncoderSpec`, not part of the
state dict) saying where its spatial feature map is (:func:`register_feature_map_hook`, used by
LCReg), what its stages are (frozen stages when fine-tuning, :mod:`lmdlt.models.finetune`), and
which weights were loaded.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import weights as W

_REGISTRY: dict[str, Callable[..., tuple[nn.Module, int]]] = {}
TIMM_PREFIX = "timm:"


@dataclass
class FeatureMap:
    """Where an encoder's last spatial feature map (or token sequence) is: the ``input`` or
    ``output`` of the submodule ``module``; ``layout`` ``nchw``, ``nhwc`` or ``tokens``
    ((N, L, C), of which the first ``prefix_tokens`` are class/register tokens)."""

    module: str
    where: str = "input"
    layout: str = "nchw"
    prefix_tokens: int = 0


@dataclass
class EncoderSpec:
    arch: str
    feature_map: FeatureMap | None = None
    #: parameter-name prefixes of each stage, the stem first (frozen stages)
    stages: list[list[str]] | None = None
    #: the loaded pretrained weights: source, file, sha256, mean, std (None: random init)
    weights: dict | None = None
    #: (mean, std) the architecture's pretrained weights expect, for a local weights file
    normalisation: tuple[list[float], list[float]] | None = None
    extra: dict = field(default_factory=dict)


def register_encoder(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def available_encoders() -> list[str]:
    """lmdlt's own encoders; torchvision's classification models and ``timm:<name>`` besides."""
    return sorted(_REGISTRY)


def describe_archs() -> str:
    return (f"{', '.join(available_encoders())}, a torchvision classification model (e.g. resnet18, "
            "resnet50, convnext_tiny, efficientnet_b0, vit_b_16) or timm:<name>")


def arch_problem(arch: str) -> str | None:
    """Why ``arch`` names no encoder, or None. A ``timm:<name>`` is checked against timm's
    registry only when timm is imported already (importing it costs seconds; the job that
    builds the model checks it)."""
    import sys

    if arch in _REGISTRY:
        return None
    if arch.startswith(TIMM_PREFIX):
        name = arch[len(TIMM_PREFIX):].split(".")[0]
        if not name:
            return "timm: needs a model name (timm:<name>, e.g. timm:efficientnet_lite0)"
        if "timm" in sys.modules:
            import timm

            if not timm.is_model(name):
                close = timm.list_models(f"*{name[:6]}*")[:8]
                return f"timm has no model {name!r}" + (f" (close: {', '.join(close)})" if close else "")
        return None
    if arch in torchvision_names():
        return None
    return f"unknown encoder {arch!r} (known: {describe_archs()})"


def check_arch(arch: str) -> None:
    """ValueError naming ``arch`` unless it names an encoder."""
    problem = arch_problem(arch)
    if problem:
        raise ValueError(f"model.arch: {problem}")


def torchvision_names() -> list[str]:
    """torchvision's classification models (``list_models(module=torchvision.models)``)."""
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


def build_encoder(arch: str, in_channels: int, image_size: int | None = None,
                  load_weights: bool = True, **kwargs) -> tuple[nn.Module, int]:
    """(encoder, feature dimension). ``load_weights=False`` builds the same module without
    reading any pretrained weights (a checkpoint's weights replace them)."""
    if arch in _REGISTRY:
        return _REGISTRY[arch](in_channels=in_channels, image_size=image_size,
                               load_weights=load_weights, **kwargs)
    if arch.startswith(TIMM_PREFIX):
        import timm  # noqa: F401  (so that check_arch checks the name against timm's registry)
    check_arch(arch)
    if arch.startswith(TIMM_PREFIX):
        return _timm_encoder(arch[len(TIMM_PREFIX):], in_channels, image_size, load_weights, **kwargs)
    return _torchvision_encoder(arch, in_channels, image_size, load_weights, **kwargs)


# --- lmdlt's small ResNet --------------------------------------------------------------------------

class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """CIFAR-style ResNet for tiny images: 3x3 stem without pooling, 3 stages (w, 2w, 4w)."""

    def __init__(self, in_channels: int, width: int, blocks_per_stage: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, cin = [], width
        for stage, mult in enumerate((1, 2, 4)):
            for b in range(blocks_per_stage):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(_BasicBlock(cin, width * mult, stride))
                cin = width * mult
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.layers(self.stem(x))), 1)


@register_encoder("small_resnet")
def _small_resnet(in_channels: int, width: int = 16, blocks_per_stage: int = 1,
                  pretrained: str | None = None, load_weights: bool = True, kwargs: dict | None = None,
                  **_) -> tuple[nn.Module, int]:
    if kwargs:
        raise ValueError(f"model.kwargs: small_resnet takes width and blocks_per_stage, not {sorted(kwargs)}")
    net = SmallResNet(in_channels, width, blocks_per_stage)
    stages = [["stem"]] + [[f"layers.{s * blocks_per_stage + b}" for b in range(blocks_per_stage)]
                           for s in range(3)]
    spec = EncoderSpec("small_resnet", FeatureMap("pool"), stages)
    if pretrained == "imagenet":
        raise ValueError("model.pretrained: imagenet: small_resnet has no ImageNet weights (use a "
                         "torchvision or timm architecture, or a local weights file)")
    if pretrained and load_weights:
        state = W.read_state_dict(pretrained)
        _load_matching(net, state, pretrained)
        spec.weights = {"source": "file", "file": str(pretrained), "sha256": W.sha256_of(pretrained)}
    net.lmdlt_spec = spec
    return net, net.out_dim


def _load_matching(net: nn.Module, state: dict, where) -> None:
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(list(net.state_dict())):
        raise ValueError(f"model.pretrained: {where} does not match the encoder "
                         f"(unexpected keys {unexpected[:3]}, missing {missing[:3]})")


# --- torchvision -----------------------------------------------------------------------------------

def _is_resnet(model: nn.Module) -> bool:
    return isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool") \
        and hasattr(model, "layer1")


def _resolve_stem(model: nn.Module, stem: str | None, pretrained, arch: str) -> str | None:
    if stem not in (None, "imagenet", "cifar"):
        raise ValueError(f"model.stem: unknown stem {stem!r} (known: imagenet, cifar)")
    if not _is_resnet(model):
        if stem == "cifar":
            raise ValueError(f"model.stem: cifar applies to ResNets with the 7x7 convolution stem only "
                             f"(conv1, maxpool), not {arch} (leave stem out)")
        return None
    return stem or ("imagenet" if pretrained else "cifar")


def _cifar_stem(model: nn.Module, in_channels: int) -> None:
    """3x3 stride-1 first convolution, no max-pool (the CIFAR ResNet stem)."""
    model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """The first 3-channel convolution made an ``in_channels`` one (pretrained weights adapted)."""
    if in_channels == 3:
        return
    name, conv = next(((n, m) for n, m in model.named_modules()
                       if isinstance(m, nn.Conv2d) and m.in_channels == 3), (None, None))
    if conv is None:
        raise ValueError(f"cannot find the model's RGB input convolution to adapt to {in_channels} channels")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(W.adapt_input_conv(conv.weight, in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    model.set_submodule(name, new)


def _strip_classifier(model: nn.Module, num_classes: int) -> int:
    """Replace the classifier (the last linear layer with ``num_classes`` outputs, and dropout
    beside it in the same head) by the identity; returns its input dimension."""
    name = next((n for n, m in reversed(list(model.named_modules()))
                 if isinstance(m, nn.Linear) and m.out_features == num_classes), None)
    if name is None:
        raise ValueError(f"cannot find the classifier of {type(model).__name__}")
    dim = model.get_submodule(name).in_features
    model.set_submodule(name, nn.Identity())
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if isinstance(parent, nn.Sequential):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                parent.set_submodule(child_name, nn.Identity())
    return dim


def _torchvision_feature_map(model: nn.Module) -> FeatureMap | None:
    from torchvision.models import VisionTransformer

    if isinstance(model, VisionTransformer):
        return FeatureMap("encoder", "output", "tokens", prefix_tokens=1)
    pools = [n for n, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    return FeatureMap(pools[-1]) if pools else None


def _torchvision_stages(model: nn.Module) -> list[list[str]] | None:
    from torchvision.models import VisionTransformer

    if _is_resnet(model):
        return [["conv1", "bn1"]] + [[f"layer{i}"] for i in range(1, 5) if hasattr(model, f"layer{i}")]
    if isinstance(model, VisionTransformer):
        return ([["conv_proj", "class_token", "encoder.pos_embedding"]]
                + [[f"encoder.layers.{n}"] for n, _ in model.encoder.layers.named_children()]
                + [["encoder.ln"]])
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [[f"features.{n}"] for n, m in features.named_children()
                if any(True for _ in m.parameters())]
    return None


def _torchvision_encoder(name: str, in_channels: int, image_size: int | None, load_weights: bool,
                         stem: str | None = None, pretrained: str | None = None,
                         kwargs: dict | None = None, **_) -> tuple[nn.Module, int]:
    from torchvision.models import get_model

    kw = dict(kwargs or {})
    num_classes = kw.pop("num_classes", 1000)
    if name.startswith("vit_") and image_size:
        kw.setdefault("image_size", image_size)
    model = get_model(name, weights=None, num_classes=num_classes, **kw)
    info = None
    if pretrained and load_weights:
        if pretrained == "imagenet":
            state, info = W.torchvision_state_dict(name)
        else:
            state = W.read_state_dict(pretrained)
            info = {"source": "file", "file": str(pretrained), "sha256": W.sha256_of(pretrained)}
        if "image_size" in kw and "encoder.pos_embedding" in state:  # a ViT at another size
            from torchvision.models.vision_transformer import interpolate_embeddings

            state = interpolate_embeddings(kw["image_size"], model.patch_size, state)
        if num_classes != 1000:  # the ImageNet head does not fit; it is removed below anyway
            head = {k for k, v in model.state_dict().items() if k in state and v.shape != state[k].shape}
            state = {k: v for k, v in state.items() if k not in head}
        model.load_state_dict(state, strict=num_classes == 1000)
    stem = _resolve_stem(model, stem, pretrained, name)
    _adapt_first_conv(model, in_channels)
    if stem == "cifar":
        _cifar_stem(model, in_channels)
    dim = _strip_classifier(model, num_classes)
    if info is not None and "mean" not in info:
        info["mean"], info["std"] = W.torchvision_normalisation(name)
    model.lmdlt_spec = EncoderSpec(
        name, _torchvision_feature_map(model), _torchvision_stages(model), info,
        W.torchvision_normalisation(name) if pretrained else None, {"stem": stem})
    return model, dim


# --- timm ------------------------------------------------------------------------------------------

class TimmEncoder(nn.Module):
    """A timm model as an encoder: ``forward_head(forward_features(x), pre_logits=True)``; the
    feature map passes through ``tap`` (an identity) so that a hook can see it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.tap(self.model.forward_features(x)), pre_logits=True)


def _create_timm(name: str, kw: dict, image_size: int | None):
    import timm

    if image_size and "img_size" not in kw:
        try:
            return timm.create_model(name, img_size=image_size, **kw)
        except TypeError as e:  # a model without a fixed input size (CNNs)
            if "img_size" not in str(e):
                raise
    return timm.create_model(name, **kw)


def _timm_encoder(name: str, in_channels: int, image_size: int | None, load_weights: bool,
                  stem: str | None = None, pretrained: str | None = None,
                  kwargs: dict | None = None, **_) -> tuple[nn.Module, int]:
    import timm

    kw = {"drop_rate": 0.0, **(kwargs or {}), "num_classes": 0, "in_chans": in_channels}
    base = name.split(".")[0]
    info = None
    lite0 = W.lite0_package_file() if (pretrained == "imagenet" and base in W.LITE0_ARCHS) else None
    if pretrained and load_weights and lite0 is None:
        if pretrained == "imagenet":
            try:
                model = _create_timm(name, {**kw, "pretrained": True}, image_size)
            except (OSError, ValueError, RuntimeError) as e:
                if "huggingface" not in type(e).__module__ and not isinstance(e, OSError):
                    raise
                raise W.timm_unavailable(name, e) from None
            cfg = model.pretrained_cfg
            info = {"source": f"timm {cfg.get('hf_hub_id') or name}", "file": None, "sha256": None}
        else:
            path = str(pretrained)
            state = W.read_state_dict(path)  # clear error when missing; lukemelas layout below
            if base in W.LITE0_ARCHS and "_conv_stem.weight" in state:
                model = _create_timm(name, kw, image_size)
                _load_lite0(model, state, in_channels, path)
            else:
                model = _create_timm(name, {**kw, "pretrained": True,
                                            "pretrained_cfg_overlay": {"file": path}}, image_size)
            info = {"source": "file", "file": path, "sha256": W.sha256_of(path)}
    else:
        model = _create_timm(name, kw, image_size)
        if lite0 is not None and load_weights:
            _load_lite0(model, W.read_state_dict(lite0), in_channels, lite0)
            info = {"source": f"{W.LITE0_PACKAGE} (TF EfficientNet-Lite0 ImageNet weights)",
                    "file": str(lite0), "sha256": W.sha256_of(lite0),
                    "mean": list(W.TFLITE_MEAN), "std": list(W.TFLITE_STD)}
    if lite0 is not None:
        expected = (list(W.TFLITE_MEAN), list(W.TFLITE_STD))
    else:
        cfg = model.pretrained_cfg or {}
        expected = (list(cfg.get("mean", W.IMAGENET_MEAN)), list(cfg.get("std", W.IMAGENET_STD)))
    if info is not None and "mean" not in info:
        info["mean"], info["std"] = expected
    stem = _resolve_stem(model, stem, pretrained, f"timm:{name}")
    if stem == "cifar":
        _cifar_stem(model, in_channels)
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    layout = "nhwc" if str(getattr(model, "output_fmt", "NCHW")).upper() == "NHWC" else "nchw"
    encoder = TimmEncoder(model)
    encoder.lmdlt_spec = EncoderSpec(
        f"timm:{name}", FeatureMap("tap", "output", layout, getattr(model, "num_prefix_tokens", 0)),
        _timm_stages(model), info, expected if pretrained else None, {"stem": stem})
    return encoder, int(dim)


def _load_lite0(model: nn.Module, state: dict, in_channels: int, where) -> None:
    """The lmdlt[lite0] extra's (lukemelas-layout) tensors onto timm's EfficientNet-Lite0, in
    order, shape for shape, strictly; the classifier ``_fc`` dropped (num_classes=0)."""
    state = OrderedDict((k, v) for k, v in state.items() if not k.startswith("_fc."))
    target = model.state_dict()
    if "_conv_stem.weight" in state:
        state["_conv_stem.weight"] = W.adapt_input_conv(state["_conv_stem.weight"], in_channels)
    model.load_state_dict(W.map_in_order(state, target, f"model.pretrained: {where}"), strict=True)


def _timm_stages(model: nn.Module) -> list[list[str]] | None:
    from timm.models import group_parameters

    try:
        groups = group_parameters(model, model.group_matcher(coarse=True))
    except (AttributeError, NotImplementedError):
        return None
    return [[f"model.{n}" for n in names] for _, names in sorted(groups.items())]


# --- the spatial feature map ---------------------------------------------------------------------

def feature_map_to_bcl(x: torch.Tensor, fm: FeatureMap) -> torch.Tensor:
    """A feature map as (N, C, L): spatial positions or (patch) tokens, class tokens dropped."""
    if x.dim() == 3:  # tokens (N, L, C)
        return x[:, fm.prefix_tokens:].transpose(1, 2)
    if x.dim() == 4:
        if fm.layout == "nhwc":
            x = x.permute(0, 3, 1, 2)
        return x.flatten(2)
    raise ValueError(f"unexpected feature map of shape {tuple(x.shape)}")


@torch.no_grad()
def feature_map_channels(net) -> int:
    """Channels of the encoder's spatial feature map (C of (N, C, L)), from one forward pass of
    a blank batch in eval mode (no statistic changes, no random draws) at ``net.image_size``."""
    seen = []
    handle = register_feature_map_hook(net.encoder, lambda m: seen.append(m.shape[1]))
    was_training = net.training
    try:
        net.eval()
        p = next(net.parameters())
        size = getattr(net, "image_size", None) or 32
        net.features(torch.zeros(2, net.normalize.mean.shape[1], size, size, dtype=torch.uint8,
                                 device=p.device))
    finally:
        handle.remove()
        net.train(was_training)
    return int(seen[-1])


def register_feature_map_hook(encoder: nn.Module, fn: Callable[[torch.Tensor], None]):
    """Call ``fn`` with the encoder's last spatial feature map, as (N, C, L) (spatial positions
    of a CNN, patch tokens of a ViT), on every forward; returns the hook handle. ValueError
    naming the architecture when it has none that lmdlt knows."""
    spec: EncoderSpec | None = getattr(encoder, "lmdlt_spec", None)
    if spec is None or spec.feature_map is None:
        arch = spec.arch if spec else type(encoder).__name__
        raise ValueError(f"the encoder {arch} has no spatial feature map lmdlt knows of (a CNN ending "
                         "in adaptive average pooling, a ViT's tokens, or any timm model)")
    fm = spec.feature_map
    module = encoder.get_submodule(fm.module)
    if fm.where == "input":
        return module.register_forward_pre_hook(lambda m, inputs: fn(feature_map_to_bcl(inputs[0], fm)))
    return module.register_forward_hook(lambda m, inputs, out: fn(feature_map_to_bcl(out, fm)))

