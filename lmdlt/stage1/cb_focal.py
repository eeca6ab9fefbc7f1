"""Class-balanced focal loss (Cui et al. 2019), the sigmoid form of their Eq.:
CB_focal = -w_y sum_{i=1}^{K} (1 - p_i^t)^gamma log p_i^t, p_i^t = sigmoid(z_i^t), z_i^t = z_i for
the true class and -z_i otherwise, w_y = (1 - beta) / (1 - beta^{n_y}) normalised to sum to K;
averaged over the batch. As in the paper, the classifier bias starts at -log((1 - pi) / pi),
pi = 0.1, so that the sigmoid losses start small."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Stage1Method, register
from .common import DeviceConstants, effective_number_weights


def cb_focal_loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                  gamma: float) -> torch.Tensor:
    onehot = F.one_hot(y, logits.shape[1]).bool()
    zt = torch.where(onehot, logits, -logits)
    logp = F.logsigmoid(zt)
    per_class = -(1 - logp.exp()) ** gamma * logp
    return (weights.to(logits.device)[y] * per_class.sum(1)).mean()


@register("cb_focal")
class ClassBalancedFocal(Stage1Method):
    params = {
        "beta": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.9999,
                 "description": "effective-number class weights (1 - beta) / (1 - beta^n_y)",
                 "source": "paper: Cui et al. 2019 (beta 0.9999 for CIFAR-LT)"},
        "gamma": {"type": "number", "minimum": 0, "default": 1.0,
                  "description": "focusing exponent of the sigmoid focal loss",
                  "source": "paper: Cui et al. 2019 (CB focal, gamma 1.0 at r = 100)"},
        "prior": {"type": ["number", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                  "default": 0.1, "description": "initial sigmoid output (null: keep the init)",
                  "source": "paper: Cui et al. 2019 Sec. 4 (bias initialised with pi = 0.1)"},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.weights = effective_number_weights(self.class_counts, self.p["beta"])
        self._on_device = DeviceConstants(weights=self.weights)

    def on_train_start(self, net, epochs, steps_per_epoch):
        super().on_train_start(net, epochs, steps_per_epoch)
        if self.p["prior"] is not None:
            with torch.no_grad():
                net.classifier.bias.fill_(-math.log((1 - self.p["prior"]) / self.p["prior"]))

    def loss(self, net, x, y, epoch):
        return {"cb_focal": cb_focal_loss(net(x), y, self._on_device("weights", y.device), self.p["gamma"])}
