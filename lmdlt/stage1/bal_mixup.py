"""Balanced-MixUp (Galdran et al. 2021): each instance-sampled image is mixed with a
class-balanced-sampled one, x = (1 - lam) x_I + lam x_C, with soft labels, lam ~ Beta(alpha, 1)
once per batch (as in the reference code; small alpha keeps lam small, mostly the instance
image)."""
from __future__ import annotations

import torch

from .base import Stage1Method, register
from .common import mix_images, soft_cross_entropy


@register("bal_mixup")
class BalancedMixup(Stage1Method):
    params = {"alpha": {"type": "number", "exclusiveMinimum": 0, "default": 0.1,
                        "description": "lam ~ Beta(alpha, 1), the weight of the class-balanced image",
                        "source": "paper: Galdran et al. 2021, alpha = 0.1 (small: mostly the "
                                  "instance-sampled image)"}}

    def paired_sampler(self):
        return {"name": "class_balanced"}

    def loss(self, net, x, y, epoch, paired=None):
        if paired is None:
            raise ValueError("bal_mixup needs the paired class-balanced batch (trainer passes paired=)")
        xb, yb = paired
        n = min(len(y), len(yb))
        lam = float(torch.distributions.Beta(self.p["alpha"], 1.0).sample())
        logits = net(mix_images(xb[:n], x[:n], lam))
        return {"mixup_ce": soft_cross_entropy(logits, yb[:n], y[:n], lam)}
