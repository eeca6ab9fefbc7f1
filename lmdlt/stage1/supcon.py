"""CICL-style supervised contrastive representation learning (Marrakchi et al. 2021, after
Khosla et al. 2020): two augmented views per image, a projection head to L2-normalised
128-d embeddings, the supervised contrastive loss (``common.supcon_loss``, tau 0.1) trains
the encoder. The network's linear classifier is trained at the same time on *detached*
features (an online linear probe, ``probe: true``), so it does not shape the representation
but gives stage-1 predictions and checkpoint selection; the balanced classifier comes from
stage 2 (cRT), as in CICL's second stage."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Stage1Method, register
from .common import TwoViewContrastive, supcon_loss


@register("supcon")
class SupervisedContrastive(TwoViewContrastive, Stage1Method):
    params = {
        "tau": {"type": "number", "exclusiveMinimum": 0, "default": 0.1,
                "description": "temperature of the supervised contrastive loss",
                "source": "paper: Khosla et al. 2020 (tau 0.1)"},
        "dim": {"type": "integer", "minimum": 1, "default": 128,
                "description": "size of the L2-normalised projection",
                "source": "paper: Khosla et al. 2020 (128-d projection)"},
        "probe": {"type": "boolean", "default": True,
                  "description": "train the network's classifier on detached features (an online "
                                 "linear probe: predictions and selection, no effect on the encoder)",
                  "source": "option: ours (no paper value); CICL's classifier comes from stage 2"},
    }

    @property
    def ddp_unused_parameters(self) -> bool:
        """Without the probe the network's classifier gets no gradient (DDP must know)."""
        return not self.p["probe"]

    def loss(self, net, x, y, epoch):
        v1, v2 = x
        feats = net.features(torch.cat([v1, v2]))
        z = self.head(feats)
        terms = {"supcon": supcon_loss(z, torch.cat([y, y]), self.p["tau"])}
        if self.p["probe"]:
            terms["probe_ce"] = F.cross_entropy(net.classifier(feats.detach()), torch.cat([y, y]))
        return terms
