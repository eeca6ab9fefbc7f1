"""LCReg, latent-categories-based recognition (Liu et al.), stage 1.

A pool of M learnable latent category features f'_m (D-dim), encoded by a 1x1 convolution
(a linear layer) FC, e_m = FC(f'_m). With the encoder's spatial feature map f (D x HW, the
input of its final average pooling):
- similarity maps S^m = sigmoid(e_m^T f) (Eq. 1), normalised over the M categories by softmax
  (Eq. 2); reconstruction f_hat = sum_m e_m S_hat^m (Eq. 3);
- reconstruction loss (Eq. 4): C_f = f_hat^T f (HW x HW), cross-entropy of each row of C_f with
  its diagonal element as the target, averaged over positions and images;
- latent augmentation (Eqs. 5-9): every spatial feature vector belongs to the latent category
  y' that matches it best (argmax_m e_m^T f_p); running mean and covariance Sigma_m of each
  category's feature vectors are updated every step (Eqs. 5-6); the ISDA upper bound with the
  latent categories as an M-way classifier (weights e_j, no bias):
  mean log sum_j exp((e_j - e_y')^T f_p + lam/2 (e_j - e_y')^T Sigma_y' (e_j - e_y')),
  lam = lambda_0 * epoch / epochs (as ISDA);
- L = 0.1 L_aug + 0.1 L_recon + 1 L_cls (Eq. 10), L_cls the CE of the network's classifier.

The paper leaves the "decoder" and the samples of a latent category unspecified; our reading
(above) keeps the network's pooled features and linear classifier for prediction, so the
latent branch regularises the encoder and stage 2 can reuse the cached features."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Stage1Method, register


def reconstruction_loss(e: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    """Eqs. 1-4 for e (M, D) and fmap (B, D, HW)."""
    s = torch.sigmoid(torch.einsum("md,bdp->bmp", e, fmap))
    s_hat = F.softmax(s, dim=1)
    f_hat = torch.einsum("md,bmp->bdp", e, s_hat)
    corr = torch.einsum("bdp,bdq->bpq", f_hat, fmap)
    b, hw, _ = corr.shape
    target = torch.arange(hw, device=fmap.device).repeat(b)
    return F.cross_entropy(corr.reshape(b * hw, hw), target)


def isda_quadratic(e: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Q[a, j] = (e_j - e_a)^T Sigma_a (e_j - e_a)."""
    delta = e[None, :, :] - e[:, None, :]                      # [a, j, d]
    return torch.einsum("ajd,ade,aje->aj", delta, cov, delta)


def latent_aug_loss(e: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cov: torch.Tensor,
                    lam: float) -> torch.Tensor:
    """ISDA bound for feature vectors x (N, D) with latent labels y, classifier rows e (M, D)."""
    logits = x @ e.t()
    return F.cross_entropy(logits + 0.5 * lam * isda_quadratic(e, cov)[y], y)


class RunningCovariance:
    """Per-category running mean and covariance over all vectors seen (Eqs. 5-6)."""

    def __init__(self, m: int, d: int) -> None:
        self.n = torch.zeros(m, dtype=torch.float64)
        self.mean = torch.zeros(m, d, dtype=torch.float64)
        self.cov = torch.zeros(m, d, d, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.detach().to("cpu", torch.float64)
        y = y.detach().cpu()
        for k in torch.unique(y).tolist():
            xk = x[y == k]
            n_new = xk.shape[0]
            mu_new = xk.mean(0)
            c = xk - mu_new
            cov_new = c.t() @ c / n_new
            n_old = self.n[k]
            n = n_old + n_new
            delta = self.mean[k] - mu_new
            self.cov[k] = ((n_old * self.cov[k] + n_new * cov_new) / n
                           + n_old * n_new * torch.outer(delta, delta) / n ** 2)
            self.mean[k] = (n_old * self.mean[k] + n_new * mu_new) / n
            self.n[k] = n


def _final_pool(encoder: nn.Module) -> nn.Module:
    pools = [m for m in encoder.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if not pools:
        raise ValueError("lcreg needs an encoder that ends in nn.AdaptiveAvgPool2d (its input is the "
                         "spatial feature map)")
    return pools[-1]


@register("lcreg")
class LCReg(Stage1Method):
    params = {
        "num_latent": {"type": "integer", "minimum": 2, "default": 40},
        "lambda_0": {"type": "number", "minimum": 0, "default": 0.5},
        "w_aug": {"type": "number", "minimum": 0, "default": 0.1},
        "w_recon": {"type": "number", "minimum": 0, "default": 0.1},
        "w_cls": {"type": "number", "minimum": 0, "default": 1.0},
    }

    def on_train_start(self, net, epochs, steps_per_epoch):
        super().on_train_start(net, epochs, steps_per_epoch)
        d, m = net.feature_dim, self.p["num_latent"]
        self.latent = nn.ParameterDict({"features": nn.Parameter(torch.randn(m, d))})
        self.fc = nn.Linear(d, d)
        self.stats = RunningCovariance(m, d)
        self._fmap = None
        _final_pool(net.encoder).register_forward_pre_hook(self._keep_fmap)

    def _keep_fmap(self, module, inputs):
        self._fmap = inputs[0]

    def modules(self):
        return nn.ModuleDict({"latent": self.latent, "fc": self.fc})

    def state_dict(self):
        return {"n": self.stats.n, "mean": self.stats.mean, "cov": self.stats.cov}

    def load_state_dict(self, state):
        self.stats.n, self.stats.mean, self.stats.cov = (state[k].clone() for k in ("n", "mean", "cov"))

    def loss(self, net, x, y, epoch):
        logits = net(x)
        fmap = self._fmap.flatten(2)                                # B, D, HW
        e = self.fc(self.latent["features"])                        # M, D
        vectors = fmap.permute(0, 2, 1).reshape(-1, fmap.shape[1])  # B*HW, D
        with torch.no_grad():
            latent_y = (vectors @ e.t()).argmax(1)
        self.stats.update(vectors, latent_y)
        lam = self.p["lambda_0"] * epoch / max(self.epochs, 1)
        cov = self.stats.cov.to(vectors.device, vectors.dtype)
        return {
            "cls": self.p["w_cls"] * F.cross_entropy(logits, y),
            "recon": self.p["w_recon"] * reconstruction_loss(e, fmap),
            "latent_aug": self.p["w_aug"] * latent_aug_loss(e, vectors, latent_y, cov, lam),
        }
