"""LCReg, latent-categories-based recognition (Liu et al.), stage 1.

A pool of M learnable latent category features f'_m (D-dim), encoded by a 1x1 convolution
(a linear layer) FC, e_m = FC(f'_m). With the encoder's spatial feature map f (D x HW, the
input of its final average pooling; a ViT's patch tokens, lmdlt.models.register_feature_map_hook):
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
latent branch regularises the encoder and stage 2 can reuse the cached features.

Devices and precision: the running statistics live on the training device (float64 for the
running merge, the batch moments in float32) and are updated without a host copy or a host
sync (``RunningCovariance``). The latent terms (reconstruction correlations, the ISDA quadratic
form and its logits) are computed in fp32 with autocast off (``runtime.full_precision``): under
bf16 autocast the quadratic form (e_j - e_a)^T Sigma_a (e_j - e_a), a difference of close vectors
through a covariance, and correlation logits of order 100 would be rounded to 8 bits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.encoders import feature_map_channels, register_feature_map_hook
from ..runtime import full_precision
from .base import Stage1Method, register


def reconstruction_loss(e: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    """Eqs. 1-4 for e (M, D) and fmap (B, D, HW)."""
    with full_precision(fmap.device.type):
        return _reconstruction_loss(_fp32(e), _fp32(fmap))


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _reconstruction_loss(e: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
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
    """ISDA bound for feature vectors x (N, D) with latent labels y, classifier rows e (M, D);
    in fp32 at least, autocast off."""
    with full_precision(x.device.type):
        e, x = _fp32(e), _fp32(x)
        cov = cov.to(e.dtype)
        logits = x @ e.t()
        return F.cross_entropy(logits + 0.5 * lam * isda_quadratic(e, cov)[y], y)


def class_scatter(xc: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, m: int,
                  grouped: bool, chunk: int = 1024) -> torch.Tensor:
    """Per-class scatter matrices sum_{p: y_p = k} xc_p xc_p^T, (m, D, D), of vectors ``xc``
    (N, D) with classes ``y``; ``counts`` (m,) the class sizes.

    ``grouped`` (the GPU form): one batched matmul per chunk of rows, every class at once, through
    the one-hot mask: no host sync and m kernels fewer, for m times the multiply-adds (a GPU has
    them to spare, a CPU does not). Otherwise (the CPU form): rows sorted by class, one matmul per
    class on its own rows."""
    d = xc.shape[1]
    if grouped:
        out = xc.new_zeros(m, d, d)
        for start in range(0, len(y), chunk):
            part, yp = xc[start:start + chunk], y[start:start + chunk]
            mask = F.one_hot(yp, m).to(xc.dtype).t()              # m, c
            out += (mask[:, :, None] * part[None]).transpose(1, 2) @ part
        return out
    order = torch.argsort(y, stable=True)
    parts = xc[order].split(counts.long().tolist())
    return torch.stack([p.t() @ p for p in parts])


class RunningCovariance:
    """Per-category running mean and covariance over all vectors seen (Eqs. 5-6), merged batch
    by batch (Chan et al.'s pairwise update) for every category at once, on the vectors' device.
    The running values are float64; a batch's moments float64 on the CPU, float32 on a GPU."""

    def __init__(self, m: int, d: int) -> None:
        self.n = torch.zeros(m, dtype=torch.float64)
        self.mean = torch.zeros(m, d, dtype=torch.float64)
        self.cov = torch.zeros(m, d, d, dtype=torch.float64)

    def to(self, device) -> "RunningCovariance":
        self.n, self.mean, self.cov = (t.to(device) for t in (self.n, self.mean, self.cov))
        return self

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor, grouped: bool | None = None) -> None:
        """Fold vectors ``x`` (N, D) of categories ``y`` in; ``grouped``: ``class_scatter``'s
        form (default: the grouped one on a GPU)."""
        if self.n.device != x.device:
            self.to(x.device)
        # float64 on the CPU (as cheap there); float32 on a GPU, where float64 runs at 1/2 to
        # 1/64 of the float32 rate
        x = x.detach().to(torch.float64 if x.device.type == "cpu" else torch.float32)
        m = self.n.shape[0]
        onehot = F.one_hot(y, m).to(x.dtype)                       # N, m
        n_new = onehot.sum(0)                                      # m
        mu_new = (onehot.t() @ x) / n_new.clamp_min(1)[:, None]     # m, D
        xc = x - mu_new[y]
        if grouped is None:
            grouped = x.device.type != "cpu"
        cov_new = class_scatter(xc, y, n_new, m, grouped) / n_new.clamp_min(1)[:, None, None]
        n_new, mu_new, cov_new = n_new.double(), mu_new.double(), cov_new.double()
        n_old = self.n
        n = n_old + n_new
        safe = n.clamp_min(1)  # a category never seen keeps its zeros
        delta = self.mean - mu_new
        self.cov = ((n_old[:, None, None] * self.cov + n_new[:, None, None] * cov_new) / safe[:, None, None]
                    + (n_old * n_new / safe ** 2)[:, None, None] * delta[:, :, None] * delta[:, None, :])
        self.mean = (n_old[:, None] * self.mean + n_new[:, None] * mu_new) / safe[:, None]
        self.n = n


@register("lcreg")
class LCReg(Stage1Method):
    params = {
        "num_latent": {"type": "integer", "minimum": 2, "default": 40,
                       "description": "M, the number of latent category features",
                       "source": "paper: Liu et al. Sec. 4.4, Table 5 (40 best on CIFAR-10-LT)"},
        "lambda_0": {"type": "number", "minimum": 0, "default": 0.5,
                     "description": "final ISDA strength: lam = lambda_0 * epoch / epochs",
                     "source": "paper: Liu et al. Sec. 3.3, lam = (t / T) lambda_0 following ISDA "
                               "(Wang et al. 2019, lambda_0 = 0.5)"},
        "w_aug": {"type": "number", "minimum": 0, "default": 0.1,
                  "description": "weight of L_aug (alpha in Eq. 10)",
                  "source": "paper: Liu et al. Sec. 3.4, Eq. 10 (alpha = 0.1)"},
        "w_recon": {"type": "number", "minimum": 0, "default": 0.1,
                    "description": "weight of L_recon (beta in Eq. 10)",
                    "source": "paper: Liu et al. Sec. 3.4, Eq. 10 (beta = 0.1)"},
        "w_cls": {"type": "number", "minimum": 0, "default": 1.0,
                  "description": "weight of L_cls (gamma in Eq. 10)",
                  "source": "paper: Liu et al. Sec. 3.4, Eq. 10 (gamma = 1)"},
    }

    def on_train_start(self, net, epochs, steps_per_epoch):
        super().on_train_start(net, epochs, steps_per_epoch)
        # D: the spatial map's channels (the pooled features' too, unless a head layer follows)
        d, m = feature_map_channels(net), self.p["num_latent"]
        self.latent = nn.ParameterDict({"features": nn.Parameter(torch.randn(m, d))})
        self.fc = nn.Linear(d, d)
        self.stats = RunningCovariance(m, d)
        self._fmap = None
        # the last spatial map as (B, D, HW): a CNN's positions, a ViT's patch tokens
        register_feature_map_hook(net.encoder, self._keep_fmap)

    def _keep_fmap(self, fmap):
        self._fmap = fmap

    def modules(self):
        return nn.ModuleDict({"latent": self.latent, "fc": self.fc})

    def state_dict(self):
        return {"n": self.stats.n, "mean": self.stats.mean, "cov": self.stats.cov}

    def load_state_dict(self, state):
        self.stats.n, self.stats.mean, self.stats.cov = (state[k].clone() for k in ("n", "mean", "cov"))

    def loss(self, net, x, y, epoch):
        logits = net(x)
        fmap = self._fmap                                           # B, D, HW
        e = self.fc(self.latent["features"])                        # M, D
        vectors = fmap.permute(0, 2, 1).reshape(-1, fmap.shape[1])  # B*HW, D
        with torch.no_grad():
            latent_y = (vectors @ e.t()).argmax(1)
        self.stats.update(vectors, latent_y)
        lam = self.p["lambda_0"] * epoch / max(self.epochs, 1)
        cov = self.stats.cov.float()
        return {
            "cls": self.p["w_cls"] * F.cross_entropy(logits, y),
            "recon": self.p["w_recon"] * reconstruction_loss(e, fmap),
            "latent_aug": self.p["w_aug"] * latent_aug_loss(e, vectors, latent_y, cov, lam),
        }
