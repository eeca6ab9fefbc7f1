"""Training augmentation and normalisation (torchvision transforms v2, on uint8 tensors)."""
from __future__ import annotations

import torch
from torchvision.transforms import v2


def train_transform(augment: dict, size: int) -> v2.Transform:
    """Weak augmentation for plain stage-1 training: padded random crop, optional flips."""
    steps: list[v2.Transform] = []
    if augment.get("crop_padding", 0):
        steps.append(v2.RandomCrop(size, padding=augment["crop_padding"], padding_mode="reflect"))
    if augment.get("hflip", False):
        steps.append(v2.RandomHorizontalFlip())
    if augment.get("vflip", False):
        steps.append(v2.RandomVerticalFlip())
    return v2.Compose(steps) if steps else v2.Identity()


def channel_stats(images_nhwc) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC images, on the [0, 1] scale."""
    x = torch.as_tensor(images_nhwc).float().div_(255.0)
    flat = x.reshape(-1, x.shape[-1])
    std = flat.std(dim=0).clamp_min(1e-3)
    return flat.mean(dim=0).tolist(), std.tolist()
