"""LWS, learnable weight scaling (Kang et al. 2020): the stage-1 classifier frozen, a scale f_k
per class learned on its logits, (W x + b)_k * f_k, with class-balanced sampling (as in the
reference implementation, the scale multiplies the whole logit)."""
from __future__ import annotations

import torch
from torch import nn

from ..method_registry import with_sources
from .base import Stage2Method, register
from .linear import LINEAR_PARAMS, train_linear

CB_REF = "facebookresearch/classifier-balancing@22370c6"


class ScaledClassifier(nn.Module):
    def __init__(self, weight, bias) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(torch.as_tensor(weight))
            self.fc.bias.copy_(torch.as_tensor(bias))
        self.fc.requires_grad_(False)
        self.scales = nn.Parameter(torch.ones(weight.shape[0]))

    def forward(self, x):
        return self.fc(x) * self.scales


@register("lws")
class LearnableWeightScaling(Stage2Method):
    params = with_sources(
        {**LINEAR_PARAMS,
         "weight_decay": {"type": "number", "minimum": 0, "default": 0.0,
                          "description": "SGD weight decay on the scales"},
         "sampler": {"type": "string", "default": "class_balanced",
                     "description": "sampler of the training features (lmdlt.data.samplers)"}},
        epochs=f"departure: 10 (reference: 5 epochs, {CB_REF} config/ImageNet_LT/cls_lws.yaml)",
        batch_size=f"departure: 128 (reference: batch 512, {CB_REF} cls_lws.yaml)",
        lr=f"departure: 0.1 at batch 128 (reference: 0.2 at batch 512, {CB_REF} cls_lws.yaml)",
        momentum=f"reference: {CB_REF} config/ImageNet_LT/cls_lws.yaml momentum 0.9",
        weight_decay=f"departure: 0 (reference: 5e-4, {CB_REF} cls_lws.yaml)",
        sampler=f"reference: {CB_REF} cls_lws.yaml ClassAwareSampler (class-balanced)")

    def fit(self, train, val, stage1_classifier, generator):
        if stage1_classifier is None:
            raise ValueError("lws needs the stage-1 classifier (weight, bias) in the features file")
        hp = {k: self.p[k] for k in LINEAR_PARAMS}
        self.model = train_linear(train["features"], train["labels"], self.num_classes,
                                  sampler=self.p["sampler"], generator=generator,
                                  resume=self.resume, name=self.name,
                                  init=ScaledClassifier(stage1_classifier["weight"], stage1_classifier["bias"]),
                                  **hp)

    @torch.no_grad()
    def logits(self, features):
        return self.model(torch.as_tensor(features, dtype=torch.float32)).numpy()

    def state(self):
        return {"scales": self.model.scales.detach().numpy()}

    def summary(self):
        s = self.model.scales.detach().numpy()
        return {"scale_min": float(s.min()), "scale_max": float(s.max())}
