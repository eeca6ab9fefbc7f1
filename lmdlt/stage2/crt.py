"""cRT (Kang et al. 2020): a re-initialised linear classifier re-trained with class-balanced
sampling on the frozen encoder's (cached) training features."""
from __future__ import annotations

import numpy as np
import torch

from .base import Stage2Method, register
from .linear import LINEAR_PARAMS, train_linear


@register("crt")
class ClassifierRetraining(Stage2Method):
    params = {**LINEAR_PARAMS,
              "sampler": {"type": "string", "default": "class_balanced"}}

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
