"""LMD's Iterative Classifier Calibration (ICC): J iterations of an M-step and an E-step.

Iteration j (Algorithm 1 of the LMD paper, Pan et al.):

* **M-step** — the encoder is frozen; the training images' features are (re-)extracted with the
  current encoder g^(j-1), the per-class Gaussians are estimated under ``m_sampler``
  (class-balanced in the paper, Eq. 7) and folded into an EMA across iterations, R virtual
  features per class are drawn (VFC) and the linear classifier f^j is trained on them with CE
  (``lmdlt.stage2.vfc.MStep``; ``features: real`` and ``mode: implicit`` as there).
* **E-step** — the classifier is frozen; the encoder g^j is fine-tuned on the real training
  images (``e_sampler``: instance-balanced in the paper) with ``lambda_e * (Psi - Phi) + CE``
  (FDC, Eq. 12), Psi/Phi squared Mahalanobis distances with the inverse of the EMA covariance.

Defaults, and where each comes from (reference: peterlipan/LMD ``stage2.py``):

* ``classifier_init: once`` — Algorithm 1 initialises f^0 once and updates f^j; the reference
  creates ``classifier_model`` once, before its loop. ``per_iteration`` (a fresh classifier and
  optimiser in every M-step) is a named option.
* constant learning rates (``lr_milestones: []``) — the reference builds a MultiStepLR
  (milestones 50/100/150) for both optimisers but never calls its ``step()``, so its rates are
  constant; the paper states lr 1e-5 (classifier) and 1e-6 (encoder) and no schedule. A decay
  stays available: ``lr_milestones`` / ``lr_gamma`` multiply both rates at those iterations.
* ``virtual_stats: ema`` — the paper (Sec. 3.2: "the estimated mean and covariance are updated
  using the exponential moving average ... with the unbiased mean and covariance ... we generate
  ... virtual features"); ``current``: the reference, whose ``virtual_representations`` draws
  from this iteration's estimate and uses the EMA only in FDC.
* ``eval_features: post_e_step`` — an iteration is scored as f^j . g^j (the classifier on the
  encoder fine-tuned against it), and the prediction is f^J . g^J as Algorithm 1 outputs;
  ``pre_e_step``: the reference, which scores f^j on features extracted before E-step j (the
  kept encoder is then the pre-E-step one, so the predictions are exactly what was scored).
* ``select: best_val`` — ours: the iteration with the best validation balanced accuracy (the
  test split is never seen); ``last``: the reference and Algorithm 1 (the final iteration).
* ``e_sampler: instance`` (paper), E-step batch 352, ``iterations`` 200, ``lambda_e`` 1e-4,
  e_lr 1e-6, momentum 0.9 and weight decay 1e-4 on both optimisers: the paper / the reference.
  The E-step sees un-augmented images, as in the reference (``transforms.test_transform``).

Reference-code departures, each a named option (defaults follow the paper):

* ``e_label_grad: no_grad`` — the E-step's classifier output is computed under no_grad, so the
  label loss never reaches the encoder (only FDC, and BatchNorm statistics, change it).
* ``fdc_sign: reference`` — the regulariser is Phi - Psi (the reference function's sign).
* ``e_label_loss: gce`` — generalised cross-entropy with ``gce_q`` (0.7) instead of CE.
* ``virtual_stats: current``, ``eval_features: pre_e_step``, ``select: last`` (above).

Beyond the paper: ``fdc_reference_dim`` and ``fdc_floor`` (``gaussian.fdc_loss``): at a small
feature dimension C the paper's lambda_e makes FDC negligible (below 1 % of the E-step loss at
C = 32), so "w/o FDC" equals LMD; ``fdc_reference_dim: 512`` keeps the paper's relative weight.
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..data.samplers import make_sampler
from ..divergence import DivergenceGuard
from ..progress import Pace, bar
from ..resume import rng_state, set_rng_state
from ..runtime import loader_options
from .base import Stage2Method, register
from .guards import check_finite_grads, check_finite_terms
from .gaussian import fdc_loss, generalized_ce
from .vfc import MSTEP_PARAMS, MStep, classifier_optimizer

log = logging.getLogger("lmdlt.stage2")


def e_step_terms(net: nn.Module, layer: nn.Linear, x: torch.Tensor, y: torch.Tensor,
                 mu: torch.Tensor, chol: torch.Tensor, p: dict) -> dict[str, torch.Tensor]:
    """The E-step's loss terms for one batch: ``label`` (CE or GCE of the frozen classifier's
    output; under no_grad in the reference mode) and, when lambda_e > 0, ``fdc`` (already
    multiplied by lambda_e)."""
    z = net.features(x)
    if p["e_label_grad"] == "paper":
        out = layer(z)
    elif p["e_label_grad"] == "no_grad":
        with torch.no_grad():
            out = layer(z)
    else:
        raise ValueError(f"e_label_grad: unknown mode {p['e_label_grad']!r} (paper, no_grad)")
    if p["e_label_loss"] == "ce":
        label = F.cross_entropy(out, y)
    elif p["e_label_loss"] == "gce":
        label = generalized_ce(out, y, p["gce_q"])
    else:
        raise ValueError(f"e_label_loss: unknown loss {p['e_label_loss']!r} (ce, gce)")
    terms = {"label": label}
    if p["lambda_e"] > 0:
        terms["fdc"] = p["lambda_e"] * fdc_loss(z, y, mu, chol, p["fdc_sign"],
                                                p.get("fdc_reference_dim"), p.get("fdc_floor"))
    return terms


def e_step_loader(x_tr: np.ndarray, y_tr: np.ndarray, p: dict, generator: torch.Generator,
                  device) -> DataLoader:
    """The E-step's batches of real training images, drawn with ``e_sampler``."""
    return DataLoader(
        TensorDataset(torch.from_numpy(x_tr).permute(0, 3, 1, 2), torch.from_numpy(y_tr)),
        batch_size=p["e_batch_size"], sampler=make_sampler(y_tr, p["e_sampler"], generator),
        drop_last=len(y_tr) > p["e_batch_size"],
        # decoded images in memory: no worker on the CPU, workers + pinned memory on CUDA
        **loader_options(device, torch.get_num_threads(), in_memory=True))


def lr_factor(p: dict, iteration: int) -> float:
    """Multiplier of both learning rates at 0-based ``iteration`` (1 unless milestones are set)."""
    return p["lr_gamma"] ** sum(iteration >= m for m in p["lr_milestones"])


@torch.no_grad()
def encode_images(net: nn.Module, images: np.ndarray, device, batch_size: int = 512) -> np.ndarray:
    """Features (N, C) of uint8 NHWC images with the encoder in eval mode."""
    net.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(images[s:s + batch_size]).permute(0, 3, 1, 2).to(device)
        out.append(net.features(x).float().cpu())
    return torch.cat(out).numpy()


@register("icc")
class IterativeClassifierCalibration(Stage2Method):
    """Needs the stage-1 encoder and the images: run by ``lmdlt train-stage2-encoder``."""

    needs_encoder = True

    def __init__(self, params: dict, num_classes: int) -> None:
        super().__init__(params, num_classes)
        # reference: the first E-step's first batch (the M-step's guard is mstep.divergence)
        self.e_divergence = DivergenceGuard("E-step")
    params = {
        **MSTEP_PARAMS,
        "iterations": {"type": "integer", "minimum": 1, "default": 200,
                       "description": "J, E/M iterations (reference 200)",
                       "source": "reference: stage2_epochs 200 (the paper varies J, Fig. 6)"},
        "lambda_e": {"type": "number", "minimum": 0, "default": 1e-4,
                     "description": "weight of the FDC regulariser (paper 1e-4; 0 = w/o FDC)",
                     "source": "paper: LMD Sec. 4.7 and Table 4 (lambda_e = 1e-4)"},
        "e_sampler": {"enum": ["instance", "class_balanced", "sqrt"], "default": "instance",
                      "description": "sampling of the E-step's images (paper: instance; Table 5)",
                      "source": "paper: LMD Table 5 (instance sampling in the E-step)"},
        "e_epochs": {"type": "integer", "minimum": 1, "default": 1,
                     "description": "passes over the training images per E-step",
                     "source": "paper: LMD Algorithm 1 line 16 (one E-step update per iteration)"},
        "e_batch_size": {"type": "integer", "minimum": 1, "default": 352,
                         "description": "training images per encoder SGD step",
                         "source": "reference: stage2_batch_size 352"},
        "e_lr": {"type": "number", "minimum": 0, "default": 1e-6,
                 "description": "encoder SGD learning rate (paper 1e-6)",
                 "source": "paper: LMD Sec. 4.2 (encoder lr 1e-6)"},
        "e_momentum": {"type": "number", "minimum": 0, "default": 0.9,
                       "description": "encoder SGD momentum",
                       "source": "reference: stage2.py SGD momentum 0.9"},
        "e_weight_decay": {"type": "number", "minimum": 0, "default": 1e-4,
                           "description": "encoder SGD weight decay",
                           "source": "reference: stage2.py SGD weight_decay 1e-4"},
        "e_label_loss": {"enum": ["ce", "gce"], "default": "ce",
                         "description": "ce: paper Eq. 12; gce: reference code (q = gce_q)",
                         "source": "paper: LMD Eq. 12 (CE; the reference's GCE is e_label_loss gce)"},
        "gce_q": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.7,
                  "description": "q of the generalised cross-entropy (e_label_loss gce)",
                  "source": "reference: stage2.py generalised CE, q = 0.7"},
        "e_label_grad": {"enum": ["paper", "no_grad"], "default": "paper",
                         "description": "no_grad: reference code (label loss never reaches the encoder)",
                         "source": "paper: LMD Eq. 12 (the CE term trains g^j; the reference's "
                                   "no_grad is e_label_grad no_grad)"},
        "fdc_sign": {"enum": ["paper", "reference"], "default": "paper",
                     "description": "paper: Psi - Phi; reference: Phi - Psi",
                     "source": "paper: LMD Eq. 12 (Psi - Phi; the reference returns Phi - Psi)"},
        "classifier_init": {"enum": ["once", "per_iteration"], "default": "once",
                            "description": "once: Algorithm 1 and the reference (created before the loop); "
                                           "per_iteration: a fresh classifier in every M-step",
                            "source": "paper: LMD Algorithm 1 line 9 (f^0 initialised once), and "
                                      "the reference (classifier_model built once)"},
        "lr_milestones": {"type": "array", "items": {"type": "integer", "minimum": 1},
                          "default": [],
                          "description": "iterations at which both learning rates are multiplied by lr_gamma "
                                         "(default none: constant, as the reference runs)",
                          "source": "reference: stage2.py builds a MultiStepLR (50/100/150) and "
                                    "never steps it: constant rates"},
        "lr_gamma": {"type": "number", "exclusiveMinimum": 0, "default": 0.1,
                     "description": "factor of both learning rates at each lr_milestones entry",
                     "source": "option: ours, used only with lr_milestones (PyTorch MultiStepLR's "
                               "default 0.1)"},
        "virtual_stats": {"enum": ["ema", "current"], "default": "ema",
                          "description": "virtual features drawn from the EMA statistics (paper) or this "
                                         "iteration's estimate (reference)",
                          "source": "paper: LMD Sec. 3.4.2 (virtual features from the EMA-updated "
                                    "mean and covariance)"},
        "eval_features": {"enum": ["post_e_step", "pre_e_step"], "default": "post_e_step",
                          "description": "f^j scored on the encoder after E-step j (ours, Algorithm 1's "
                                         "output) or before it (reference)",
                          "source": "paper: LMD Algorithm 1 line 19 (prediction f^j . g^j)"},
        "select": {"enum": ["best_val", "last"], "default": "best_val",
                   "description": "iteration kept: best validation BACC (ours) or the last (reference)",
                   "source": "departure: the best validation iteration (reference and Algorithm 1: "
                             "the last, select last)"},
        "fdc_reference_dim": {"type": ["integer", "null"], "minimum": 1, "default": None,
                              "description": "scale FDC by this / C (512: the paper's weight at any C); null: paper",
                              "source": "paper: LMD Eq. 12 unscaled (the scaling is an option of ours)"},
        "fdc_floor": {"type": ["number", "null"], "minimum": 0, "default": None,
                      "description": "lower bound of the FDC term, per feature dimension; null: none (paper)",
                      "source": "paper: LMD Eq. 12 unbounded (the floor is an option of ours)"},
    }

    def fit(self, train, val, stage1_classifier, generator):
        raise RuntimeError("icc fine-tunes the encoder: it needs the checkpoint and the images, "
                           "run it with `lmdlt train-stage2-encoder` (the pipeline does)")

    def fit_encoder(self, net: nn.Module, images: dict, generator: torch.Generator, device) -> None:
        """Run the J iterations. ``images``: {"train": (uint8 NHWC, labels), "val": (...)};
        the test split is never handed over. Leaves the kept encoder and classifier in
        ``self.net`` (``net.classifier`` replaced by the calibrated one)."""
        from sklearn.metrics import balanced_accuracy_score  # lazy: ~2 s of import per job

        p = self.p
        x_tr, y_tr = images["train"]
        x_val, y_val = images["val"]
        k = self.num_classes
        net = net.to(device)
        for q in net.classifier.parameters():
            q.requires_grad_(False)  # the stage-1 classifier is replaced, never trained here
        opt_e = torch.optim.SGD(net.encoder.parameters(), lr=p["e_lr"], momentum=p["e_momentum"],
                                weight_decay=p["e_weight_decay"])
        loader = e_step_loader(x_tr, y_tr, p, generator, device)
        mstep = MStep(p, k)
        layer: nn.Linear | None = None
        opt_m = None
        best = {"iteration": 0, "val_bacc": -1.0, "net": None, "layer": None}
        self.history = []
        self.e_divergence = DivergenceGuard("E-step")  # a fresh reference per fit
        start = 0
        saved = self.resume.load(device) if self.resume is not None else None
        if saved is not None:
            net.load_state_dict(saved["net"])
            opt_e.load_state_dict(saved["opt_e"])
            mstep.load_state_dict(saved["mstep"])
            if saved["layer"] is not None:
                layer = nn.Linear(net.feature_dim, k).to(device)
                layer.load_state_dict(saved["layer"])
                opt_m = classifier_optimizer(layer, p)
                opt_m.load_state_dict(saved["opt_m"])
            best = saved["best"]
            self.history = saved["history"]
            for row in self.history:  # the tracked run shows the whole curve
                self.tracker.log_step(row["iteration"], row)
            set_rng_state(saved["rng"], generator)
            self.e_divergence.load_state_dict(saved.get("e_divergence"))
            start = saved["iteration"]
            log.info("resumed from %s: ICC after iteration %d/%d", self.resume.path, start,
                     p["iterations"])
        pace = Pace(p["iterations"], start)
        # a bar on a terminal only; a log file gets the one line per iteration below
        iterations = bar(range(start, p["iterations"]), total=p["iterations"], initial=start,
                         desc="ICC", unit="iter")
        for j in iterations:
            factor = lr_factor(p, j)
            t0 = time.perf_counter()
            # M-step: features of the current encoder, Gaussians (EMA), classifier on VFC
            feats = encode_images(net, x_tr, device)
            mstep.estimate(feats, y_tr, generator)
            if layer is None or p["classifier_init"] == "per_iteration":
                layer = nn.Linear(feats.shape[1], k).to(device)
                opt_m = classifier_optimizer(layer, p)
            for g in opt_m.param_groups:
                g["lr"] = p["m_lr"] * factor
            m_out = mstep.train(layer, opt_m, generator, feats, y_tr)
            t_m = time.perf_counter() - t0
            pre = None
            if p["eval_features"] == "pre_e_step":  # the reference scores f^j on g^(j-1)
                pre = {"val_feats": encode_images(net, x_val, device),
                       "net": copy.deepcopy(net.state_dict())}
            # E-step: classifier frozen, encoder fine-tuned on the real images
            t1 = time.perf_counter()
            e_out = self._e_step(net, layer, loader, mstep, opt_e, p["e_lr"] * factor, device)
            t_e = time.perf_counter() - t1
            val_feats = pre["val_feats"] if pre is not None else encode_images(net, x_val, device)
            with torch.no_grad():
                val_pred = layer(torch.from_numpy(val_feats).to(device)).argmax(1).cpu().numpy()
            val_bacc = float(balanced_accuracy_score(y_val, val_pred))
            row = {"iteration": j + 1, **m_out, **e_out, "val_bacc": val_bacc,
                   # the rates the optimisers really ran at (not the configured ones)
                   "m_lr": opt_m.param_groups[0]["lr"], "e_lr": opt_e.param_groups[0]["lr"],
                   "m_seconds": t_m, "e_seconds": t_e, "seconds": time.perf_counter() - t0}
            self.history.append(row)
            self.tracker.log_step(j + 1, row)
            e_txt = " ".join(f"{n} {v:.4f}" for n, v in e_out.items())
            log.info("ICC iteration %d/%d: M loss %.4f, E %s, val_bacc %.4f; %.2fs (M %.2fs, E %.2fs) %s",
                     j + 1, p["iterations"], m_out["m_loss"], e_txt, val_bacc, row["seconds"], t_m, t_e,
                     pace.text(j + 1))
            iterations.set_postfix(val_bacc=f"{val_bacc:.4f}", refresh=False)
            if p["select"] == "last" or val_bacc > best["val_bacc"]:
                best = {"iteration": j + 1, "val_bacc": val_bacc,
                        "net": pre["net"] if pre is not None else copy.deepcopy(net.state_dict()),
                        "layer": copy.deepcopy(layer.state_dict())}
            if self.resume is not None:
                self.resume.save({
                    "iteration": j + 1, "net": net.state_dict(), "opt_e": opt_e.state_dict(),
                    "mstep": mstep.state_dict(), "layer": layer.state_dict(),
                    "opt_m": opt_m.state_dict(), "best": best, "history": self.history,
                    "rng": rng_state(generator), "e_divergence": self.e_divergence.state_dict()})
        iterations.close()
        net.load_state_dict(best["net"])
        net.classifier.load_state_dict(best["layer"])
        self.net = net.eval()
        self.kept = best
        self.mstep = mstep
        log.info("kept iteration %d (select=%s, val_bacc %.4f); %.2fs per iteration on average",
                 best["iteration"], p["select"], best["val_bacc"],
                 float(np.mean([r["seconds"] for r in self.history])))

    def _e_step(self, net, layer, loader, mstep: MStep, opt, lr, device) -> dict[str, float]:
        p = self.p
        for g in opt.param_groups:
            g["lr"] = lr
        layer.eval()
        for q in layer.parameters():
            q.requires_grad_(False)
        mu = mstep.mu.to(device, torch.float32)
        chol = mstep.chol.to(device, torch.float32)
        net.train()
        sums: dict[str, float] = {}
        seen = 0
        params = [(n, q) for n, q in net.encoder.named_parameters()]
        for epoch in range(p["e_epochs"]):
            for step, (x, y) in enumerate(bar(loader, desc=f"E-step {mstep.step}", unit="batch")):
                x, y = x.to(device), y.to(device)
                terms = e_step_terms(net, layer, x, y, mu, chol, p)
                where = f"ICC iteration {mstep.step} E-step: epoch {epoch + 1}, step {step + 1}"
                check_finite_terms(terms, where)
                loss = sum(terms.values())
                if loss.requires_grad:  # no_grad label loss with lambda_e = 0: BN statistics only
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    check_finite_grads(params, where)
                    opt.step()
                for n, v in terms.items():
                    sums[n] = sums.get(n, 0.0) + float(v.detach()) * len(y)
                seen += len(y)
                self.e_divergence.add(loss, len(y))
            self.e_divergence.end_epoch(epoch + 1, p["e_epochs"], lr,
                                        loop=f"ICC iteration {mstep.step} E-step")
        for q in layer.parameters():
            q.requires_grad_(True)
        return {f"e_{n}": v / max(seen, 1) for n, v in sums.items()}

    @torch.no_grad()
    def logits(self, features):
        w = self.net.classifier
        return w(torch.as_tensor(features, dtype=torch.float32, device=w.weight.device)).cpu().numpy()

    def state(self):
        out = {"weight": self.net.classifier.weight.detach().cpu().numpy(),
               "bias": self.net.classifier.bias.detach().cpu().numpy()}
        for key in ("seconds", "m_seconds", "e_seconds", "val_bacc", "m_loss"):
            out[f"history/{key}"] = np.array([r[key] for r in self.history], dtype=np.float64)
        return out

    def summary(self):
        return {"kept_iteration": self.kept["iteration"], "kept_val_bacc": round(self.kept["val_bacc"], 6),
                "iterations": len(self.history),
                "seconds_per_iteration": round(float(np.mean([r["seconds"] for r in self.history])), 4),
                "seconds_total": round(float(sum(r["seconds"] for r in self.history)), 4)}
