"""Resizing of uint8 image batches (N, H, W, C), antialiased, with torchvision."""
from __future__ import annotations

import numpy as np


def resize_uint8(images: np.ndarray, size: int | None) -> np.ndarray:
    """Resize to ``size`` x ``size`` (None or the current size: unchanged)."""
    if size is None or images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images)
    # imported here: the sources importing this module are read by the workflow's parse (config
    # validation), which imports no torch (lmdlt/catalog.py)
    import torch
    from torchvision.transforms.v2 import functional as TF

    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    out = TF.resize(t, [size, size], antialias=True)
    return out.permute(0, 2, 3, 1).contiguous().numpy()
