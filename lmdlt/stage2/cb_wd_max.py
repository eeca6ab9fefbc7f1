"""Weight balancing (Alshammari et al., CVPR 2022), second stage, on cached features: the
stage-1 classifier (weight and bias) is fine-tuned, encoder frozen, with the class-balanced
loss, a large weight decay and MaxNorm. With the stage-1 method ``cb_wd_max`` (CE + weight
decay) this is the paper's "CB+WD+Max".

Reference (github.com/ShadeAlsha/LTR-weight-balancing, commit e89f292),
``demo2_second-stage-training.py``:
- the base model's classifier ``encoder.fc`` weight and bias trained, all else frozen (l.324-329);
- MaxNorm ``MaxNorm_via_PGD(thresh=0.1)`` with its thresholds set from the initial (stage-1)
  weights (l.316-318): one threshold for the weight matrix, ``min + thresh * (max - min)`` of
  its row norms (``utils/regularizers.py:16-28``), the bias never projected (threshold inf,
  l.22-24); rows above it scaled onto it (l.30-50), once after every training epoch
  (``utils/trainval.py:140-142``; no projection before the first epoch);
- loss ``CB_loss(..., "softmax", beta=0.9999, gamma=2.0)`` (l.339-340): in
  ``utils/class_balanced_loss.py:73-94`` the "softmax" type is the *binary* cross-entropy of
  the softmax probabilities against the one-hot labels, every element of sample i weighted by
  w_{y_i}, w_k = (1 - beta) / (1 - beta^{n_k}) normalised to sum to K, averaged over the B x K
  elements (gamma is unused by that type);
- lr 0.01, 10 epochs, weight decay 0.1 (l.335-337), SGD momentum 0.9 (l.346), cosine
  annealing to 0 over the epochs (l.347), batch 64 with shuffling (l.92, 160-164: instance
  sampling).
Defaults: all the above (loss ``cb_softmax_bce``, beta 0.9999, max_norm_thresh 0.1 per epoch,
weight decay 0.1, lr 0.01, 10 epochs, batch 64, momentum 0.9, sampler instance).

Named options (the values this module used before): ``loss: cb_ce`` (CE weighted by the same
class weights), ``max_norm`` (an absolute radius, e.g. 1.0, projected after every step
instead), ``weight_decay: 5.0e-3``.
Departures: the cosine schedule is per step (``linear.train_linear``) where the reference
steps it per epoch, before each epoch (``trainval.py:63``); the reference keeps the epoch of
best *test* per-class accuracy (``trainval.py:152-158``), we keep the last epoch (no test
split is seen in stage 2); the reference's images are augmented every epoch, ours are the
cached features."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.samplers import effective_number_weights
from ..method_registry import with_sources
from ..stage1.cb_wd_max import WB_REF, max_norm_, max_norm_threshold
from .base import Stage2Method, register
from .linear import LINEAR_PARAMS, train_linear


def cb_loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, kind: str) -> torch.Tensor:
    """The class-balanced loss. ``cb_softmax_bce`` (the reference's "softmax" CB_loss): mean
    over the B x K elements of w_{y_i} * BCE(softmax(z_i)_k, 1[k = y_i]); ``cb_ce``: CE
    weighted by w (PyTorch's weighted mean, sum w_{y_i} CE_i / sum w_{y_i})."""
    w = weights.to(logits.device, logits.dtype)
    if kind == "cb_ce":
        return F.cross_entropy(logits, y, weight=w)
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    elem_w = w[y][:, None].expand_as(onehot)
    return F.binary_cross_entropy(logits.softmax(dim=1), onehot, weight=elem_w)


@register("cb_wd_max")
class WeightBalancingClassifier(Stage2Method):
    params = with_sources(
        {**LINEAR_PARAMS,
         "batch_size": {**LINEAR_PARAMS["batch_size"], "default": 64},
         "lr": {**LINEAR_PARAMS["lr"], "default": 0.01},
         "weight_decay": {**LINEAR_PARAMS["weight_decay"], "default": 0.1},
         "beta": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.9999,
                  "description": "effective-number beta of the class weights"},
         "loss": {"enum": ["cb_softmax_bce", "cb_ce"], "default": "cb_softmax_bce",
                  "description": "cb_softmax_bce: the reference's 'softmax' CB_loss (BCE of the "
                                 "softmax vs one-hot, class-weighted); cb_ce: class-weighted CE"},
         "max_norm_thresh": {"type": "number", "minimum": 0, "default": 0.1,
                             "description": "MaxNorm threshold relative to the initial row "
                                            "norms: min + thresh * (max - min)"},
         "max_norm": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                      "description": "absolute radius instead (overrides max_norm_thresh)"},
         "project": {"enum": ["epoch", "step"], "default": "epoch",
                     "description": "MaxNorm projection after every epoch or every step"},
         "sampler": {"type": "string", "default": "instance",
                     "description": "sampler of the training features (lmdlt.data.samplers)"}},
        epochs=f"reference: {WB_REF} demo2_second-stage-training.py:336",
        batch_size=f"reference: {WB_REF} demo2_second-stage-training.py:92",
        lr=f"reference: {WB_REF} demo2_second-stage-training.py:335",
        momentum=f"reference: {WB_REF} demo2_second-stage-training.py:346",
        weight_decay=f"reference: {WB_REF} demo2_second-stage-training.py:337",
        beta=f"reference: {WB_REF} demo2_second-stage-training.py:340",
        loss=f"reference: {WB_REF} demo2_second-stage-training.py:339-340; "
             "utils/class_balanced_loss.py:92-94",
        max_norm_thresh=f"reference: {WB_REF} demo2_second-stage-training.py:316; "
                        "utils/regularizers.py:27",
        max_norm="option: ours, an absolute radius (off)",
        project=f"reference: {WB_REF} utils/trainval.py:140-142 (PGD after each training epoch)",
        sampler=f"reference: {WB_REF} demo2_second-stage-training.py:160-164 (shuffle)")

    def fit(self, train, val, stage1_classifier, generator):
        if stage1_classifier is None:
            raise ValueError("cb_wd_max needs the stage-1 classifier (weight, bias) in the features file")
        w = torch.as_tensor(np.asarray(stage1_classifier["weight"]), dtype=torch.float32)
        layer = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(torch.as_tensor(np.asarray(stage1_classifier["bias"]), dtype=torch.float32))
        self.threshold = (float(self.p["max_norm"]) if self.p["max_norm"] is not None
                          else max_norm_threshold(w, self.p["max_norm_thresh"]))
        counts = np.bincount(train["labels"], minlength=self.num_classes)
        self.class_weights = effective_number_weights(counts, self.p["beta"])
        every = (1 if self.p["project"] == "step"
                 else math.ceil(len(train["labels"]) / self.p["batch_size"]))  # steps per epoch
        steps = {"n": 0}

        def project(l):
            steps["n"] += 1
            if steps["n"] % every == 0:
                max_norm_(l.weight, self.threshold)

        self.layer = train_linear(
            train["features"], train["labels"], self.num_classes, sampler=self.p["sampler"],
            generator=generator, init=layer, resume=self.resume, name=self.name,
            loss_fn=lambda logits, y, idx: cb_loss(logits, y, self.class_weights, self.p["loss"]),
            after_step=project, **{k: self.p[k] for k in LINEAR_PARAMS})

    @torch.no_grad()
    def logits(self, features):
        return self.layer(torch.as_tensor(features, dtype=torch.float32)).numpy()

    def state(self):
        return {"weight": self.layer.weight.detach().numpy(), "bias": self.layer.bias.detach().numpy()}

    def summary(self):
        return {"max_norm_threshold": self.threshold}
