"""GCL, Gaussian clouded logit adjustment (Li et al., CVPR 2022, "Long-tailed visual
recognition via Gaussian clouded logit adjustment"), stage 1.

On a cosine classifier every logit is pushed down by a class-dependent Gaussian "cloud",
cos_k' = cos_k - noise_mul * |eps_k| * a_k / max(a), eps ~ N(0, 1/3^2) clipped to [-1, 1],
a_k = log n_max - log n_k; then CE(s * (cos' - m 1_y), y).

Reference code (github.com/Keke921/GCLLoss, commit c2a6233):
- the loss: ``losses.py:53-83`` (class ``GCLLoss``: amplitudes l.57-60, noise N(0, 1/3)
  l.65, clipped l.75, cloud l.78, margin on the target l.79, CE of s * output l.83);
- stage-1 values: ``cifar_train_backbone.py:238``, ``GCLLoss(m=0., s=30, noise_mul=0.5)``,
  instance sampling (``--train_rule None``, l.38).
Defaults: s 30, m 0, noise_mul 0.5, noise_std 1/3 (all the reference's).

Departures: the reference's mixup (``--mixup True``, ``cifar_train_backbone.py:39``, 290-293)
is left out; with balanced data (a_max = 0) the reference divides 0 by 0, here the cloud is 0.
The classifier is kept a cosine classifier as in ``ldam`` (unit-norm rows, zero bias), so
stage 2 (``lmdlt.stage2.gcl``) re-trains exactly that classifier. ``gcl_loss`` with
``gamma > 0`` is the reference's stage-2 form (``train_cls=True``: the focal loss of
``losses.py:9-13``, whose modulating factor is detached), shared with stage 2."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Stage1Method, register
from .common import CosineClassifier, DeviceConstants, cosine_logits


GCL_REF = "Keke921/GCLLoss@c2a6233"


def cloud_amplitudes(counts) -> torch.Tensor:
    """a_k / max(a), a_k = log n_max - log n_k (``losses.py:57-60, 78``)."""
    n = torch.as_tensor(counts, dtype=torch.float64).clamp_min(1)
    a = torch.log(n).max() - torch.log(n)
    return (a / a.max() if a.max() > 0 else a).float()


def cloud_noise(shape, std: float, generator: torch.Generator | None = None,
                device=None) -> torch.Tensor:
    """eps ~ N(0, std^2) clipped to [-1, 1] (``losses.py:65, 75``), drawn on ``device`` (that
    device's generator: no host draw and upload per step on a GPU)."""
    return (torch.randn(shape, generator=generator, device=device) * std).clamp(-1, 1)


def gcl_loss(cos: torch.Tensor, y: torch.Tensor, amplitudes: torch.Tensor, eps: torch.Tensor,
             s: float, m: float, noise_mul: float, gamma: float = 0.0) -> torch.Tensor:
    """Mean over the batch of CE(s * (cos - noise_mul |eps| a - m 1_y), y); with ``gamma`` > 0
    each sample's CE is multiplied by the detached (1 - p_y)^gamma, p_y = exp(-CE) (the
    reference's ``focal_loss``, used by its stage 2)."""
    out = cos - noise_mul * eps.to(cos.device, cos.dtype).abs() * amplitudes.to(cos.device, cos.dtype)[None, :]
    out = out - m * F.one_hot(y, cos.shape[1]).to(cos.dtype)
    ce = F.cross_entropy(s * out, y, reduction="none")
    if gamma:
        ce = (1 - torch.exp(-ce).detach()) ** gamma * ce
    return ce.mean()


@register("gcl")
class GaussianCloudedLogit(CosineClassifier, Stage1Method):
    params = {
        "s": {"type": "number", "exclusiveMinimum": 0, "default": 30.0,
              "description": "scale of the cosine logits",
              "source": f"reference: {GCL_REF} cifar_train_backbone.py:238 GCLLoss(s=30)"},
        "m": {"type": "number", "minimum": 0, "default": 0.0,
              "description": "margin subtracted from the target's cosine",
              "source": f"reference: {GCL_REF} cifar_train_backbone.py:238 GCLLoss(m=0.)"},
        "noise_mul": {"type": "number", "minimum": 0, "default": 0.5,
                      "description": "amplitude of the Gaussian cloud",
                      "source": f"reference: {GCL_REF} cifar_train_backbone.py:238 GCLLoss(noise_mul=0.5)"},
        "noise_std": {"type": "number", "exclusiveMinimum": 0, "default": 1 / 3,
                      "description": "standard deviation of the cloud's noise eps (clipped to [-1, 1])",
                      "source": f"reference: {GCL_REF} losses.py:65 normal.Normal(0, 1/3)"},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.amplitudes = cloud_amplitudes(self.class_counts)
        self._on_device = DeviceConstants(amplitudes=self.amplitudes)

    def loss(self, net, x, y, epoch):
        cos, _ = cosine_logits(net, x)
        eps = cloud_noise(cos.shape, self.p["noise_std"], device=cos.device)
        return {"gcl": gcl_loss(cos, y, self._on_device("amplitudes", cos.device, cos.dtype), eps,
                                self.p["s"], self.p["m"], self.p["noise_mul"])}
