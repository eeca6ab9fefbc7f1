"""Weight balancing (Alshammari et al., CVPR 2022, "Long-tailed recognition via weight
balancing"), stage 1: cross-entropy with a tuned (large) weight decay. The weight decay is the
*variant's* ``weight_decay`` (the trainer's optimiser): the reference's value is 5e-3
(``demo1_first-stage-training.py:305``, CE l.224, SGD momentum 0.9 l.308, lr 0.01 l.222,
cosine over 320 epochs l.223, 309, batch 64 l.86), which the config sets for this variant.

MaxNorm (optional here, ``max_norm_thresh``; default off, as in the reference's first stage,
which trains with WD only): the projected-gradient MaxNorm of the reference
(``utils/regularizers.py:8-50``, class ``MaxNorm_via_PGD``): one threshold for the
classifier's weight matrix, relative to its row norms when the thresholds are set,
``min + thresh * (max - min)`` (l.16-28; the bias is never projected, threshold inf l.22-24),
and rows with a norm above it scaled back onto it (l.30-50), once after every training epoch
(``utils/trainval.py:140-142``). Here the thresholds are set from the initial weights at the
start of training. ``max_norm`` (an absolute radius, projected after every step) is an option
of ours, off by default: a radius that does not depend on the initial weights, for comparing
runs whose initial row norms differ.

The second half of "CB+WD+Max" (class-balanced loss + weight decay + MaxNorm re-training of the
classifier on the frozen encoder) is the stage-2 method ``cb_wd_max`` on the cached features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Stage1Method, register

WB_REF = "ShadeAlsha/LTR-weight-balancing@e89f292"


@torch.no_grad()
def max_norm_(weight: torch.Tensor, threshold: float) -> None:
    """Rows of ``weight`` with an L2 norm above ``threshold`` are scaled back onto it
    (``regularizers.py:38-50``)."""
    norms = weight.norm(dim=1, keepdim=True)
    weight.mul_(torch.where(norms > threshold, threshold / norms.clamp_min(1e-12), torch.ones_like(norms)))


def max_norm_threshold(weight: torch.Tensor, thresh: float) -> float:
    """``min + thresh * (max - min)`` of the row norms of ``weight`` (``regularizers.py:25-27``)."""
    norms = torch.as_tensor(weight).detach().double().norm(dim=1)
    return float(norms.min() + thresh * (norms.max() - norms.min()))


@register("cb_wd_max")
class WeightBalancing(Stage1Method):
    params = {
        "max_norm_thresh": {"type": ["number", "null"], "minimum": 0, "default": None,
                            "description": "MaxNorm threshold relative to the initial row norms, "
                                           "projected after every epoch (null: no MaxNorm)",
                            "source": f"reference: {WB_REF} demo1_first-stage-training.py:305 "
                                      "(stage 1 is WD only)"},
        "max_norm": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                     "description": "absolute per-row radius projected after every step (null: off)",
                     "source": "option: ours, an absolute radius instead of the reference's "
                               "relative threshold; off"},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        if params.get("max_norm") is not None and params.get("max_norm_thresh") is not None:
            raise ValueError("cb_wd_max: set max_norm_thresh (relative, per epoch) or max_norm "
                             "(absolute, per step), not both")
        self.threshold = None
        self.steps = 0

    def on_train_start(self, net, epochs, steps_per_epoch):
        super().on_train_start(net, epochs, steps_per_epoch)
        if self.p["max_norm_thresh"] is not None:
            self.threshold = max_norm_threshold(net.classifier.weight, self.p["max_norm_thresh"])

    def after_step(self, net):
        self.steps += 1
        if self.p["max_norm"] is not None:
            max_norm_(net.classifier.weight, self.p["max_norm"])
        elif self.threshold is not None and self.steps % self.steps_per_epoch == 0:
            max_norm_(net.classifier.weight, self.threshold)  # the end of an epoch

    def state_dict(self):
        return {"threshold": self.threshold, "steps": self.steps}

    def load_state_dict(self, state):
        if state:
            self.threshold, self.steps = state["threshold"], state["steps"]

    def loss(self, net, x, y, epoch):
        return {"ce": F.cross_entropy(net(x), y)}
