"""AdUni (Cong et al., MICCAI 2023, "Adaptive Unified Contrastive Learning for Imbalanced
Classification"; reference code github.com/thomascong121/AdUni
at 61d8c18): the adaptive unified contrastive loss AduC, batch contents only (no memory queue).
Two views per image; f = L2-normalised projections (2-layer MLP), g = the network's classifier
logits. For each of the 2N anchors i, with the classifier-branch entries
u_ij = g_ij / tau_g + c_j and the shared denominator
D_i = sum_{j<K} exp(u_ij) + sum_{k != i} exp(f_i . f_k / tau):

  L_i = -[alpha sum_{p in P(i)} log(exp(f_i . f_p / tau) / D_i) + log(exp(u_{i,y_i}) / D_i)]
        / (alpha |P(i)| + 1),

P(i) the other samples of i's class (the label positive counted once, and the sum normalised by
the positive weights as in the PaCo form the paper adopts; reference ``losses.py:201-216``, mask
``cat(one_hot * beta, mask * alpha)`` with beta 1); averaged over anchors.

Logit compensation (``logit_compensation``): the reference adds the log class prior to the
logits before the softmax, ``(sup_logits + log(weight + 1e-9)) / supt`` (``losses.py:181-184``,
weight = n_k / sum n from the training counts, ``cal_weight_for_classes`` l.122-126, called in
``main.py:222``; supt 1.0), i.e. c_j = log(n_j / N + 1e-9): ``log_prior``, the default, as in the
reference. The paper's Eqs. 2-3 have no such term: ``none`` gives the paper's loss (c = 0).
Logit temperature tau_g (``logit_tau``): the paper divides the logits by tau (Eq. 2-3), the
reference by supt = 1.0 (l.119, 183); null (default) = tau, the paper's; 1.0 the reference's.
The compensation is added after the temperature (at the softmax input, as in the reference,
where the two coincide), so its strength is that of the reference at either temperature.

alpha: the paper's Eq. 3, alpha = omega(t) alpha_max + (1 - omega(t)) alpha_min, of epoch t
(0-based), with the cosine omega(t) = (1 + cos(pi t / t_decay)) / 2 computed afresh each epoch
(``alpha_schedule: paper``, the default). Where the paper and the reference differ:
(1) the printed omega = 1 + cos(t / t_decay pi) ranges over [0, 2] and would start alpha at
2 alpha_max - alpha_min; the halved form runs alpha from alpha_max to alpha_min as the text
describes. (2) The reference (``util.py:116-120`` ``cosine_adjust``, called every
epoch from ``main.py:447-448`` on the previous epoch's alpha) compounds the cosine:
alpha_t = alpha_min + (alpha_{t-1} - alpha_min) (1 + cos(pi t / t_decay)) / 2, which collapses
to alpha_min long before t_decay (a bug); kept as ``alpha_schedule: reference``.
(3) The paper's t_decay = 1000 with 400 epochs (l.95; ``run.sh``: --alpha_decay 1000, 401
epochs 0..400) would, by its own formula, leave alpha at 0.66 after the last epoch, not at
alpha_min; t_decay here defaults to the run's last epoch (alpha_max at the first epoch,
alpha_min at the last), settable.
Other departures: the reference scales the loss by temperature / base_temperature = 0.1 / 0.07
(``losses.py:219``, a constant factor, i.e. a learning-rate multiple) — not applied; its
``--balance`` sampler and priority samplers are not part of this method (the variant's sampler
applies). Defaults: tau 0.1, alpha_max 1.0, alpha_min 0.01 (paper l.95, ``run.sh``)."""
from __future__ import annotations

import math

import torch

from .base import Stage1Method, register
from .common import DeviceConstants, TwoViewContrastive


def aduc_alpha(epoch: int, t_decay: float, alpha_max: float, alpha_min: float) -> float:
    """The paper's Eq. 3 with the halved cosine omega, recomputed from the epoch."""
    t = min(epoch, t_decay)
    omega = 0.5 * (1 + math.cos(math.pi * t / t_decay)) if t_decay > 0 else 0.0
    return omega * alpha_max + (1 - omega) * alpha_min


def aduc_alpha_compounded(epoch: int, t_decay: float, alpha_max: float, alpha_min: float) -> float:
    """The reference's trajectory (util.py:116-120 applied every epoch to the previous alpha)."""
    alpha = alpha_max
    for t in range(epoch + 1):
        alpha = alpha_min + (alpha - alpha_min) * (1 + math.cos(math.pi * t / t_decay)) / 2
    return alpha


def log_prior(counts) -> torch.Tensor:
    """log(n_k / N + 1e-9), the reference's compensation (losses.py:122-126, 183)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    return torch.log(n / n.sum() + 1e-9).float()


def aduc_loss(f: torch.Tensor, g: torch.Tensor, y: torch.Tensor, alpha: float, tau: float,
              compensation: torch.Tensor | None = None, logit_tau: float | None = None) -> torch.Tensor:
    """``compensation``: per-class offsets c added to g / logit_tau (None: none); ``logit_tau``
    the classifier branch's temperature (None: ``tau``)."""
    n = f.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    sim = (f @ f.t() / tau).masked_fill(eye, float("-inf"))
    logits = g / (tau if logit_tau is None else logit_tau)
    if compensation is not None:
        logits = logits + compensation.to(device=g.device, dtype=g.dtype)[None, :]
    log_d = torch.logsumexp(torch.cat([logits, sim], dim=1), dim=1)
    pos = (y[:, None] == y[None, :]) & ~eye
    feat_term = (sim.masked_fill(~pos, 0.0) - log_d[:, None] * pos).sum(1)
    label_term = logits.gather(1, y[:, None]).squeeze(1) - log_d
    return (-(alpha * feat_term + label_term) / (alpha * pos.sum(1).to(f.dtype) + 1)).mean()


@register("aduc")
class AdUni(TwoViewContrastive, Stage1Method):
    params = {
        "tau": {"type": "number", "exclusiveMinimum": 0, "default": 0.1,
                "description": "temperature of the feature similarities",
                "source": "paper: Cong et al. Sec. 3.1 (tau = 0.1)"},
        "alpha_max": {"type": "number", "minimum": 0, "default": 1.0,
                      "description": "weight alpha of the feature positives at the first epoch",
                      "source": "paper: Cong et al. Sec. 3.1 (alpha_max = 1.0)"},
        "alpha_min": {"type": "number", "minimum": 0, "default": 0.01,
                      "description": "weight alpha of the feature positives at t_decay",
                      "source": "paper: Cong et al. Sec. 3.1 (alpha_min = 0.01)"},
        "t_decay": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                    "description": "epochs over which alpha decays (null: the whole run)",
                    "source": "departure: the run's last epoch (paper: t_decay = 1000 with 400 "
                              "epochs, Sec. 3.1)"},
        "dim": {"type": "integer", "minimum": 1, "default": 128,
                "description": "size of the L2-normalised projection",
                "source": "option: 128-d, as supcon's (the paper gives no size)"},
        "alpha_schedule": {"enum": ["paper", "reference"], "default": "paper",
                           "description": "paper: Eq. 3 recomputed per epoch; reference: the "
                                          "reference code's compounded cosine",
                           "source": "paper: Cong et al. Eq. 3 per epoch (thomascong121/AdUni@61d8c18 "
                                     "util.py:116-120 compounds it: alpha_schedule reference)"},
        "logit_compensation": {"enum": ["log_prior", "none"], "default": "log_prior",
                               "description": "log_prior: + log(n_k / N) on the classifier "
                                              "branch's logits (reference); none: the paper's Eq. 3",
                               "source": "reference: thomascong121/AdUni@61d8c18 losses.py:181-184 "
                                         "+ log(weight) (the paper's Eq. 3 has none)"},
        "logit_tau": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                      "description": "temperature of the classifier branch (null: tau, the paper; "
                                     "the reference: 1.0)",
                      "source": "paper: Cong et al. Eqs. 2-3 divide the logits by tau (reference "
                                "losses.py:183: supt 1.0)"},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.compensation = (log_prior(self.class_counts)
                             if self.p["logit_compensation"] == "log_prior" else None)
        self._on_device = DeviceConstants(compensation=self.compensation) if self.compensation is not None else None

    def alpha(self, epoch: int) -> float:
        t_decay = self.p["t_decay"] if self.p["t_decay"] is not None else max(self.epochs - 1, 1)
        fn = aduc_alpha if self.p["alpha_schedule"] == "paper" else aduc_alpha_compounded
        return fn(epoch, t_decay, self.p["alpha_max"], self.p["alpha_min"])

    def loss(self, net, x, y, epoch):
        v1, v2 = x
        feats = net.features(torch.cat([v1, v2]))
        f = self.head(feats)
        g = net.classifier(feats)
        comp = None if self._on_device is None else self._on_device("compensation", g.device, g.dtype)
        return {"aduc": aduc_loss(f, g, torch.cat([y, y]), self.alpha(epoch), self.p["tau"],
                                  comp, self.p["logit_tau"])}
