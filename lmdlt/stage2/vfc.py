"""VFC (LMD's Virtual Features Compensation): the M-step of ICC, alone, on cached features.

One M-step (Eqs. 7-8): estimate every class's Gaussian N(mu_k, Sigma_k) from the frozen
encoder's training features under a sampler (class-balanced in the paper), draw exactly R
virtual features per class, and train a re-initialised linear classifier on them with CE. No
encoder update: this is "LMD w/o ICC". The draw is chunked (``gaussian.iter_virtual_batches``),
so R = 50,000, K = 23, C = 512 never materialises the 2.4 GB matrix of virtual features.

Variants (``features`` / ``mode``):

* ``features: virtual, mode: sampled`` — the paper's VFC.
* ``features: real`` — "w/o VFC": the same number (R per class) of *real* training features,
  drawn class-balanced with replacement, instead of virtual ones.
* ``mode: implicit`` — beyond the paper, R -> infinity: the classifier minimises the closed-form
  ISDA upper bound of the expected CE under each class's Gaussian (``gaussian.isda_logits``),
  full batch over the K Gaussians, ``implicit_steps`` optimiser steps; no sample is drawn.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..divergence import DivergenceGuard
from ..resume import rng_state, set_rng_state
from .base import Stage2Method, register
from .guards import check_finite_grads, check_finite_terms
from .gaussian import cholesky, class_statistics, ema_update, isda_logits, iter_virtual_batches

log = logging.getLogger("lmdlt.stage2")

# The M-step's parameters, shared with ICC. Defaults are the LMD reference code's values.
MSTEP_PARAMS = {
    "virtual_per_class": {"type": "integer", "minimum": 1, "default": 50000,
                          "description": "R: virtual features drawn per class and M-step (paper 50,000)",
                          "source": "paper: LMD Sec. 4.7 (R = 50,000 for all experiments)"},
    "m_sampler": {"enum": ["class_balanced", "instance", "sqrt"], "default": "class_balanced",
                  "description": "sampling of the training features the Gaussians are estimated from "
                                 "(paper: class-balanced, Eq. 7; Table 5 'uniform' is instance)",
                  "source": "paper: LMD Sec. 3.4.2, Eq. 7, and Table 5"},
    "cov_reg": {"type": "number", "minimum": 0, "default": 1e-2,
                "description": "added to the covariance diagonal (reference code 1e-2)",
                "source": "reference: stage2.py virtual_representations (covariance + 1e-2 I)"},
    "stats_decay": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.999,
                    "description": "EMA of mean/covariance across iterations: min(1 - 1/(j+1), decay)",
                    "source": "reference: stage2.py distribution_ema_update (paper Sec. 3.4.2: an EMA)"},
    "features": {"enum": ["virtual", "real"], "default": "virtual",
                 "description": "virtual: VFC; real: class-balanced resampled real features (w/o VFC)",
                 "source": "paper: LMD Sec. 3.4.1 (VFC); real is our 'w/o VFC' ablation (docs/lmd.md)"},
    "mode": {"enum": ["sampled", "implicit"], "default": "sampled",
             "description": "sampled: R draws per class; implicit: R -> infinity (ISDA bound)",
             "source": "paper: LMD Algorithm 1 line 13 (R samples per class); implicit is an "
                       "option of ours"},
    "m_epochs": {"type": "integer", "minimum": 1, "default": 1,
                 "description": "passes over the R*K features per M-step (reference 1)",
                 "source": "reference: stage2.py, one pass over the virtual features per iteration"},
    "m_batch_size": {"type": "integer", "minimum": 1, "default": 352,
                     "description": "virtual features per classifier SGD step",
                     "source": "reference: the stage-2 batch size of its config, 352"},
    "m_lr": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
             "description": "classifier SGD learning rate (paper/reference 1e-5)",
             "source": "paper: LMD Sec. 4.2 (classifier lr 1e-5)"},
    "m_momentum": {"type": "number", "minimum": 0, "default": 0.9,
                   "description": "classifier SGD momentum",
                   "source": "reference: stage2.py SGD momentum 0.9"},
    "m_weight_decay": {"type": "number", "minimum": 0, "default": 1e-4,
                       "description": "classifier SGD weight decay",
                       "source": "reference: stage2.py SGD weight_decay 1e-4"},
    "implicit_steps": {"type": "integer", "minimum": 1, "default": 500,
                       "description": "mode implicit: full-batch optimiser steps per M-step",
                       "source": "option: ours (mode implicit is beyond the paper)"},
    "isda_strength": {"type": "number", "minimum": 0, "default": 1.0,
                      "description": "mode implicit: scale of the covariance term (1 = the exact bound)",
                      "source": "option: ours; 1 is the exact ISDA bound of the expected CE"},
}


class MStep:
    """State and work of the M-step: EMA of the class statistics, classifier training."""

    def __init__(self, p: dict, num_classes: int) -> None:
        self.p = p
        self.k = num_classes
        self.mu: torch.Tensor | None = None
        self.cov: torch.Tensor | None = None
        self.chol: torch.Tensor | None = None
        self.step = 0
        self.mu_now: torch.Tensor | None = None
        self.chol_now: torch.Tensor | None = None
        # reference: the first step of the first M-step (ICC: of iteration 1)
        self.divergence = DivergenceGuard("M-step")

    def draw_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, Cholesky factor) the virtual features are drawn from: the EMA (the paper) or,
        with ``virtual_stats: current``, this iteration's estimate (the reference)."""
        if self.mu_now is not None:
            return self.mu_now, self.chol_now
        return self.mu, self.chol

    def estimate(self, features: np.ndarray, labels: np.ndarray, generator: torch.Generator) -> None:
        """Class statistics of these features, folded into the EMA (float64)."""
        mu, cov, counts = class_statistics(features, labels, self.k, self.p["cov_reg"],
                                           self.p["m_sampler"], generator)
        self.mu = ema_update(self.mu, mu, self.p["stats_decay"], self.step)
        self.cov = ema_update(self.cov, cov, self.p["stats_decay"], self.step)
        self.chol = cholesky(self.cov)
        # ICC's virtual_stats: current (the reference) draws from this estimate, not the EMA
        self.mu_now, self.chol_now = (mu, cholesky(cov)) if self.p.get("virtual_stats") == "current" else (None, None)
        self.step += 1
        log.info("M-step %d: class statistics from %s sampling (drawn per class %s)", self.step,
                 self.p["m_sampler"], counts.tolist())

    def state_dict(self) -> dict:
        return {"mu": self.mu, "cov": self.cov, "chol": self.chol, "step": self.step,
                "mu_now": self.mu_now, "chol_now": self.chol_now,
                "divergence": self.divergence.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.mu, self.cov, self.chol, self.mu_now, self.chol_now = (
            None if state.get(k) is None else state[k].cpu()
            for k in ("mu", "cov", "chol", "mu_now", "chol_now"))
        self.step = int(state["step"])
        self.divergence.load_state_dict(state.get("divergence"))

    def _batches(self, features, labels, generator, device=None):
        p = self.p
        if p["features"] == "virtual":
            mu, chol = self.draw_statistics()
            return iter_virtual_batches(mu, chol, p["virtual_per_class"], p["m_batch_size"],
                                        generator, device=device)
        # w/o VFC: R real features per class, drawn with replacement (class-balanced)
        y = np.asarray(labels)
        idx = np.concatenate([
            np.flatnonzero(y == k)[torch.randint(int((y == k).sum()), (p["virtual_per_class"],),
                                                 generator=generator).numpy()]
            for k in range(self.k)])
        idx = idx[torch.randperm(len(idx), generator=generator).numpy()]
        x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.int64)

        def gen():
            for s in range(0, len(idx), p["m_batch_size"]):
                b = torch.as_tensor(idx[s:s + p["m_batch_size"]])
                yield x[b], yt[b]
        return gen()

    def steps_per_epoch(self) -> int:
        return math.ceil(self.p["virtual_per_class"] * self.k / self.p["m_batch_size"])

    def train(self, layer: nn.Linear, opt: torch.optim.Optimizer, generator: torch.Generator,
              features=None, labels=None, sched=None, start_epoch: int = 0,
              totals: tuple[float, float] = (0.0, 0.0),
              after_epoch: Callable[[int, float, float], None] | None = None) -> dict:
        """Train ``layer`` on this M-step's features; ``sched`` (optional) steps per batch.

        Resuming (sampled mode): ``start_epoch`` passes already done, ``totals`` their
        (loss sum, count); ``after_epoch(epochs_done, loss_sum, count)`` runs after each pass
        (VFC saves its resume state there). A non-finite loss or gradient stops the run, and so
        does an epoch (implicit mode: the ``implicit_steps``) whose mean loss runs off
        (``lmdlt.divergence``)."""
        if self.mu is None:
            raise RuntimeError("MStep.train before MStep.estimate")
        t0 = time.perf_counter()
        dev = layer.weight.device
        layer.train()
        total, n = totals
        params = list(layer.named_parameters())
        if self.p["mode"] == "implicit":
            mu = self.mu.to(dev, torch.float32)
            cov = self.cov.to(dev, torch.float32)
            target = torch.arange(self.k, device=dev)
            for step in range(self.p["implicit_steps"]):
                loss = F.cross_entropy(isda_logits(layer.weight, layer.bias, mu, cov,
                                                   self.p["isda_strength"]), target)
                where = f"M-step {self.step} (implicit): step {step + 1}"
                check_finite_terms({"isda_ce": loss}, where)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                check_finite_grads(params, where)
                opt.step()
                if sched is not None:
                    sched.step()
                self.divergence.add(loss)
            self.divergence.end_epoch(1, 1, loop=f"M-step {self.step} (implicit)")
            total, n = float(loss.detach()), 1.0  # the last step's loss
        else:
            for epoch in range(start_epoch, self.p["m_epochs"]):
                for step, (v, y) in enumerate(self._batches(features, labels, generator, dev)):
                    v, y = v.to(dev), y.to(dev)
                    loss = F.cross_entropy(layer(v), y)
                    where = f"M-step {self.step}: epoch {epoch + 1}, step {step + 1}"
                    check_finite_terms({"ce": loss}, where)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    check_finite_grads(params, where)
                    opt.step()
                    if sched is not None:
                        sched.step()
                    self.divergence.add(loss, len(y))
                mean, count = self.divergence.end_epoch(epoch + 1, self.p["m_epochs"],
                                                        loop=f"M-step {self.step}")
                total += mean * count
                n += count
                if after_epoch is not None:
                    after_epoch(epoch + 1, total, n)
        out = {"m_loss": total / max(n, 1.0), "m_seconds": time.perf_counter() - t0}
        log.info("M-step %d: %s/%s classifier loss %.4f in %.2fs", self.step, self.p["features"],
                 self.p["mode"], out["m_loss"], out["m_seconds"])
        return out

    def total_steps(self) -> int:
        return (self.p["implicit_steps"] if self.p["mode"] == "implicit"
                else self.p["m_epochs"] * self.steps_per_epoch())


def classifier_optimizer(layer: nn.Linear, p: dict) -> torch.optim.SGD:
    return torch.optim.SGD(layer.parameters(), lr=p["m_lr"], momentum=p["m_momentum"],
                           weight_decay=p["m_weight_decay"])


@register("vfc")
class VirtualFeatureCalibration(Stage2Method):
    """One M-step on the cached features (LMD w/o ICC). Its default rate is constant, as in
    every M-step of ICC (the reference never steps its scheduler), so that "w/o ICC" differs
    from LMD only in the iterations and the E-step (config ``inherit: icc``)."""

    params = {**MSTEP_PARAMS,
              "m_schedule": {"enum": ["constant", "cosine"], "default": "constant",
                             "description": "learning rate over the single M-step: constant as in ICC's "
                                            "M-step and the reference; cosine decay to 0",
                             "source": "reference: constant (stage2.py never steps its MultiStepLR), "
                                       "as ICC's M-step"}}

    def fit(self, train, val, stage1_classifier, generator):
        feats, labels = train["features"], train["labels"]
        self.mstep = MStep(self.p, self.num_classes)
        saved = self.resume.load() if self.resume is not None else None
        if saved is None:
            self.mstep.estimate(feats, labels, generator)
        self.layer = nn.Linear(feats.shape[1], self.num_classes)
        opt = classifier_optimizer(self.layer, self.p)
        sched = None
        if self.p["m_schedule"] == "cosine":
            steps = max(self.mstep.total_steps(), 1)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        start, totals = 0, (0.0, 0.0)
        if saved is not None:
            self.mstep.load_state_dict(saved["mstep"])
            self.layer.load_state_dict(saved["layer"])
            opt.load_state_dict(saved["optimizer"])
            if sched is not None:
                sched.load_state_dict(saved["scheduler"])
            set_rng_state(saved["rng"], generator)
            start, totals = saved["epoch"], (saved["loss_sum"], saved["count"])
            log.info("resumed from %s: VFC after M-step epoch %d/%d", self.resume.path, start,
                     self.p["m_epochs"])

        def save(epochs_done: int, loss_sum: float, count: float) -> None:
            self.resume.save({"epoch": epochs_done, "loss_sum": loss_sum, "count": count,
                              "mstep": self.mstep.state_dict(), "layer": self.layer.state_dict(),
                              "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict() if sched is not None else None,
                              "rng": rng_state(generator)})

        self.result = self.mstep.train(self.layer, opt, generator, feats, labels, sched,
                                       start_epoch=start, totals=totals,
                                       after_epoch=save if self.resume is not None else None)

    @torch.no_grad()
    def logits(self, features):
        return self.layer(torch.as_tensor(features, dtype=torch.float32)).numpy()

    def state(self):
        return {"weight": self.layer.weight.detach().numpy(), "bias": self.layer.bias.detach().numpy(),
                "class_mean": self.mstep.mu.numpy(), "class_cov_diag": torch.diagonal(self.mstep.cov, 0, 1, 2).numpy()}

    def summary(self):
        return {k: round(v, 6) for k, v in self.result.items()}
