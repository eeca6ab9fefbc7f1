"""CC-SAM: Class-Conditional Sharpness-Aware Minimization (Zhou, Li, Zhao, Heng, Gong, "Class-
Conditional Sharpness-Aware Minimization for Deep Long-Tailed Recognition", CVPR 2023), stage 1.

Reference: github.com/zzpustc/CC-SAM (commit 651d3df), ``train_cifar.py`` ``train`` (l.115-213,
the feature-learning stage, epochs < ``stage``), with ``utils/utils.py``, ``utils/pytorch.py``
and ``configs/Cifar10.json``. Per batch, as the reference does it:

- mixup (``mixup`` true, Cifar10.json:23; ``mixup_alpha`` 1.0, :16): lam ~ Beta(a, a) once per
  batch, a random permutation, x = lam x + (1 - lam) x[perm] (utils.py:315-331); per-sample
  l_i = lam CE(o_i, y_i) + (1 - lam) CE(o_i, y_perm(i)) (train_cifar.py:129-133,
  utils/loss.py:98-99).
- Only the classifier (weight and bias) is perturbed (train_cifar.py:140), once per class c in
  the batch, from g_c = the gradient of mean_{i in c} l_i w.r.t. each classifier tensor (l.146-150).
  Per tensor (weight, bias separately; l.163-170), with P = the classifier's parameter count
  (l.123, utils.py:334-347), ||w|| = the norm of the classifier's *weights* (not gradients,
  ``grad_norm`` in utils/pytorch.py:19-28, plus 1e-12, l.156) and n_c the class's training count
  (``pre_compute_class_ratio``, utils.py:88-105: raw counts, l.103):

      rho_c = noise_ratio * sqrt(||w||) / sqrt(||g_c||) / sqrt(2) / (n_c - 1)^(1/4) / P^(1/4)
      e_c   = rho_c * sqrt(P) * g_c / ||g_c||                                  (l.166-168)

  so the radius grows towards the tail as (n_c - 1)^(-1/4). ``noise_ratio`` 1e-6 (Cifar10.json:26).
- The flat term: CE(classifier_{w + e_c}(z_i), y_i) for the samples of class c, on the *same*
  features z (the backbone runs once; label y = the un-permuted label, l.172-176), e_c a constant.
- loss = (1 - flat_ratio) * mean_i l_i + flat_ratio * mean_i flat_i, one backward, one SGD step
  (l.184-194); ``flat_ratio`` 0.3 (Cifar10.json:25; 0.5 in Cifar100.json:25).

The reference restores the classifier through ``param.data`` before the backward; checked here
(PyTorch 2) that its gradients are those of F.linear(z, w + e_c) w.r.t. z and w, which is what
this module computes. That is one backward of a combined loss, not a second forward/backward at
w + e: ``step: reference`` (default) does it inside ``loss`` and needs no trainer hook.
``step: two_pass`` is our option, not the reference: the trainer's SAM-style two-pass step
(``base.SharpnessStep``) on the classifier, with the class-conditional radius applied per
classifier row k (row k's first-pass gradient, n_k), the update mixing (1 - flat_ratio) g(w)
+ flat_ratio g(w + e) like the reference's loss.

Departures: (1) the reference's stage 2 (epochs 200-230: class-balanced classifier re-training
with class-wise feature perturbation, ``train_sample``, l.40-113) is not here: pair cc_sam with a
stage-2 method (cRT is the closest); (2) its optimiser and schedule (SGD lr 0.1, wd 2e-4, batch
64, warm-up + steps at 160/180 of 200, Cifar10.json:13-42, utils.py:219-280) are the variant's,
so that every baseline shares CE's budget (docs/methods.md); (3) best-validation selection, not
the reference's best-test epoch (l.374-380); (4) guards the reference lacks: n_c - 1 is clamped
to >= 1 (a one-image class would give an infinite radius) and a zero ||g_c|| gives e_c = 0
(the reference divides by 0); (5) under DDP the per-class gradients are the rank's own batch
(the reference's DataParallel sees the whole batch); (6) the classifier part runs in fp32 under
autocast (in bf16, w + e with e ~ 1e-6 would round to w).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import SharpnessStep, Stage1Method, register
from .common import mix_images

REF = "zzpustc/CC-SAM@651d3df"


def class_radius_perturbation(grads: list[torch.Tensor], param_norm: torch.Tensor, count: float,
                              num_params: int, noise_ratio: float) -> list[torch.Tensor]:
    """The reference's e_c for each classifier tensor (train_cifar.py:163-170), from g_c
    (``grads``), ||w|| + 1e-12 (``param_norm``), n_c (``count``) and P (``num_params``)."""
    out = []
    tail = math.sqrt(math.sqrt(max(count - 1.0, 1.0)))  # (n_c - 1)^(1/4), guarded (departure 4)
    root_p = math.sqrt(num_params)
    for g in grads:
        g = g.float()
        gn = torch.linalg.vector_norm(g)
        if not bool(gn > 0):
            out.append(torch.zeros_like(g))
            continue
        rho = noise_ratio * torch.sqrt(param_norm) / torch.sqrt(gn) / math.sqrt(2) / tail / math.sqrt(root_p)
        out.append(rho * (g / gn) * root_p)
    return out


def _classifier_norm(classifier) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(q.detach().float())
                                                 for q in classifier.parameters()])) + 1e-12


class ClassConditionalSAM(SharpnessStep):
    """``step: two_pass``: the trainer's two-pass step on the classifier only, row k perturbed
    with the reference's radius rule for class k (its weight row and bias entry as the two
    tensors, their first-pass gradients as g_k)."""

    def __init__(self, method: "ClassConditionalSAMMethod") -> None:
        super().__init__(rho=method.p["noise_ratio"], first_pass_weight=1.0 - method.p["flat_ratio"])
        self.method = method
        self._classifier = None

    def params(self, net, extra):
        self._classifier = net.classifier
        return [net.classifier.weight, net.classifier.bias]

    @torch.no_grad()
    def perturbation(self, params, grads):
        weight, bias = params
        gw, gb = grads
        if gw is None or gb is None:
            return [None, None]
        counts = self.method.class_counts
        num_params = weight.numel() + bias.numel()
        pnorm = _classifier_norm(self._classifier)
        ew, eb = torch.zeros_like(weight), torch.zeros_like(bias)
        for k in range(weight.shape[0]):
            e_row, e_bias = class_radius_perturbation([gw[k], gb[k:k + 1]], pnorm, float(counts[k]),
                                                      num_params, self.rho)
            ew[k], eb[k:k + 1] = e_row.to(ew.dtype), e_bias.to(eb.dtype)
        return [ew, eb]


@register("cc_sam")
class ClassConditionalSAMMethod(Stage1Method):
    params = {
        "flat_ratio": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.3,
                       "description": "weight of the flat (perturbed-classifier) term: "
                                      "(1 - r) CE + r flat",
                       "source": f"reference: {REF} configs/Cifar10.json:25 (Cifar100.json:25: 0.5)"},
        "noise_ratio": {"type": "number", "minimum": 0, "default": 1.0e-6,
                        "description": "scale of the class-conditional radius rho_c",
                        "source": f"reference: {REF} configs/Cifar10.json:26; train_cifar.py:166"},
        "mixup": {"type": "boolean", "default": True,
                  "description": "mix the batch with a permutation of itself",
                  "source": f"reference: {REF} configs/Cifar10.json:23; train_cifar.py:129-133"},
        "mixup_alpha": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                        "description": "lam ~ Beta(alpha, alpha) of the mixup",
                        "source": f"reference: {REF} configs/Cifar10.json:16; utils/utils.py:315-318"},
        "step": {"enum": ["reference", "two_pass"], "default": "reference",
                 "description": "reference: one backward of the combined loss; two_pass: the "
                                "trainer's SAM-style two-pass step",
                 "source": f"reference: {REF} train_cifar.py:184-194 (one backward); two_pass is "
                           "an option of ours"},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self._mix = None  # two_pass: the first pass's mixup draw, reused by the second pass

    def sharpness_step(self):
        return ClassConditionalSAM(self) if self.p["step"] == "two_pass" else None

    def _draw_mix(self, y):
        if not self.p["mixup"]:
            return None
        lam = float(torch.distributions.Beta(self.p["mixup_alpha"], self.p["mixup_alpha"]).sample())
        return lam, torch.randperm(len(y), device=y.device)

    def loss(self, net, x, y, epoch):
        if self.p["step"] == "two_pass" and self._mix is not None:
            mix, self._mix = self._mix, None  # the second pass: the same batch, the same mix
        else:
            mix = self._draw_mix(y)
            if self.p["step"] == "two_pass" and mix is not None:
                self._mix = mix
        if mix is not None:
            lam, perm = mix
            x = mix_images(x, x[perm], lam)
        z = net.features(x)
        clf = net.classifier
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            logits = F.linear(z, clf.weight, clf.bias)
            per_sample = F.cross_entropy(logits, y, reduction="none")
            if mix is not None:
                per_sample = lam * per_sample + (1 - lam) * F.cross_entropy(logits, y[perm], reduction="none")
            if self.p["step"] == "two_pass":
                return {"ce": per_sample.mean()}
            return {"ce": (1 - self.p["flat_ratio"]) * per_sample.mean(),
                    "flat": self.p["flat_ratio"] * self._flat_loss(clf, z, y, per_sample)}

    def _flat_loss(self, clf, z, y, per_sample):
        params = [clf.weight, clf.bias]
        num_params = sum(q.numel() for q in params)
        pnorm = _classifier_norm(clf)
        flat = []
        for c in torch.unique(y).tolist():
            idx = y == c
            grads = torch.autograd.grad(per_sample[idx].mean(), params, retain_graph=True)
            ew, eb = class_radius_perturbation(list(grads), pnorm, float(self.class_counts[c]),
                                               num_params, self.p["noise_ratio"])
            flat.append(F.cross_entropy(F.linear(z[idx], clf.weight + ew, clf.bias + eb), y[idx],
                                        reduction="none"))
        return torch.cat(flat).mean()
