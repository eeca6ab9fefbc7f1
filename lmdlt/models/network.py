"""The network every method trains: normalisation + encoder + linear classifier."""
from __future__ import annotations

import torch
from torch import nn

from .encoders import build_encoder


class Normalize(torch.nn.Module):
    """uint8 NCHW -> float, scaled to [0, 1] then standardised with training-split statistics."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


class Network(nn.Module):
    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int,
                 mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.encoder = encoder
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def features(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalize(x_uint8))

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x_uint8))


def build_network(model_cfg: dict, in_channels: int, num_classes: int,
                  mean: list[float], std: list[float]) -> Network:
    kwargs = {k: v for k, v in model_cfg.items() if k != "arch"}
    encoder, dim = build_encoder(model_cfg["arch"], in_channels, **kwargs)
    return Network(encoder, dim, num_classes, mean, std)
