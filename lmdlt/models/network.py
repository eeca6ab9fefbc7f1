"""The network every method trains: normalisation + encoder + linear classifier."""
from __future__ import annotations

import torch
from torch import nn

from .encoders import build_encoder
from .weights import channel_normalisation


class Normalize(torch.nn.Module):
    """uint8 NCHW -> float, scaled to [0, 1] then standardised with (mean, std): the training
    split's statistics, or the pretrained weights' own."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


class Network(nn.Module):
    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int,
                 mean: list[float], std: list[float], image_size: int | None = None) -> None:
        super().__init__()
        self.image_size = image_size  # the size it was built for (a ViT's)
        self.normalize = Normalize(mean, std)
        self.encoder = encoder
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        #: encoder submodules kept in eval mode by ``train()`` (frozen stages and BatchNorm
        #: statistics, lmdlt.models.finetune); names, so that replaced modules (SyncBatchNorm)
        #: are found again
        self.eval_modules: list[str] = []

    def features(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalize(x_uint8))

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x_uint8))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for name in self.eval_modules:
                self.encoder.get_submodule(name).eval()
        return self

    @property
    def input_normalisation(self) -> tuple[list[float], list[float]]:
        return self.normalize.mean.flatten().tolist(), self.normalize.std.flatten().tolist()

    @property
    def weights_info(self) -> dict | None:
        """The pretrained weights the encoder was built with (source, file, sha256, mean, std)."""
        spec = getattr(self.encoder, "lmdlt_spec", None)
        return spec.weights if spec is not None else None


def build_network(model_cfg: dict, in_channels: int, num_classes: int,
                  mean: list[float], std: list[float], image_size: int | None = None,
                  load_weights: bool = True) -> Network:
    """The network of a ``model`` config. ``mean``/``std``: the input normalisation (the
    training split's statistics); with pretrained weights the weights' own (mean, std) replace
    them (``net.input_normalisation`` says which were used; record it with the checkpoint).
    ``image_size`` sizes a ViT; ``load_weights=False`` builds it without reading pretrained
    weights (a checkpoint's weights replace them, its recorded (mean, std) are given)."""
    kwargs = {k: v for k, v in model_cfg.items() if k != "arch"}
    encoder, dim = build_encoder(model_cfg["arch"], in_channels, image_size=image_size,
                                 load_weights=load_weights, **kwargs)
    spec = getattr(encoder, "lmdlt_spec", None)
    if load_weights and model_cfg.get("pretrained") and spec is not None and spec.normalisation:
        mean, std = channel_normalisation(*spec.normalisation, in_channels)
    return Network(encoder, dim, num_classes, mean, std, image_size)
