"""LDAM (Cao et al., NeurIPS 2019, "Learning imbalanced datasets with label-distribution-aware
margin loss"): label-distribution-aware margins on a cosine classifier,
CE(s * (cos - Delta_y 1_y), y) with Delta_k = C / n_k^{1/4} (C so that the largest margin is
``max_m``), optionally with deferred re-weighting (DRW, ``DeferredReweighting``, shared with
``ce_drw``): from epoch floor(``drw_start`` * epochs) (0-based) the CE is weighted by
effective-number class weights (beta = ``drw_beta``), before it unweighted.
LDAM-RS is this method with ``drw_start: null`` and the variant's ``sampler: class_balanced``.

Reference (github.com/kaidic/LDAM-DRW, commit 2536330), ``cifar_train.py``:
``LDAMLoss(max_m=0.5, s=30, weight=per_cls_weights)`` (l.213; margins ``losses.py:27-28``,
1/sqrt(sqrt(n)) scaled to max_m); DRW (l.199-206): ``idx = epoch // 160``, betas [0, 0.9999],
w_k = (1 - beta) / (1 - beta^{n_k}) normalised to sum to K (beta 0 gives all-ones weights,
i.e. plain CE before epoch 160), 200 epochs (l.43): drw_start 160 / 200 = 0.8.
Defaults: max_m 0.5, s 30, drw_start 0.8, drw_beta 0.9999, lr_schedule reference.

Learning-rate schedule (``lr_schedule: reference``, the default; ``DeferredReweighting``):
the reference's ``adjust_learning_rate`` (l.366-376: lr * e / 5 for 1-based epoch e <= 5,
x0.01 for e > 160, x0.0001 for e > 180, of 200 epochs) scaled to the run's E epochs: a linear
warm-up staircase of five equal steps over the first 5/200 of the run (factor (i + 1) / 5 for
i = floor(200 s / (S E)) < 5, s the 0-based optimiser step, S steps per epoch; with E = 200 and
per-epoch granularity this is the reference exactly), then 1, x0.01 from the DRW epoch
floor(drw_start E) (0-based; = floor(0.8 E) = the reference's 160 of 200; floor(0.8 E) when
DRW is off, e.g. LDAM-RS, whose reference run uses the same schedule) and x0.0001 from
floor(0.9 E) (180 of 200). ``lr_schedule: trainer`` keeps the variant's schedule (the shared
cosine), to compare LDAM with the other rows on one schedule. Checkpoint selection:
``select: best_val`` only keeps epochs from the DRW epoch on (``selectable``), since a pre-DRW
epoch is plain LDAM / CE, not the method.
Departures: the warm-up is stepped per optimiser step (within the first 2.5 % of the run, which
on a short run is a fraction of an epoch), not per epoch; the reference keeps the best *test*
epoch (``best_acc1``), we the best validation epoch from the DRW epoch on.

The classifier is the network's own linear layer kept at unit-norm rows and zero bias
(``common.project_to_cosine_classifier``), so ``net(x)`` ranks classes as the cosine
classifier does and stage 2 can reuse it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Stage1Method, register
from .common import CosineClassifier, DeviceConstants, cosine_logits, effective_number_weights


def ldam_margins(counts, max_m: float) -> torch.Tensor:
    n = torch.as_tensor(counts, dtype=torch.float64).clamp_min(1)
    m = 1.0 / n ** 0.25
    return (m * (max_m / m.max())).float()


def ldam_loss(cos: torch.Tensor, y: torch.Tensor, margins: torch.Tensor, s: float,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    onehot = F.one_hot(y, cos.shape[1]).to(cos.dtype)
    out = cos - onehot * margins.to(cos.device)[None, :]
    return F.cross_entropy(s * out, y, weight=None if weight is None else weight.to(cos.device))


# the same script trains CE + DRW and LDAM-DRW (--loss_type CE / LDAM): one source for both
LDAM_REF = "kaidic/LDAM-DRW@2536330"
DRW_PARAMS = {
    "drw_start": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "default": 0.8,
                  "description": "fraction of the epochs after which DRW starts (null: no DRW)",
                  "source": f"reference: {LDAM_REF} cifar_train.py:199-206, 43 (epoch // 160 of 200)"},
    "drw_beta": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.9999,
                 "description": "effective-number beta of the DRW class weights",
                 "source": f"reference: {LDAM_REF} cifar_train.py:202 betas = [0, 0.9999]"},
    "lr_schedule": {"enum": ["reference", "trainer"], "default": "reference",
                    "description": "reference: LDAM-DRW's warm-up and step decays at 0.8 / 0.9 of "
                                   "the run; trainer: the variant's lr_schedule (cosine)",
                    "source": f"reference: {LDAM_REF} cifar_train.py:366-376 adjust_learning_rate, "
                              "scaled from 200 epochs to the run"},
}

REF_EPOCHS = 200  # the reference run (cifar_train.py l.43); its schedule's epochs are out of 200
REF_WARMUP = 5  # adjust_learning_rate: lr * epoch / 5 for epoch <= 5 (1-based)


def reference_lr_factor(step: int, steps_per_epoch: int, epochs: int, first_decay: int,
                        second_decay: int) -> float:
    """LDAM-DRW's ``adjust_learning_rate`` (cifar_train.py:366-376) scaled from 200 epochs to
    ``epochs``: the factor of optimiser step ``step`` (0-based)."""
    warm = (REF_EPOCHS * step) // (steps_per_epoch * epochs)  # reference epochs elapsed
    if warm < REF_WARMUP:
        return (warm + 1) / REF_WARMUP
    epoch = step // steps_per_epoch
    if epoch >= second_decay:
        return 1e-4
    if epoch >= first_decay:
        return 1e-2
    return 1.0


class DeferredReweighting:
    """Mixin: DRW as in LDAM-DRW's reference (``cifar_train.py:199-206``). ``drw_weight(epoch)``
    is None before the DRW epoch and the effective-number class weights from it on."""

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.drw_weights = effective_number_weights(self.class_counts, self.p["drw_beta"])
        self._drw_on_device = DeviceConstants(weights=self.drw_weights)

    def drw_epoch(self) -> int | None:
        if self.p["drw_start"] is None:
            return None
        return int(math.floor(self.p["drw_start"] * self.epochs))

    def drw_weight(self, epoch: int, device=None) -> torch.Tensor | None:
        """On ``device`` (cached there) when given."""
        start = self.drw_epoch()
        if start is None or epoch < start:
            return None
        return self.drw_weights if device is None else self._drw_on_device("weights", device)

    def selectable(self, epoch: int) -> bool:
        """best_val keeps only epochs from the DRW switch on (all when the run has no DRW)."""
        start = self.drw_epoch()
        if start is None or start >= self.epochs:
            return True
        return epoch >= start

    def lr_decay_epochs(self) -> tuple[int, int]:
        """0-based epochs of the x0.01 and x0.0001 steps: the DRW epoch (floor(0.8 E) without
        DRW) and floor(0.9 E) (the reference's 160 and 180 of 200)."""
        start = self.drw_epoch()
        first = start if start is not None else int(math.floor(0.8 * self.epochs))
        return first, max(first, int(math.floor(0.9 * self.epochs)))

    def lr_lambda(self, total_steps: int):
        if self.p["lr_schedule"] == "trainer":
            return None
        first, second = self.lr_decay_epochs()
        spe, epochs = self.steps_per_epoch, self.epochs
        return lambda s: reference_lr_factor(s, spe, epochs, first, second)


@register("ldam")
class LDAM(DeferredReweighting, CosineClassifier, Stage1Method):
    params = {
        "max_m": {"type": "number", "exclusiveMinimum": 0, "default": 0.5,
                  "description": "largest margin (that of the rarest class); Delta_k ~ n_k^(-1/4)",
                  "source": f"reference: {LDAM_REF} cifar_train.py:213 LDAMLoss(max_m=0.5)"},
        "s": {"type": "number", "exclusiveMinimum": 0, "default": 30.0,
              "description": "scale of the cosine logits",
              "source": f"reference: {LDAM_REF} cifar_train.py:213 LDAMLoss(s=30)"},
        **DRW_PARAMS,
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.margins = ldam_margins(self.class_counts, self.p["max_m"])
        self._margins_on_device = DeviceConstants(margins=self.margins)

    def loss(self, net, x, y, epoch):
        cos, _ = cosine_logits(net, x)
        return {"ldam": ldam_loss(cos, y, self._margins_on_device("margins", cos.device), self.p["s"],
                                  self.drw_weight(epoch, cos.device))}
