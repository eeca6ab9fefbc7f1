"""The divergence guard shared by every training loop.

A learning rate far too large does not always produce NaN: with BatchNorm or a bounded loss the
weights can run off while every loss stays finite (stage 1 at lr 100 on digits: mean loss 2.1
at the first step, 3.3e5 after epoch 1, 1.3e8 after epoch 2; cRT at lr 1e6: 1.4, then 6.6e9).
Unguarded, such a run finishes, keeps an epoch and hands chance-level predictions to the next
stage.

**The rule.** After every epoch a loop checks its mean loss (the sample-weighted mean over the
epoch's steps). Training stops with ``DivergenceError`` when the mean is

* NaN or infinite, or
* larger in magnitude than ``max(GROWTH * |reference|, FLOOR)``, with ``GROWTH = 1000`` and
  ``FLOOR = 100``; ``reference`` is the loss of the loop's first step, i.e. of the model before
  any update (for a resumed run, the value recorded with its resume state).

Why the first step and not the first epoch: a run can diverge within its first epoch (the two
cases above do), and VFC trains a single epoch. Why the floor: a classifier initialised from
stage 1 on its own training features can start near zero loss (CE 1e-3), so that a healthy
rise to CE 1 is 1000 x; no classification loss of a healthy run reaches 100 (CE of K classes at
chance is ln K; GCL's and LDAM's scaled cosines are bounded by about 2 s = 40 and 60). The
magnitude is compared, so a loss running off to minus infinity (an unbounded regulariser) is
caught too.

The check costs one host sync per epoch: ``DivergenceGuard.add`` accumulates the loss on its
device. (The loops' own per-step non-finite checks, which name the step and the loss term or
parameter, stay as they are.)

**The message** names the stage, the variant, the loop, the epoch and the learning rate:
``stage 2, variant 'ce/crt' (method crt): crt diverged at epoch 2/3 (learning rate 1e+06):
mean loss 6.552e+09 exceeds 1000 x the first step's loss (1.386) and 100; lower the learning
rate``. The stage and variant come from ``run_context``, which the stage-1 trainer and the
stage-2 runner enter around their training (the variant is read off the output path the
pipeline uses, ``.../stage1/<s1>/model.pt``, ``.../stage2/<s1>/<s2>/predictions.h5``).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
from pathlib import Path
from typing import Iterator

import torch

from .errors import UserError

GROWTH = 1e3
FLOOR = 1e2

_RUN: contextvars.ContextVar[str] = contextvars.ContextVar("lmdlt_training_run", default="")


class DivergenceError(UserError, FloatingPointError):
    """A training loop's loss became non-finite or ran off (``lmdlt.divergence``); a user error
    (the learning rate, or NaN in the inputs), so the command prints it as one line."""


def variant_of(out_path: str | os.PathLike | None, stage: str) -> str | None:
    """The variant a pipeline output belongs to: ``<s1>`` for ``.../stage1/<s1>/model.pt``,
    ``<s1>/<s2>`` for ``.../stage2/<s1>/<s2>/predictions.h5``; None for any other path."""
    if out_path is None:
        return None
    parts = Path(out_path).parts
    if stage == "stage 1" and len(parts) >= 3 and parts[-3] == "stage1":
        return parts[-2]
    if stage == "stage 2" and len(parts) >= 4 and parts[-4] == "stage2":
        return f"{parts[-3]}/{parts[-2]}"
    return None


def describe_run(stage: str, method: str, out_path: str | os.PathLike | None = None,
                 rates: dict[str, float] | None = None) -> str:
    """``stage 1, variant 'ce' (method ce, lr 100)``; without a pipeline path ``stage 1
    (method ce, lr 100)``. ``rates``: the configured learning rates (``lr``, ``m_lr``, ...)."""
    variant = variant_of(out_path, stage)
    about = ", ".join([f"method {method}"] + [f"{k} {v:g}" for k, v in (rates or {}).items()])
    return f"{stage}, variant {variant!r} ({about})" if variant else f"{stage} ({about})"


def learning_rates(params: dict) -> dict[str, float]:
    """The learning rates among a method's params (``lr``, ``m_lr``, ``e_lr``, ...)."""
    return {k: v for k, v in params.items() if (k == "lr" or k.endswith("_lr")) and isinstance(v, (int, float))}


@contextlib.contextmanager
def run_context(stage: str, method: str, out_path: str | os.PathLike | None = None,
                rates: dict[str, float] | None = None) -> Iterator[str]:
    """Within the block, training errors name this run (``describe_run``)."""
    token = _RUN.set(describe_run(stage, method, out_path, rates))
    try:
        yield _RUN.get()
    finally:
        _RUN.reset(token)


def current_run() -> str:
    """The run being trained (``run_context``), or '' outside one."""
    return _RUN.get()


def with_run(message: str) -> str:
    """``message`` prefixed with the current run, when there is one."""
    run = current_run()
    return f"{run}: {message}" if run else message


def limit(reference: float | None) -> float:
    """The largest epoch-mean loss magnitude that is not divergence (module docstring)."""
    if reference is None or not math.isfinite(reference):
        return FLOOR
    return max(GROWTH * abs(reference), FLOOR)


def _lr_text(lr) -> str:
    return "" if lr is None else f" (learning rate {lr:g})"


class DivergenceGuard:
    """The per-epoch check of one training loop (module docstring).

    ``add(loss, n)`` after every step (no host sync), ``end_epoch(epoch, epochs, lr)`` after
    every epoch; or ``check(mean, ...)`` with a mean computed elsewhere (stage 1, whose epoch
    means are already on the host). ``reference`` (the first step's loss) goes into the loop's
    resume state through ``state_dict`` / ``load_state_dict``. ``loop`` names the loop in the
    message (``crt``, ``ICC iteration 3 M-step``)."""

    def __init__(self, loop: str, reference: float | None = None) -> None:
        self.loop = loop
        self.reference = reference
        self._sum: torch.Tensor | None = None
        self._first: torch.Tensor | None = None
        self._count = 0

    def add(self, loss: torch.Tensor, count: int = 1) -> None:
        value = loss.detach().reshape(())
        value = value.to(torch.float32 if value.device.type == "mps" else torch.float64)
        if self.reference is None and self._first is None:
            self._first = value.clone()
        self._sum = value * count if self._sum is None else self._sum + value * count
        self._count += count

    def end_epoch(self, epoch: int, epochs: int | None = None, lr: float | None = None,
                  loop: str | None = None) -> tuple[float, int]:
        """Check the epoch just ended (1-based ``epoch``) and start the next; returns the
        epoch's (mean loss, samples). An epoch without steps is not checked."""
        if self._sum is None:
            return 0.0, 0
        pair = torch.stack([self._sum, self._first if self._first is not None else self._sum])
        total, first = pair.tolist()  # the one host sync of the epoch
        count = self._count
        had_first = self._first is not None
        self._sum, self._first, self._count = None, None, 0
        mean = total / max(count, 1)
        self.check(mean, epoch, epochs, lr, first_step=first if had_first else None, loop=loop)
        return mean, count

    def check(self, mean: float, epoch: int, epochs: int | None = None, lr: float | None = None,
              first_step: float | None = None, loop: str | None = None) -> None:
        """Raise ``DivergenceError`` if ``mean`` (epoch ``epoch``'s mean loss) is diverged;
        ``first_step``: the loss of the loop's first step, when this epoch had it."""
        if self.reference is None and first_step is not None and math.isfinite(first_step):
            self.reference = float(first_step)
        at = f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"
        head = f"{loop or self.loop} diverged at {at}{_lr_text(lr)}: mean loss {mean:.4g}"
        if not math.isfinite(mean):
            raise DivergenceError(with_run(f"{head} is not finite; lower the learning rate or check "
                                           "the inputs for NaN/inf"))
        bound = limit(self.reference)
        if abs(mean) > bound:
            ref = "" if self.reference is None else f"{GROWTH:g} x the first step's loss ({self.reference:.4g}) and "
            raise DivergenceError(with_run(f"{head} exceeds {ref}{FLOOR:g}; lower the learning rate"))

    def state_dict(self) -> dict:
        return {"reference": self.reference}

    def load_state_dict(self, state: dict | None) -> None:
        """A state saved by ``state_dict``; None (a resume file from before the guard): the
        reference is taken again from the next step."""
        if state is not None:
            self.reference = state.get("reference")
