"""Training a linear classifier on fixed features, shared by the stage-2 methods."""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..data.samplers import make_sampler, set_sampler_epoch
from ..resume import ResumeState, rng_state, set_rng_state
from .guards import check_finite_grads, check_finite_terms

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
                 sampler: str, generator: torch.Generator, init: nn.Module | None = None,
                 sampler_options: dict | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 after_step: Callable[[nn.Module], None] | None = None,
                 resume: ResumeState | None = None, name: str = "linear classifier") -> nn.Module:
    """SGD with a cosine schedule; ``init`` None means a freshly initialised layer (any module
    mapping features to logits may be passed: only its trainable parameters are optimised).
    ``loss_fn(logits, labels, indices)`` replaces plain CE (``indices`` index ``features``, e.g.
    to look up a teacher's logits); ``after_step(layer)`` runs after every optimiser step (e.g. a
    weight-norm projection); ``sampler_options`` go to the sampler (class_aware: gamma).

    With ``resume``, the layer, optimiser, schedule and random states are saved after every
    epoch and a saved state of the same run is continued from (the result is bit-identical on
    CPU to an uninterrupted run); a non-finite loss or gradient stops with epoch, step and term
    (``name`` labels the messages)."""
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    layer = init if init is not None else nn.Linear(x.shape[1], num_classes)
    smp = make_sampler(labels, sampler, generator, epochs=epochs, **(sampler_options or {}))
    loader = DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=batch_size, sampler=smp)
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    steps = max(epochs * len(loader), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    start = 0
    saved = resume.load() if resume is not None else None
    if saved is not None:
        layer.load_state_dict(saved["layer"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], generator)
        start = saved["epoch"]
        log.info("resumed from %s: %s after epoch %d/%d", resume.path, name, start, epochs)
    trainable = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    for epoch in range(start, epochs):
        set_sampler_epoch(smp, epoch)
        total = n = 0.0
        for step, (xb, yb, ib) in enumerate(loader):
            logits = layer(xb)
            loss = F.cross_entropy(logits, yb) if loss_fn is None else loss_fn(logits, yb, ib)
            where = f"{name}: epoch {epoch + 1}, step {step + 1}"
            check_finite_terms({"loss" if loss_fn is None else "loss_fn": loss}, where)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            check_finite_grads(trainable, where)
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(layer)
            total += loss.item() * len(yb)
            n += len(yb)
        if resume is not None:
            resume.save({"epoch": epoch + 1, "layer": layer.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "rng": rng_state(generator)})
        log.info("epoch %d/%d loss %.4f", epoch + 1, epochs, total / max(n, 1))
    return layer
