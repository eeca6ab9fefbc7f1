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
Defaults: max_m 0.5, s 30, drw_start 0.8, drw_beta 0.9999.
Departures: the reference's learning-rate schedule (5-epoch linear warm-up, x0.01 at epoch
160, x0.0001 at 180: ``adjust_learning_rate`` l.366-376) is the trainer's, not this module's:
the shared cosine schedule applies, and the trainer's best-validation checkpoint selection may
keep a pre-DRW epoch (issue 14 item 4, not done here).

The classifier is the network's own linear layer kept at unit-norm rows and zero bias
(``common.project_to_cosine_classifier``), so ``net(x)`` ranks classes as the cosine
classifier does and stage 2 can reuse it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Stage1Method, register
from .common import CosineClassifier, cosine_logits, effective_number_weights


def ldam_margins(counts, max_m: float) -> torch.Tensor:
    n = torch.as_tensor(counts, dtype=torch.float64).clamp_min(1)
    m = 1.0 / n ** 0.25
    return (m * (max_m / m.max())).float()


def ldam_loss(cos: torch.Tensor, y: torch.Tensor, margins: torch.Tensor, s: float,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    onehot = F.one_hot(y, cos.shape[1]).to(cos.dtype)
    out = cos - onehot * margins.to(cos.device)[None, :]
    return F.cross_entropy(s * out, y, weight=None if weight is None else weight.to(cos.device))


DRW_PARAMS = {
    "drw_start": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "default": 0.8,
                  "description": "fraction of the epochs after which DRW starts (null: no DRW)"},
    "drw_beta": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.9999},
}


class DeferredReweighting:
    """Mixin: DRW as in LDAM-DRW's reference (``cifar_train.py:199-206``). ``drw_weight(epoch)``
    is None before the DRW epoch and the effective-number class weights from it on."""

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.drw_weights = effective_number_weights(self.class_counts, self.p["drw_beta"])

    def drw_epoch(self) -> int | None:
        if self.p["drw_start"] is None:
            return None
        return int(math.floor(self.p["drw_start"] * self.epochs))

    def drw_weight(self, epoch: int) -> torch.Tensor | None:
        start = self.drw_epoch()
        return self.drw_weights if start is not None and epoch >= start else None


@register("ldam")
class LDAM(DeferredReweighting, CosineClassifier, Stage1Method):
    params = {
        "max_m": {"type": "number", "exclusiveMinimum": 0, "default": 0.5},
        "s": {"type": "number", "exclusiveMinimum": 0, "default": 30.0},
        **DRW_PARAMS,
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.margins = ldam_margins(self.class_counts, self.p["max_m"])

    def loss(self, net, x, y, epoch):
        cos, _ = cosine_logits(net, x)
        return {"ldam": ldam_loss(cos, y, self.margins, self.p["s"], self.drw_weight(epoch))}
