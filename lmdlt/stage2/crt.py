"""cRT (Kang et al. 2020): a re-initialised linear classifier re-trained with class-balanced
sampling on the frozen encoder's (cached) training features."""
from __future__ import annotations

import numpy as np
import torch

from ..method_registry import with_sources
from .base import Stage2Method, register
from .linear import LINEAR_PARAMS, train_linear

CB_REF = "facebookresearch/classifier-balancing@22370c6"


@register("crt")
class ClassifierRetraining(Stage2Method):
    params = with_sources(
        {**LINEAR_PARAMS,
         "sampler": {"type": "string", "default": "class_balanced",
                     "description": "sampler of the training features (lmdlt.data.samplers)"}},
        epochs=f"reference: {CB_REF} config/ImageNet_LT/cls_crt.yaml num_epochs: 10",
        batch_size=f"departure: 128 (reference: batch 512, {CB_REF} cls_crt.yaml)",
        lr=f"departure: 0.1 at batch 128 (reference: 0.2 at batch 512, {CB_REF} cls_crt.yaml)",
        momentum=f"reference: {CB_REF} config/ImageNet_LT/cls_crt.yaml momentum 0.9",
        weight_decay=f"reference: {CB_REF} config/ImageNet_LT/cls_crt.yaml weight_decay 5e-4",
        sampler=f"reference: {CB_REF} cls_crt.yaml ClassAwareSampler (class-balanced)")

    def fit(self, train, val, stage1_classifier, generator):
        hp = {k: self.p[k] for k in LINEAR_PARAMS}
        self.layer = train_linear(train["features"], train["labels"], self.num_classes,
                                  sampler=self.p["sampler"], generator=generator,
                                  resume=self.resume, name=self.name, **hp)

    @torch.no_grad()
    def logits(self, features):
        return self.layer(torch.as_tensor(features, dtype=torch.float32)).numpy()

    def state(self):
        return {"weight": self.layer.weight.detach().numpy(), "bias": self.layer.bias.detach().numpy()}
