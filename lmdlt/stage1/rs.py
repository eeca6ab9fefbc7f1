"""RS: cross-entropy under class-balanced re-sampling (the paper's "RS" baseline), or under a
class-aware sampler p(k) proportional to (1/n_k)^gamma when ``gamma`` is set."""
from __future__ import annotations

import torch.nn.functional as F

from .base import Stage1Method, register


@register("rs")
class ReSampling(Stage1Method):
    params = {
        "gamma": {"type": "number", "default": 0.0,
                  "description": "class-aware exponent: 0 class-balanced, 1 reverse",
                  "source": "paper: RS = class-balanced re-sampling (LMD paper Sec. 4.2, after "
                            "Zhang et al. 2021b); gamma > 0 is ICCL's class-aware sampler (Eq. 2)"},
    }

    def train_sampler(self):
        if self.p["gamma"] == 0:
            return {"name": "class_balanced"}
        return {"name": "class_aware", "gamma": self.p["gamma"]}

    def loss(self, net, x, y, epoch):
        return {"ce": F.cross_entropy(net(x), y)}
