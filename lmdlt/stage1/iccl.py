"""ICCL, interpolative centroid contrastive learning (Tiong et al.), stage 1.

Uniform branch: instance-sampled images x_h, CE (weight omega_u). Interpolative branch: x_h mixed
with a class-aware-sampled image x_t (p(k) proportional to (1/n_k)^gamma, Eq. 2; the trainer's
paired batch), x_f = lam x_h + (1 - lam) x_t, lam ~ Beta(a, a) (a = 1: U(0, 1)) once per batch;
interpolative CE (Eq. 7) and interpolative centroid contrastive loss (Eqs. 4-5):
-lam log p(c^{y_h} | x_f) - (1 - lam) log p(c^{y_t} | x_f), p(c^k | x) = softmax_k(z . c^k / tau),
z the L2-normalised 128-d projection (MLP, one hidden layer). Class centroids are EMAs (Eq. 1,
momentum m, one update per sample in batch order) of the uniform-branch embeddings, not
re-normalised. Warm-up (Sec. 4.3): for the first T epochs (default half the run), only the
uniform branch, CE + the plain centroid loss -log p(c^{y_h} | x_h)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Stage1Method, register
from .common import ProjectionHead, mix_images, soft_cross_entropy


@torch.no_grad()
def ema_update_centroids(centroids: torch.Tensor, z: torch.Tensor, y: torch.Tensor, m: float) -> None:
    """c_k <- m c_k + (1 - m) z_i for every sample i of class k, in batch order, vectorised:
    n samples of a class give c_k <- m^n c_k + (1 - m) sum_j m^(n-1-j) z_j."""
    for k in torch.unique(y).tolist():
        zk = z[y == k]
        n = zk.shape[0]
        powers = m ** torch.arange(n - 1, -1, -1, dtype=z.dtype, device=z.device)
        centroids[k] = m ** n * centroids[k] + (1 - m) * (powers[:, None] * zk).sum(0)


def centroid_logits(z: torch.Tensor, centroids: torch.Tensor, tau: float) -> torch.Tensor:
    return z @ centroids.t() / tau


@register("iccl")
class ICCL(Stage1Method):
    params = {
        "tau": {"type": "number", "exclusiveMinimum": 0, "default": 0.07,
                "description": "temperature of the centroid contrastive loss",
                "source": "paper: Tiong et al. Sec. 4.3 (tau = 0.07)"},
        "momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.99,
                     "description": "EMA momentum m of the class centroids (Eq. 1)",
                     "source": "paper: Tiong et al. Sec. 4.3 (m = 0.99)"},
        "dim": {"type": "integer", "minimum": 1, "default": 128,
                "description": "size d_z of the projection head's embedding",
                "source": "paper: Tiong et al. Sec. 4.3 (d_z = 128)"},
        "gamma": {"type": "number", "default": 0.0,
                  "description": "class-aware sampler of the interpolative branch (0 balanced, 1 reverse)",
                  "source": "paper: Tiong et al. Sec. 4.3 (gamma = 0), Eq. 2"},
        "warmup_epochs": {"type": ["integer", "null"], "minimum": 0, "default": None,
                          "description": "uniform-branch-only epochs (null: half the run)",
                          "source": "departure: half the run (paper: T = 80 / 100 of 200 epochs "
                                    "on CIFAR-LT, Sec. 4.3)"},
        "uniform_weight": {"type": "number", "minimum": 0, "default": 1.0,
                           "description": "omega_u after warm-up (ImageNet-LT 1, CIFAR-LT 0)",
                           "source": "paper: Tiong et al. Sec. 4.3 (omega_u = 1)"},
        "interp_weight": {"type": "number", "minimum": 0, "default": 1.0,
                          "description": "omega_it, weight of the interpolative branch",
                          "source": "paper: Tiong et al. Sec. 4.3 (omega_it = 1)"},
        "beta": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                 "description": "lam ~ Beta(beta, beta)",
                 "source": "paper: Tiong et al. Sec. 3.2, lam ~ U(0, 1) = Beta(1, 1)"},
    }

    def paired_sampler(self):
        return {"name": "class_aware", "gamma": self.p["gamma"]}

    def on_train_start(self, net, epochs, steps_per_epoch):
        super().on_train_start(net, epochs, steps_per_epoch)
        self.head = ProjectionHead(net.feature_dim, self.p["dim"])
        self.centroids = torch.zeros(len(self.class_counts), self.p["dim"])

    def modules(self):
        return nn.ModuleDict({"head": self.head})

    def state_dict(self):
        return {"centroids": self.centroids}

    def load_state_dict(self, state):
        self.centroids = state["centroids"].clone()

    def warmup(self) -> int:
        t = self.p["warmup_epochs"]
        return self.epochs // 2 if t is None else t

    def loss(self, net, x, y, epoch, paired=None):
        self.centroids = self.centroids.to(y.device)
        centroids = self.centroids.clone()  # this step's centroids (updated in place below)
        warm = epoch < self.warmup()
        w_u = 1.0 if warm else self.p["uniform_weight"]
        tau = self.p["tau"]
        terms = {}
        if w_u > 0 or warm:
            g_h = net.features(x)
            z_h = self.head(g_h)
            if w_u > 0:
                terms["ce"] = w_u * F.cross_entropy(net.classifier(g_h), y)
        else:
            with torch.no_grad():
                z_h = self.head(net.features(x))
        if warm:
            terms["cc"] = F.cross_entropy(centroid_logits(z_h, centroids, tau), y)
        else:
            if paired is None:
                raise ValueError("iccl needs the paired class-aware batch (trainer passes paired=)")
            x_t, y_t = paired
            n = min(len(y), len(y_t))
            lam = float(torch.distributions.Beta(self.p["beta"], self.p["beta"]).sample())
            g_f = net.features(mix_images(x[:n], x_t[:n], lam))
            w = self.p["interp_weight"]
            terms["ce_it"] = w * soft_cross_entropy(net.classifier(g_f), y[:n], y_t[:n], lam)
            terms["cc_it"] = w * soft_cross_entropy(centroid_logits(self.head(g_f), centroids, tau),
                                                    y[:n], y_t[:n], lam)
        ema_update_centroids(self.centroids, z_h.detach(), y, self.p["momentum"])
        return terms
