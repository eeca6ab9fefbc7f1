"""CE-DRW: cross-entropy with deferred re-weighting (Cao et al., NeurIPS 2019, the "CE + DRW"
baseline of LDAM-DRW): plain CE until epoch floor(``drw_start`` * epochs) (0-based), then CE
weighted by the effective-number class weights w_k = (1 - beta) / (1 - beta^{n_k}),
normalised to sum to K (Cui et al. 2019), beta = ``drw_beta``.

Reference (github.com/kaidic/LDAM-DRW, commit 2536330), ``cifar_train.py``:
``--loss_type CE --train_rule DRW`` -> ``nn.CrossEntropyLoss(weight=per_cls_weights)``
(l.210-211) with the DRW weights of l.199-206 (``idx = epoch // 160`` of 200 epochs, l.43;
betas [0, 0.9999]). Defaults: drw_start 0.8 (= 160 / 200), drw_beta 0.9999. The DRW logic is
``ldam.DeferredReweighting`` (shared with ``ldam``).
Learning-rate schedule and selection: as ``ldam``'s (``DeferredReweighting``): the reference's
``adjust_learning_rate`` (l.366-376, the same script and schedule for ``--loss_type CE``) scaled
to the run by default (``lr_schedule: reference``: warm-up over the first 5/200 of the run, x0.01
from the DRW epoch, x0.0001 from floor(0.9 E)), the variant's cosine as ``lr_schedule: trainer``;
``select: best_val`` keeps only epochs from the DRW epoch on.
Departures: as ``ldam``'s (warm-up stepped per optimiser step; best validation epoch, not the
reference's best test epoch)."""
from __future__ import annotations

import torch.nn.functional as F

from .base import Stage1Method, register
from .ldam import DRW_PARAMS, DeferredReweighting


@register("ce_drw")
class CrossEntropyDRW(DeferredReweighting, Stage1Method):
    params = dict(DRW_PARAMS)

    def loss(self, net, x, y, epoch):
        return {"ce": F.cross_entropy(net(x), y, weight=self.drw_weight(epoch, y.device))}
