"""AdUni (Cong et al.): the adaptive unified contrastive loss AduC, batch contents only (no
memory queue). Two views per image; f = L2-normalised projections (2-layer MLP), g = the
network's classifier logits. For each of the 2N anchors i, with the shared denominator
D_i = sum_{j<K} exp(g_ij / tau) + sum_{k != i} exp(f_i . f_k / tau):

  L_i = -[alpha sum_{p in P(i)} log(exp(f_i . f_p / tau) / D_i) + log(exp(g_{i,y_i} / tau) / D_i)]
        / (alpha |P(i)| + 1),

P(i) the other samples of i's class (the label positive counted once, and the sum normalised by
the positive weights as in the PaCo form the paper adopts); averaged over anchors.
alpha follows Eq. 3, alpha = omega(t) alpha_max + (1 - omega(t)) alpha_min, with the cosine
omega(t) = (1 + cos(pi t / t_decay)) / 2 of epoch t (0-based) computed afresh each epoch (the
reference code compounds it, a bug). The printed omega = 1 + cos(...) ranges over [0, 2] and
would start alpha at 2 alpha_max - alpha_min; the halved form runs alpha from alpha_max to alpha_min
as the text describes. t_decay defaults to the last epoch."""
from __future__ import annotations

import math

import torch

from .base import Stage1Method, register
from .common import TwoViewContrastive


def aduc_alpha(epoch: int, t_decay: float, alpha_max: float, alpha_min: float) -> float:
    t = min(epoch, t_decay)
    omega = 0.5 * (1 + math.cos(math.pi * t / t_decay)) if t_decay > 0 else 0.0
    return omega * alpha_max + (1 - omega) * alpha_min


def aduc_loss(f: torch.Tensor, g: torch.Tensor, y: torch.Tensor, alpha: float, tau: float) -> torch.Tensor:
    n = f.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    sim = (f @ f.t() / tau).masked_fill(eye, float("-inf"))
    logits = g / tau
    log_d = torch.logsumexp(torch.cat([logits, sim], dim=1), dim=1)
    pos = (y[:, None] == y[None, :]) & ~eye
    feat_term = (sim.masked_fill(~pos, 0.0) - log_d[:, None] * pos).sum(1)
    label_term = logits.gather(1, y[:, None]).squeeze(1) - log_d
    return (-(alpha * feat_term + label_term) / (alpha * pos.sum(1).to(f.dtype) + 1)).mean()


@register("aduc")
class AdUni(TwoViewContrastive, Stage1Method):
    params = {
        "tau": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
        "alpha_max": {"type": "number", "minimum": 0, "default": 1.0},
        "alpha_min": {"type": "number", "minimum": 0, "default": 0.01},
        "t_decay": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                    "description": "epochs over which alpha decays (null: the whole run)"},
        "dim": {"type": "integer", "minimum": 1, "default": 128},
    }

    def alpha(self, epoch: int) -> float:
        t_decay = self.p["t_decay"] if self.p["t_decay"] is not None else max(self.epochs - 1, 1)
        return aduc_alpha(epoch, t_decay, self.p["alpha_max"], self.p["alpha_min"])

    def loss(self, net, x, y, epoch):
        v1, v2 = x
        feats = net.features(torch.cat([v1, v2]))
        f = self.head(feats)
        g = net.classifier(feats)
        return {"aduc": aduc_loss(f, g, torch.cat([y, y]), self.alpha(epoch), self.p["tau"])}
