"""Loading a stage-1 checkpoint: tensors and plain metadata only, read with weights_only=True.

Kept apart from the trainer so that the consumers (feature extraction, encoder fine-tuning)
start without the training stack's imports (torchvision, scikit-learn).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .network import build_network


def load_checkpoint(path, device="cpu"):
    """(network, meta) from a stage-1 checkpoint, loaded with weights_only=True."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"stage-1 checkpoint {str(p)!r} not found")
    ckpt = torch.load(p, map_location=device, weights_only=True)
    meta = ckpt["meta"]
    net = build_network({**meta["model"], "pretrained": None}, meta["in_channels"],
                        meta["num_classes"], meta["mean"], meta["std"])
    net.load_state_dict(ckpt["state_dict"])
    return net.to(device), meta
