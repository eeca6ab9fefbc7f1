"""Focal loss (Lin et al. 2017), softmax form: FL = -(1 - p_t)^gamma log p_t, averaged."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Stage1Method, register


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    logp_t = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    return (-(1 - logp_t.exp()) ** gamma * logp_t).mean()


@register("focal")
class Focal(Stage1Method):
    params = {"gamma": {"type": "number", "minimum": 0, "default": 2.0,
                        "description": "focusing exponent of (1 - p_t)^gamma (0: plain CE)",
                        "source": "paper: Lin et al. 2017, gamma = 2 (their chosen value)"}}

    def loss(self, net, x, y, epoch):
        return {"focal": focal_loss(net(x), y, self.p["gamma"])}
