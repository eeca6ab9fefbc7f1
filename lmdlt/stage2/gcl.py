"""GCL's second stage (Li et al., CVPR 2022), as its reference code does it, on cached features:
the stage-1 *cosine* classifier (``lmdlt.stage1.gcl``) is re-trained, encoder frozen, with the
GCL loss at its stage-2 values and class-balanced sampling:
  L = mean_i (1 - p_i)^gamma CE_i,  CE_i = CE(s * (cos_i - noise_mul |eps| a - m 1_y), y_i),
p_i = exp(-CE_i) detached, a_k = (log n_max - log n_k) / max, eps ~ N(0, 1/3^2) clipped to [-1, 1]
(``lmdlt.stage1.gcl.gcl_loss``), cos = normalize(f) . normalize(w_k) (the weight rows are free
parameters normalised in the forward pass, like the reference's ``NormedLinear``).

Reference (github.com/Keke921/GCLLoss, commit c2a6233), ``cifar_train_classifier.py``:
- loss ``GCLLoss(m=0.1, s=20, train_cls=True, noise_mul=0.5, gamma=1.)``, l.220-222
  (``train_cls`` selects the focal form, ``losses.py:80-81``; focal loss ``losses.py:9-13``);
- class-balanced sampling: ``--train_rule BalancedRS`` (l.37) -> ``BalancedDatasetSampler``
  (l.171-173; ``sampler.py:6-42``: weights 1/n_k, with replacement);
- the classifier starts from the stage-1 checkpoint's ``linear.weight`` (l.239-244), the
  encoder is frozen (l.248-249, ``model.eval()`` l.312);
- 30 epochs (l.43), batch 64 (l.48), SGD momentum 0.9 (l.53), weight decay 2e-4 (l.55);
- learning rate ``adjust_learning_rate`` (l.466-476): lr_e = 0.1 * 0.1 * args.lr * (1 + cos(pi e/E))
  for the only parameter group, i.e. 0.02 * 0.1 = 0.002 at the start, cosine to 0 — our
  default ``lr`` is that effective starting rate (0.002).
Defaults: s 20, m 0.1, noise_mul 0.5, noise_std 1/3, gamma 1, epochs 30, batch 64, lr 0.002,
momentum 0.9, weight decay 2e-4, sampler class_balanced.

Departures: (1) the reference trains on mixup'ed *images* every step (``--mixup True``, l.47,
324-336; ``utils.py:142-158``); on cached features there are no images to mix, so mixup is
left out; (2) the cosine schedule is per step (``linear.train_linear``), not per epoch;
(3) ``logits`` returns s * cos (the training scale, no noise or margin) where the reference
evaluates the bare cosine: the same arg-max, softmax probabilities on the trained scale; (4) the
cloud noise is drawn from the fit's generator (so a resumed fit is bit-identical)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..method_registry import with_sources
from ..stage1.gcl import GCL_REF, cloud_amplitudes, cloud_noise, gcl_loss
from .base import Stage2Method, register
from .linear import LINEAR_PARAMS, train_linear


class CosineLinear(nn.Module):
    """cos(f, w_k) for every class row w_k (no bias); rows and features normalised in forward."""

    def __init__(self, weight) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(np.asarray(weight), dtype=torch.float32).clone())

    def forward(self, x):
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


@register("gcl")
class GCLClassifierRetraining(Stage2Method):
    params = with_sources(
        {**LINEAR_PARAMS,
         "epochs": {**LINEAR_PARAMS["epochs"], "default": 30},
         "batch_size": {**LINEAR_PARAMS["batch_size"], "default": 64},
         "lr": {**LINEAR_PARAMS["lr"], "default": 0.002},
         "weight_decay": {**LINEAR_PARAMS["weight_decay"], "default": 2e-4},
         "sampler": {"type": "string", "default": "class_balanced",
                     "description": "sampler of the training features (lmdlt.data.samplers)"},
         "s": {"type": "number", "exclusiveMinimum": 0, "default": 20.0,
               "description": "scale of the cosine logits"},
         "m": {"type": "number", "minimum": 0, "default": 0.1,
               "description": "margin subtracted from the target's cosine"},
         "noise_mul": {"type": "number", "minimum": 0, "default": 0.5,
                       "description": "amplitude of the Gaussian cloud"},
         "noise_std": {"type": "number", "exclusiveMinimum": 0, "default": 1 / 3,
                       "description": "standard deviation of the cloud's noise eps (clipped to [-1, 1])"},
         "gamma": {"type": "number", "minimum": 0, "default": 1.0,
                   "description": "focal exponent of the stage-2 loss (0: plain CE)"}},
        epochs=f"reference: {GCL_REF} cifar_train_classifier.py:43",
        batch_size=f"reference: {GCL_REF} cifar_train_classifier.py:48",
        lr=f"reference: {GCL_REF} cifar_train_classifier.py:51, 466-476 (0.1 x 0.1 x 0.1 x 2 at "
           "epoch 0)",
        momentum=f"reference: {GCL_REF} cifar_train_classifier.py:53",
        weight_decay=f"reference: {GCL_REF} cifar_train_classifier.py:55",
        sampler=f"reference: {GCL_REF} cifar_train_classifier.py:37, 171-173 BalancedRS",
        s=f"reference: {GCL_REF} cifar_train_classifier.py:221 GCLLoss(s=20)",
        m=f"reference: {GCL_REF} cifar_train_classifier.py:221 GCLLoss(m=0.1)",
        noise_mul=f"reference: {GCL_REF} cifar_train_classifier.py:222 noise_mul=0.5",
        noise_std=f"reference: {GCL_REF} losses.py:65 normal.Normal(0, 1/3)",
        gamma=f"reference: {GCL_REF} cifar_train_classifier.py:222 train_cls=True, gamma=1.")

    def fit(self, train, val, stage1_classifier, generator):
        if stage1_classifier is None:
            raise ValueError("gcl (stage 2) re-trains the stage-1 classifier: none in the features file")
        counts = np.bincount(train["labels"], minlength=self.num_classes)
        self.amplitudes = cloud_amplitudes(counts)
        p = self.p

        def loss_fn(cos, y, idx):
            eps = cloud_noise(cos.shape, p["noise_std"], generator)
            return gcl_loss(cos, y, self.amplitudes, eps, p["s"], p["m"], p["noise_mul"], p["gamma"])

        self.layer = train_linear(
            train["features"], train["labels"], self.num_classes, sampler=p["sampler"],
            generator=generator, init=CosineLinear(stage1_classifier["weight"]), loss_fn=loss_fn,
            resume=self.resume, name=self.name, **{k: p[k] for k in LINEAR_PARAMS})

    @torch.no_grad()
    def logits(self, features):
        return (self.p["s"] * self.layer(torch.as_tensor(features, dtype=torch.float32))).numpy()

    def state(self):
        w = self.layer.weight.detach()
        return {"weight": F.normalize(w, dim=1).numpy(), "bias": np.zeros(w.shape[0], np.float32)}
