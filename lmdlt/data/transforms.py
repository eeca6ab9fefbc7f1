"""Training augmentation and normalisation (torchvision transforms v2, on uint8 tensors).

torchvision is imported only when a transform step needs it: importing torchvision imports
``torch._dynamo`` (~1 s on the CPU VM), which a job without augmentation (feature extraction
without train views, evaluation, the closed-form stage-2 methods) never needs otherwise.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class Identity:
    """The no-augmentation transform (what ``v2.Identity`` does, without importing torchvision);
    a module-level class, so that it pickles into DataLoader workers."""

    def __call__(self, *inputs: Any) -> Any:
        return inputs[0] if len(inputs) == 1 else inputs

    def __repr__(self) -> str:
        return "Identity()"


def train_transform(augment: dict, size: int) -> Callable[[torch.Tensor], Any]:
    """Weak augmentation for plain stage-1 training: padded random crop, optional flips."""
    steps: list = []
    if augment.get("crop_padding", 0) or augment.get("hflip", False) or augment.get("vflip", False):
        from torchvision.transforms import v2

        if augment.get("crop_padding", 0):
            steps.append(v2.RandomCrop(size, padding=augment["crop_padding"], padding_mode="reflect"))
        if augment.get("hflip", False):
            steps.append(v2.RandomHorizontalFlip())
        if augment.get("vflip", False):
            steps.append(v2.RandomVerticalFlip())
        return v2.Compose(steps)
    return Identity()


def channel_stats(images_nhwc, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (unbiased) of uint8 NHWC images, on the [0, 1] scale; the std at
    least 1e-3. Accumulated in float64 over ``chunk`` images at a time: no float copy of the
    whole set (20,000 RGB images at 224 px: 12 GB in float32)."""
    x = torch.as_tensor(images_nhwc)
    c = x.shape[-1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    n = 0
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].reshape(-1, c).double()
        total += part.sum(0)
        squares += (part * part).sum(0)
        n += part.shape[0]
    mean = total / n
    var = (squares - n * mean * mean) / max(n - 1, 1)
    std = (var.clamp_min(0).sqrt() / 255.0).clamp_min(1e-3)
    return (mean / 255.0).tolist(), std.tolist()
