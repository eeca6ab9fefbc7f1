"""LDAM (Cao et al. 2019): label-distribution-aware margins on a cosine classifier,
CE(s * (cos - Delta_y 1_y), y) with Delta_k = C / n_k^{1/4} (C so that the largest margin is
``max_m``), optionally with deferred re-weighting (DRW): from ``drw_start`` (fraction of the
epochs) the CE is weighted by effective-number class weights (beta = ``drw_beta``).
LDAM-RS is this method with ``drw_start: null`` and the variant's ``sampler: class_balanced``.

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


@register("ldam")
class LDAM(CosineClassifier, Stage1Method):
    params = {
        "max_m": {"type": "number", "exclusiveMinimum": 0, "default": 0.5},
        "s": {"type": "number", "exclusiveMinimum": 0, "default": 30.0},
        "drw_start": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "default": 0.8,
                      "description": "fraction of the epochs after which DRW starts (null: no DRW)"},
        "drw_beta": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.9999},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.margins = ldam_margins(self.class_counts, self.p["max_m"])
        self.drw_weights = effective_number_weights(self.class_counts, self.p["drw_beta"])

    def drw_epoch(self) -> int | None:
        if self.p["drw_start"] is None:
            return None
        return int(math.floor(self.p["drw_start"] * self.epochs))

    def loss(self, net, x, y, epoch):
        cos, _ = cosine_logits(net, x)
        start = self.drw_epoch()
        weight = self.drw_weights if start is not None and epoch >= start else None
        return {"ldam": ldam_loss(cos, y, self.margins, self.p["s"], weight)}
