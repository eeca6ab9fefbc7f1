"""Plain cross-entropy (the "CE" baseline)."""
from __future__ import annotations

import torch.nn.functional as F

from .base import Stage1Method, register


@register("ce")
class CrossEntropy(Stage1Method):
    params = {
        "label_smoothing": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0,
                            "description": "label smoothing of the CE target (0: plain cross-entropy)",
                            "source": "option: ours; 0 keeps the plain cross-entropy baseline "
                                      "('CE', LMD paper Sec. 4.2)"},
    }

    def loss(self, net, x, y, epoch):
        return {"ce": F.cross_entropy(net(x), y, label_smoothing=self.p["label_smoothing"])}
