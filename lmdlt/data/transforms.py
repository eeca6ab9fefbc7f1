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


def channel_stats(images_nhwc) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC images, on the [0, 1] scale."""
    x = torch.as_tensor(images_nhwc).float().div_(255.0)
    flat = x.reshape(-1, x.shape[-1])
    std = flat.std(dim=0).clamp_min(1e-3)
    return flat.mean(dim=0).tolist(), std.tolist()
