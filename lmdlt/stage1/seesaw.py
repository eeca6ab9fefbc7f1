"""Seesaw loss (Wang et al. 2021): CE on logits where every other class j's exponent is scaled
by S_yj = M_yj * C_yj, i.e. z_j + log S_yj for j != y.
Mitigation M_yj = (N_j / N_y)^p if N_j < N_y else 1, with N the class counts accumulated over the
training batches so far (as in the paper); compensation C_yj = (sigma_j / sigma_y)^q if
sigma_j > sigma_y else 1, sigma the (detached) softmax probabilities.

Under DDP the counts of every process's batch are summed (``distributed.all_reduce_sum``), so N
processes accumulate what one process does on the whole batch (mmdetection's SeesawLoss counts
each rank's own labels only). The counts stay on the training device: no host copy per step."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Stage1Method, register
from .distributed import all_reduce_sum


def seesaw_loss(logits: torch.Tensor, y: torch.Tensor, cum_counts: torch.Tensor, p: float,
                q: float) -> torch.Tensor:
    k = logits.shape[1]
    onehot = F.one_hot(y, k).to(logits.dtype)
    s = torch.ones_like(logits)
    if p > 0:
        n = cum_counts.to(logits.device, logits.dtype).clamp_min(1)
        ratio = n[None, :] / n[:, None]  # [i, j] = N_j / N_i
        mitigation = torch.where(ratio < 1, ratio ** p, torch.ones_like(ratio))
        s = s * mitigation[y]
    if q > 0:
        probs = F.softmax(logits.detach(), dim=1)
        own = probs.gather(1, y[:, None]).clamp_min(1e-12)
        ratio = probs / own
        s = s * torch.where(ratio > 1, ratio ** q, torch.ones_like(ratio))
    adjusted = logits + s.log() * (1 - onehot)
    return F.cross_entropy(adjusted, y)


@register("seesaw")
class Seesaw(Stage1Method):
    params = {
        "p": {"type": "number", "minimum": 0, "default": 0.8,
              "description": "mitigation exponent, (N_j / N_y)^p for N_j < N_y (0: off)",
              "source": "paper: Wang et al. 2021 Sec. 4 (p = 0.8)"},
        "q": {"type": "number", "minimum": 0, "default": 2.0,
              "description": "compensation exponent, (sigma_j / sigma_y)^q for sigma_j > sigma_y (0: off)",
              "source": "paper: Wang et al. 2021 Sec. 4 (q = 2.0)"},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.cum_counts = torch.zeros(len(self.class_counts), dtype=torch.float64)

    def state_dict(self):
        return {"cum_counts": self.cum_counts}

    def load_state_dict(self, state):
        self.cum_counts = state["cum_counts"].clone()

    def loss(self, net, x, y, epoch):
        if self.cum_counts.device != y.device:
            self.cum_counts = self.cum_counts.to(y.device)
        batch = torch.bincount(y, minlength=len(self.cum_counts)).double()
        self.cum_counts += all_reduce_sum(batch)
        return {"seesaw": seesaw_loss(net(x), y, self.cum_counts.float(), self.p["p"], self.p["q"])}
