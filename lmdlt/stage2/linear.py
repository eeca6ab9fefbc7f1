"""Training a linear classifier on fixed features, shared by the stage-2 methods.

Augmented views (``features.train_views`` N > 0): the references re-train the classifier on
augmented images every epoch. The runner hands the methods ``train["features"]`` as a
``ViewedFeatures`` (the clean features, carrying the N stored views); ``train_linear`` then
draws, at the start of every epoch and with the fit's generator, one view per training image
and trains that epoch on the drawn views (every sample of an image in that epoch is the same
view). ``train["logits"]`` is then the same values in a table of the runner's that
``train_linear`` overwrites in place, for the epoch, with the stage-1 classifier's logits of
the drawn views (and restores afterwards): a method that looks up a teacher's logits by image
index (``kd_rebalance``: ``torch.as_tensor(train["logits"])[idx]`` shares that memory) so
distils from the teacher's output on the same augmented view, as in the reference. With no
views (N = 0, a plain array) nothing is overwritten: the epoch trains on the clean features.
Methods that do not train through ``train_linear`` (NCM, tau-norm, logit adjustment, ...)
see the clean features.
"""
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
from ..divergence import DivergenceGuard
from ..resume import ResumeState, rng_state, set_rng_state
from .guards import check_finite_grads, check_finite_terms

log = logging.getLogger("lmdlt.stage2")

# shared by the methods training through train_linear; each gives their sources (with_sources)
LINEAR_PARAMS = {
    "epochs": {"type": "integer", "minimum": 1, "default": 10,
               "description": "passes over the training features"},
    "batch_size": {"type": "integer", "minimum": 1, "default": 128,
                   "description": "features per SGD step"},
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.1,
           "description": "starting SGD learning rate (cosine to 0 over the steps)"},
    "momentum": {"type": "number", "minimum": 0, "default": 0.9,
                 "description": "SGD momentum"},
    "weight_decay": {"type": "number", "minimum": 0, "default": 5e-4,
                     "description": "SGD weight decay"},
}


class ViewedFeatures(np.ndarray):
    """Clean training features (n, C), float32, carrying ``views`` (N, n, C) of the same images
    and optionally ``view_logits`` (N, n, K) with the ``logits_table`` (n, K) to refresh per
    epoch (see the module docstring). Any array derived from it (a slice, a sum) is plain
    features: it carries no views."""

    def __new__(cls, clean, views, view_logits=None, logits_table=None):
        obj = np.ascontiguousarray(clean, dtype=np.float32).view(cls)
        views = np.ascontiguousarray(views, dtype=np.float32)
        if views.ndim != 3 or views.shape[1:] != obj.shape or len(views) == 0:
            raise ValueError(f"views of shape {views.shape} do not fit features {obj.shape}")
        if (view_logits is None) != (logits_table is None):
            raise ValueError("view_logits and logits_table go together")
        if view_logits is not None:
            view_logits = np.ascontiguousarray(view_logits, dtype=np.float32)
            if (view_logits.shape[:2] != views.shape[:2] or not isinstance(logits_table, np.ndarray)
                    or logits_table.dtype != np.float32 or not logits_table.flags.c_contiguous
                    or logits_table.shape != view_logits.shape[1:]):
                raise ValueError(f"view logits {view_logits.shape} / table do not fit views {views.shape}")
        obj.views, obj.view_logits, obj.logits_table = views, view_logits, logits_table
        return obj

    def __array_finalize__(self, obj) -> None:
        self.views = self.view_logits = self.logits_table = None


def with_train_views(train: dict, views: dict) -> dict:
    """The training split as a method sees it with augmented views: a copy of ``train`` whose
    ``features`` is a ``ViewedFeatures`` and whose ``logits`` (when present) is a fresh float32
    table that ``train_linear`` refreshes per epoch with the drawn views' logits."""
    out = dict(train)
    table = None
    if "logits" in train:
        table = np.array(train["logits"], dtype=np.float32, order="C", copy=True)
        out["logits"] = table
    out["features"] = ViewedFeatures(train["features"], views["features"],
                                     views.get("logits") if table is not None else None, table)
    return out


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
    CPU to an uninterrupted run); a non-finite loss or gradient stops with epoch, step and term,
    an epoch whose mean loss runs off stops with ``lmdlt.divergence.DivergenceError``
    (``name`` labels the messages).

    ``features`` a ``ViewedFeatures``: every epoch trains on one of its views per image, drawn
    with ``generator`` at the epoch's start (module docstring)."""
    views = getattr(features, "views", None)
    if views is None:
        x = torch.as_tensor(features, dtype=torch.float32)
    else:
        views_t = torch.from_numpy(views)
        x = torch.empty(views.shape[1:], dtype=torch.float32)  # this epoch's views, filled below
        positions = torch.arange(views.shape[1])
        table = features.logits_table
        if table is not None:
            table_t, view_logits_t = torch.from_numpy(table), torch.from_numpy(features.view_logits)
            clean_logits = table_t.clone()
        log.info("%s: one of %d augmented views per image per epoch%s", name, len(views),
                 ", train['logits'] per view" if table is not None else "")
    y = torch.as_tensor(labels, dtype=torch.int64)
    layer = init if init is not None else nn.Linear(x.shape[1], num_classes)
    smp = make_sampler(labels, sampler, generator, epochs=epochs, **(sampler_options or {}))
    loader = DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=batch_size, sampler=smp)
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    steps = max(epochs * len(loader), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    start = 0
    divergence = DivergenceGuard(name)
    saved = resume.load() if resume is not None else None
    if saved is not None:
        layer.load_state_dict(saved["layer"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], generator)
        divergence.load_state_dict(saved.get("divergence"))
        start = saved["epoch"]
        log.info("resumed from %s: %s after epoch %d/%d", resume.path, name, start, epochs)
    trainable = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    for epoch in range(start, epochs):
        set_sampler_epoch(smp, epoch)
        if views is not None:
            choice = torch.randint(len(views_t), (len(positions),), generator=generator)
            x.copy_(views_t[choice, positions])
            if table is not None:
                table_t.copy_(view_logits_t[choice, positions])
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
            divergence.add(loss, len(yb))
        mean_loss, _ = divergence.end_epoch(epoch + 1, epochs)  # before a diverged state is saved
        if resume is not None:
            resume.save({"epoch": epoch + 1, "layer": layer.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "rng": rng_state(generator),
                         "divergence": divergence.state_dict()})
        log.info("epoch %d/%d loss %.4f", epoch + 1, epochs, mean_loss)
    if views is not None and table is not None:
        table_t.copy_(clean_logits)
    return layer
