"""Weight balancing (Alshammari et al. 2022), second stage, on cached features: the stage-1
classifier is fine-tuned with a class-balanced loss (CE weighted by effective-number weights,
beta), weight decay, and MaxNorm (each class's weight row projected onto the ball of radius
``max_norm`` after every step); the encoder is frozen. With the stage-1 method ``cb_wd_max``
(CE + large weight decay) this is the paper's "CB+WD+Max"."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.samplers import effective_number_weights
from .base import Stage2Method, register
from .linear import LINEAR_PARAMS, train_linear


@torch.no_grad()
def max_norm_(weight: torch.Tensor, threshold: float) -> None:
    """MaxNorm: rows with an L2 norm above ``threshold`` scaled back onto it (as stage 1's)."""
    weight.mul_((threshold / weight.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0))


@register("cb_wd_max")
class WeightBalancingClassifier(Stage2Method):
    params = {**LINEAR_PARAMS,
              "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.01},
              "weight_decay": {"type": "number", "minimum": 0, "default": 5e-3},
              "beta": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.9999},
              "max_norm": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
              "sampler": {"type": "string", "default": "instance"}}

    def fit(self, train, val, stage1_classifier, generator):
        if stage1_classifier is None:
            raise ValueError("cb_wd_max needs the stage-1 classifier (weight, bias) in the features file")
        w = torch.as_tensor(np.asarray(stage1_classifier["weight"]), dtype=torch.float32)
        layer = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(torch.as_tensor(np.asarray(stage1_classifier["bias"]), dtype=torch.float32))
            max_norm_(layer.weight, self.p["max_norm"])
        counts = np.bincount(train["labels"], minlength=self.num_classes)
        cw = effective_number_weights(counts, self.p["beta"])
        self.layer = train_linear(
            train["features"], train["labels"], self.num_classes, sampler=self.p["sampler"],
            generator=generator, init=layer, resume=self.resume, name=self.name,
            loss_fn=lambda logits, y, idx: F.cross_entropy(logits, y, weight=cw),
            after_step=lambda l: max_norm_(l.weight, self.p["max_norm"]),
            **{k: self.p[k] for k in LINEAR_PARAMS})

    @torch.no_grad()
    def logits(self, features):
        return self.layer(torch.as_tensor(features, dtype=torch.float32)).numpy()

    def state(self):
        return {"weight": self.layer.weight.detach().numpy(), "bias": self.layer.bias.detach().numpy()}
