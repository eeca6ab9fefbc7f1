"""ICCL's classifier rebalancing with distillation (Tiong et al., Eq. 9), on cached features:
the linear classifier (initialised from the stage-1 classifier, or afresh) is re-trained with a
class-aware sampler p(k) proportional to (1/n_k)^gamma' (gamma' = 1, the reverse sampler) on
  (1 - w_d) CE(o_S, y) + w_d tau_d^2 KL(softmax(o_T / tau_d) || softmax(o_S / tau_d)),
o_T the stage-1 classifier's logits of the same training features (the ``logits`` stored in
the features file), w_d = 0.5, tau_d = 10; SGD with a cosine schedule, 10 epochs (ICCL: the
stage-1 learning rate x 0.1). The encoder stays frozen (ICCL's ImageNet-LT/iNaturalist
setting); its CIFAR-LT encoder fine-tuning would need the images, not the cached features."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..method_registry import with_sources
from .base import Stage2Method, register
from .linear import LINEAR_PARAMS, train_linear


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, w_d: float,
            tau_d: float) -> torch.Tensor:
    ce = F.cross_entropy(student, y)
    kl = F.kl_div(F.log_softmax(student / tau_d, dim=1), F.log_softmax(teacher / tau_d, dim=1),
                  reduction="batchmean", log_target=True)
    return (1 - w_d) * ce + w_d * tau_d ** 2 * kl


@register("kd_rebalance")
class DistillationRebalancing(Stage2Method):
    params = with_sources(
        {**LINEAR_PARAMS,
         "lr": {**LINEAR_PARAMS["lr"], "default": 0.01},
         "sampler": {"type": "string", "default": "class_aware",
                     "description": "sampler of the training features (lmdlt.data.samplers)"},
         "gamma": {"type": "number", "default": 1.0,
                   "description": "class_aware sampler exponent gamma' (1 reverse, 0 balanced)"},
         "w_d": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                 "description": "weight omega_d of the distillation term"},
         "tau_d": {"type": "number", "exclusiveMinimum": 0, "default": 10.0,
                   "description": "distillation temperature"},
         "init": {"enum": ["stage1", "random"], "default": "stage1",
                  "description": "start from the stage-1 classifier or a fresh one"}},
        epochs="paper: Tiong et al. Sec. 4.3 (10 epochs)",
        batch_size="departure: 128, the stage-1 batch of the paper's CIFAR-LT setting (Sec. 4.3; "
                   "no stage-2 batch given)",
        lr="paper: Tiong et al. Sec. 4.3 (the original learning rate x 0.1)",
        momentum="paper: Tiong et al. Sec. 4.3 (SGD momentum 0.9)",
        weight_decay="departure: the shared linear default 5e-4 (the paper states none for stage 2)",
        sampler="paper: Tiong et al. Eq. 2 with gamma', Sec. 3.6",
        gamma="paper: Tiong et al. Sec. 4.3 (gamma' = 1)",
        w_d="paper: Tiong et al. Sec. 4.3 (omega_d = 0.5)",
        tau_d="paper: Tiong et al. Sec. 4.3 (tau_d = 10)",
        init="option: ours, start from the stage-1 classifier (the teacher)")

    def fit(self, train, val, stage1_classifier, generator):
        if stage1_classifier is None:
            raise ValueError("kd_rebalance needs the stage-1 classifier (weight, bias) in the features file")
        w = torch.as_tensor(np.asarray(stage1_classifier["weight"]), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(stage1_classifier["bias"]), dtype=torch.float32)
        feats = torch.as_tensor(train["features"], dtype=torch.float32)
        teacher = (torch.as_tensor(train["logits"], dtype=torch.float32) if "logits" in train
                   else feats @ w.t() + b)
        layer = nn.Linear(w.shape[1], w.shape[0])
        if self.p["init"] == "stage1":
            with torch.no_grad():
                layer.weight.copy_(w)
                layer.bias.copy_(b)
        opts = {"gamma": self.p["gamma"]} if self.p["sampler"] == "class_aware" else {}
        self.layer = train_linear(
            train["features"], train["labels"], self.num_classes, sampler=self.p["sampler"],
            generator=generator, init=layer, resume=self.resume, name=self.name, sampler_options=opts,
            loss_fn=lambda logits, y, idx: kd_loss(logits, teacher[idx], y, self.p["w_d"], self.p["tau_d"]),
            **{k: self.p[k] for k in LINEAR_PARAMS})

    @torch.no_grad()
    def logits(self, features):
        return self.layer(torch.as_tensor(features, dtype=torch.float32)).numpy()

    def state(self):
        return {"weight": self.layer.weight.detach().numpy(), "bias": self.layer.bias.detach().numpy()}
