"""Balanced Softmax (Ren et al., NeurIPS 2020, "Balanced meta-softmax for long-tailed visual
recognition"): CE on the logits shifted by the log class counts, CE(z + tau * log n, y); at
test time the plain logits z are used. With ``tau`` != 1 this is the logit-adjusted loss of
Menon et al. (ICLR 2021; z + tau log pi, the prior pi differing from n by a constant
that softmax ignores).

Reference (github.com/jiawei-ren/BalancedMetaSoftmax-Classification, commit 34a61e4),
``loss/BalancedSoftmaxLoss.py:37-51``: ``logits = logits + spc.log()`` (l.47-49),
``F.cross_entropy`` (l.50), spc the training samples per class. Default tau 1 (the reference
has no tau; Menon et al.'s logit-adjusted loss with tau = 1 is the same loss).
Departures: a class with no training image gets log(1) = 0 instead of log(0) = -inf."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Stage1Method, register
from .common import DeviceConstants


def balanced_softmax_loss(logits: torch.Tensor, y: torch.Tensor, counts, tau: float = 1.0) -> torch.Tensor:
    log_n = torch.log(torch.as_tensor(counts, dtype=logits.dtype, device=logits.device).clamp_min(1))
    return F.cross_entropy(logits + tau * log_n[None, :], y)


@register("balanced_softmax")
class BalancedSoftmax(Stage1Method):
    params = {
        "tau": {"type": "number", "minimum": 0, "default": 1.0,
                "description": "scale of the log-count shift (1: Balanced Softmax)",
                "source": "reference: jiawei-ren/BalancedMetaSoftmax-Classification@34a61e4 "
                          "loss/BalancedSoftmaxLoss.py:47-50 (logits + log n, no tau)"},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self._on_device = DeviceConstants(counts=torch.as_tensor(self.class_counts, dtype=torch.float32))

    def loss(self, net, x, y, epoch):
        logits = net(x)
        counts = self._on_device("counts", logits.device, logits.dtype)
        return {"balanced_softmax": balanced_softmax_loss(logits, y, counts, self.p["tau"])}
