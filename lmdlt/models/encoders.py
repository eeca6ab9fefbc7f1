"""Encoders behind a registry. Each returns (module mapping NCHW -> (N, C) features, C)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., tuple[nn.Module, int]]] = {}


def register_encoder(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def available_encoders() -> list[str]:
    return sorted(_REGISTRY)


def build_encoder(arch: str, in_channels: int, **kwargs) -> tuple[nn.Module, int]:
    if arch not in _REGISTRY:
        raise ValueError(f"model.arch: unknown encoder {arch!r} (known: {', '.join(available_encoders())})")
    return _REGISTRY[arch](in_channels=in_channels, **kwargs)


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
                  pretrained: str | None = None, **_) -> tuple[nn.Module, int]:
    net = SmallResNet(in_channels, width, blocks_per_stage)
    if pretrained:
        _load_pretrained(net, pretrained)
    return net, net.out_dim


@register_encoder("resnet18")
def _resnet18(in_channels: int, stem: str = "imagenet", pretrained: str | None = None,
              **_) -> tuple[nn.Module, int]:
    """torchvision resnet18 without its fc; ``stem: cifar`` swaps in a 3x3 conv, no max-pool."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if pretrained:  # ImageNet weights from a local file only: nothing is downloaded
        _load_pretrained(net, pretrained, drop_prefixes=("fc.",))
    if stem == "cifar":
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif stem == "imagenet":
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    else:
        raise ValueError(f"model.stem: unknown stem {stem!r} (known: imagenet, cifar)")
    net.fc = nn.Identity()
    return net, 512


def _load_pretrained(net: nn.Module, path: str, drop_prefixes: tuple[str, ...] = ()) -> None:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"model.pretrained: weights file {str(p)!r} not found. Pretrained weights are never "
            "downloaded; place the file there (e.g. torchvision's resnet18-f37072fd.pth) or set "
            "model.pretrained to null.")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(list(net.state_dict())):
        raise ValueError(f"model.pretrained: {p} does not match the encoder "
                         f"(unexpected keys {unexpected[:3]}, missing {missing[:3]})")
