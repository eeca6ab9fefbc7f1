"""Weight balancing (Alshammari et al. 2022), stage 1: cross-entropy with a tuned (large)
weight decay, set by the variant's ``weight_decay``, and optionally MaxNorm, a projection of
every class's classifier weight row onto the ball of radius ``max_norm`` after each step.
The second half of "CB+WD+Max" (class-balanced loss + weight decay + MaxNorm re-training of the
classifier on the frozen encoder) is the stage-2 method ``cb_wd_max`` on the cached features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Stage1Method, register


@torch.no_grad()
def max_norm_(weight: torch.Tensor, threshold: float) -> None:
    """Rows of ``weight`` with an L2 norm above ``threshold`` are scaled back onto it."""
    norms = weight.norm(dim=1, keepdim=True)
    weight.mul_(torch.where(norms > threshold, threshold / norms.clamp_min(1e-12), torch.ones_like(norms)))


@register("cb_wd_max")
class WeightBalancing(Stage1Method):
    params = {
        "max_norm": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                     "description": "per-class weight-norm threshold (null: no MaxNorm in stage 1)"},
    }

    def after_step(self, net):
        if self.p["max_norm"] is not None:
            max_norm_(net.classifier.weight, self.p["max_norm"])

    def loss(self, net, x, y, epoch):
        return {"ce": F.cross_entropy(net(x), y)}
