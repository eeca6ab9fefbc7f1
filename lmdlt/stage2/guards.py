"""Numerical guards of the stage-2 training loops: a non-finite loss or gradient stops the run
with the place it went bad (epoch, step, loss term or parameter) instead of writing a NaN
classifier that evaluation would only reject later. The messages start with the run being
trained (stage, variant, method, learning rates: ``lmdlt.divergence.run_context``); a loss
that stays finite but runs off is ``lmdlt.divergence.DivergenceGuard``'s, per epoch."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..divergence import DivergenceError, with_run


class NonFiniteError(DivergenceError, RuntimeError):
    """A loss or gradient became NaN or infinite (a user error: one line from the command)."""


def check_finite_terms(terms: dict[str, torch.Tensor], where: str) -> None:
    """``terms``: loss term name -> scalar tensor; ``where``: e.g. 'crt epoch 3, step 17'."""
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
    if bool(torch.isfinite(values).all()):
        return
    bad = [(n, v) for n, v in zip(terms, values.tolist()) if not math.isfinite(v)]
    raise NonFiniteError(with_run(f"{where}: non-finite loss term {bad[0][0]!r} ({bad[0][1]}); "
                                  "lower the learning rate or check the features for NaN/inf"))


def check_finite_grads(named_params: Iterable[tuple[str, nn.Parameter]], where: str) -> None:
    """After ``backward``: every gradient finite (one device sync for all parameters)."""
    named = [(n, p.grad) for n, p in named_params if p.grad is not None]
    if not named:
        return
    ok = torch.stack([torch.isfinite(g).all() for _, g in named])
    if bool(ok.all()):
        return
    name = named[int((~ok).nonzero()[0])][0]
    raise NonFiniteError(with_run(f"{where}: non-finite gradient of parameter {name!r}; "
                                  "lower the learning rate or check the features for NaN/inf"))
