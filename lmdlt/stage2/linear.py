"""Training a linear classifier on fixed features, shared by the stage-2 methods."""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..data.samplers import make_sampler

log = logging.getLogger("lmdlt.stage2")

LINEAR_PARAMS = {
    "epochs": {"type": "integer", "minimum": 1, "default": 10},
    "batch_size": {"type": "integer", "minimum": 1, "default": 128},
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
    "momentum": {"type": "number", "minimum": 0, "default": 0.9},
    "weight_decay": {"type": "number", "minimum": 0, "default": 5e-4},
}


def train_linear(features: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int,
                 batch_size: int, lr: float, momentum: float, weight_decay: float,
                 sampler: str, generator: torch.Generator, init: nn.Linear | None = None) -> nn.Linear:
    """SGD with a cosine schedule; ``init`` None means a freshly initialised layer."""
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    layer = init if init is not None else nn.Linear(x.shape[1], num_classes)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size,
                        sampler=make_sampler(labels, sampler, generator))
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = max(epochs * len(loader), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for epoch in range(epochs):
        total = n = 0.0
        for xb, yb in loader:
            loss = F.cross_entropy(layer(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(yb)
            n += len(yb)
        log.info("epoch %d/%d loss %.4f", epoch + 1, epochs, total / max(n, 1))
    return layer
