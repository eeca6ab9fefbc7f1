"""GCL, Gaussian clouded logit adjustment (Li et al. 2022/2024), stage 1: on a cosine
classifier, every logit is pushed down by a class-dependent Gaussian "cloud",
cos_k' = cos_k - noise_mul * |eps_k| * a_k / max(a), eps ~ N(0, 1/3^2) clipped to [-1, 1],
a_k = log n_max - log n_k; then CE(s * (cos' - m 1_y), y). Defaults follow the reference code
(s 30, m 0, noise_mul 0.5); its optional mixup is left out. The classifier is kept a cosine
classifier as in ``ldam``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Stage1Method, register
from .common import CosineClassifier, cosine_logits


def cloud_amplitudes(counts) -> torch.Tensor:
    n = torch.as_tensor(counts, dtype=torch.float64).clamp_min(1)
    a = torch.log(n).max() - torch.log(n)
    return (a / a.max() if a.max() > 0 else a).float()


def gcl_loss(cos: torch.Tensor, y: torch.Tensor, amplitudes: torch.Tensor, eps: torch.Tensor,
             s: float, m: float, noise_mul: float) -> torch.Tensor:
    out = cos - noise_mul * eps.abs() * amplitudes.to(cos.device)[None, :]
    out = out - m * F.one_hot(y, cos.shape[1]).to(cos.dtype)
    return F.cross_entropy(s * out, y)


@register("gcl")
class GaussianCloudedLogit(CosineClassifier, Stage1Method):
    params = {
        "s": {"type": "number", "exclusiveMinimum": 0, "default": 30.0},
        "m": {"type": "number", "minimum": 0, "default": 0.0},
        "noise_mul": {"type": "number", "minimum": 0, "default": 0.5},
        "noise_std": {"type": "number", "exclusiveMinimum": 0, "default": 1 / 3},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.amplitudes = cloud_amplitudes(self.class_counts)

    def loss(self, net, x, y, epoch):
        cos, _ = cosine_logits(net, x)
        eps = (torch.randn(cos.shape) * self.p["noise_std"]).clamp(-1, 1).to(cos.device)
        return {"gcl": gcl_loss(cos, y, self.amplitudes, eps, self.p["s"], self.p["m"],
                                self.p["noise_mul"])}
