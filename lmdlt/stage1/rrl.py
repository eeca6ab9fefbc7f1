"""LMD stage 1: Relation-aware Representation Learning (RRL) with the MRC module.

A student f.g sees a strongly augmented view x_s, a mean teacher f'.g' (EMA of the student,
initialised as a copy of it) a weakly augmented view x_w of the same image:

    L_stage1 = L_CE + lambda_1 * (L_sample + L_channel + prob_weight * L_prob)

* L_sample: Gram matrices z z^T (B x B) of student and teacher features (pooled encoder output).
* L_channel: Gram matrices z^T z (C x C).
* L_prob: KL(teacher || student) of the class distributions, summed, divided by B.

Options (defaults: the paper where it is explicit, the reference code where the paper is not):

* ``ce_view``: ``weak`` — the paper (L_CE on f.g(x_w), an extra student pass on the weak view);
  ``strong`` — the reference code (CE on the student's strong-view output).
* ``gram``: ``reference`` — each Gram row L2-normalised, sum of squared differences / B for
  both terms (the reference code; the paper's Eqs. 4-5 print no reduction to a scalar);
  ``paper`` — raw Gram matrices, sum of squared differences / B (sample) and / C (channel).
* ``consistency_start_epoch``: the consistency terms are on from this (0-based) epoch; the
  reference code's ``epoch > 20`` is 21. Before it only L_CE trains (warm-up).
* ``ema_decay``: teacher decay min(1 - 1/(step + 1), ema_decay), step counted from 0.
* ``teacher_bn``: ``batch`` — the teacher's BatchNorm uses batch statistics (the reference
  code never puts its teacher in eval mode); ``running`` — eval mode with the student's
  running statistics copied at every step.

Only the student is saved: the trainer checkpoints ``net``; the teacher lives here.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from ..data.transforms import train_transform
from .base import Stage1Method, register


# --- the loss terms (pure functions, unit-tested) -----------------------------------------

def gram_sample(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    s = z @ z.T
    return F.normalize(s, p=2, dim=1) if normalize else s


def gram_channel(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    s = z.T @ z
    return F.normalize(s, p=2, dim=1) if normalize else s


def sample_loss(z_s: torch.Tensor, z_t: torch.Tensor, gram: str = "reference") -> torch.Tensor:
    """L_sample: squared differences of the B x B Gram matrices, summed, / B."""
    norm = _gram_normalize(gram)
    return (gram_sample(z_s, norm) - gram_sample(z_t, norm)).pow(2).sum() / z_s.shape[0]


def channel_loss(z_s: torch.Tensor, z_t: torch.Tensor, gram: str = "reference") -> torch.Tensor:
    """L_channel: squared differences of the C x C Gram matrices, summed, / B (reference) or
    / C (paper)."""
    norm = _gram_normalize(gram)
    d = (gram_channel(z_s, norm) - gram_channel(z_t, norm)).pow(2).sum()
    return d / (z_s.shape[0] if gram == "reference" else z_s.shape[1])


def prob_loss(logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """L_prob: KL(teacher || student) summed over the batch and classes, / B."""
    return F.kl_div(F.log_softmax(logits_s, 1), F.softmax(logits_t, 1), reduction="sum") / logits_s.shape[0]


def _gram_normalize(gram: str) -> bool:
    if gram not in ("reference", "paper"):
        raise ValueError(f"gram: unknown mode {gram!r} (reference, paper)")
    return gram == "reference"


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float, step: int,
                copy_buffers: bool = False) -> float:
    """teacher <- a * teacher + (1 - a) * student on parameters, a = min(1 - 1/(step+1), decay);
    returns a. Buffers (BatchNorm statistics) are copied when ``copy_buffers``."""
    a = min(1.0 - 1.0 / (step + 1), decay)
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(a).add_(ps.detach(), alpha=1.0 - a)
    if copy_buffers:
        for bt, bs in zip(teacher.buffers(), student.buffers()):
            bt.copy_(bs)
    return a


# --- augmentations ------------------------------------------------------------------------

class GridDropout(nn.Module):
    """Zero a regular grid of square holes (albumentations' GridDropout idea) on a CHW tensor:
    a grid unit of a random size in [unit_min, unit_max] (fractions of the side) and a random
    offset; in every unit a hole of side ``ratio * unit`` is dropped. Applied with probability p."""

    def __init__(self, ratio: float = 0.5, unit_min: float = 0.2, unit_max: float = 0.5,
                 p: float = 0.5) -> None:
        super().__init__()
        self.ratio, self.unit_min, self.unit_max, self.p = ratio, unit_min, unit_max, p

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or torch.rand(()) >= self.p:
            return img
        h, w = img.shape[-2:]
        side = min(h, w)
        lo = max(2, int(round(self.unit_min * side)))
        hi = max(lo, int(round(self.unit_max * side)))
        unit = int(torch.randint(lo, hi + 1, ()))
        hole = max(1, int(round(self.ratio * unit)))
        oy, ox = (int(v) for v in torch.randint(0, unit, (2,)))
        mask = torch.ones(h, w, dtype=torch.bool)
        for y0 in range(oy - unit, h, unit):
            for x0 in range(ox - unit, w, unit):
                mask[max(y0, 0):max(y0 + hole, 0), max(x0, 0):max(x0 + hole, 0)] = False
        return img * mask.to(img.dtype)


class _ColorJitterAnyChannels(nn.Module):
    """Colour jitter; saturation and hue only for 3-channel images (undefined for grey)."""

    def __init__(self, strength: float, hue: float) -> None:
        super().__init__()
        self.grey = v2.ColorJitter(brightness=strength, contrast=strength)
        self.rgb = v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=hue)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.rgb(img) if img.shape[-3] == 3 else self.grey(img)


class TwoViews:
    """Per-sample transform returning (strong view, weak view) of one uint8 CHW image."""

    def __init__(self, strong, weak) -> None:
        self.strong, self.weak = strong, weak

    def __call__(self, img: torch.Tensor):
        return self.strong(img), self.weak(img)


@register("rrl")
class RelationAwareRepresentation(Stage1Method):
    params = {
        "lambda_1": {"type": "number", "minimum": 0, "default": 10.0,
                     "description": "weight of the consistency terms (paper 10)"},
        "prob_weight": {"type": "number", "minimum": 0, "default": 0.5,
                        "description": "weight of L_prob inside the bracket (paper 1/2)"},
        "ce_weight": {"type": "number", "minimum": 0, "default": 1.0},
        "ce_view": {"enum": ["weak", "strong"], "default": "weak",
                    "description": "weak: paper (student on x_w); strong: reference code"},
        "gram": {"enum": ["reference", "paper"], "default": "reference",
                 "description": "reference: row-L2-normalised Gram, /B; paper: raw Gram, /B and /C"},
        "consistency_start_epoch": {"type": "integer", "minimum": 0, "default": 21,
                                    "description": "0-based epoch the consistency terms start (reference: epoch > 20)"},
        "ema_decay": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.999},
        "teacher_bn": {"enum": ["batch", "running"], "default": "batch"},
        "flip": {"type": "boolean", "default": True,
                 "description": "random horizontal flip in both views (paper: flip in strong and weak)"},
        "rotation_degrees": {"type": "number", "minimum": 0, "default": 30.0},
        "blur_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
        "blur_sigma": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                       "minItems": 2, "maxItems": 2, "default": [0.1, 1.0]},
        "jitter": {"type": "number", "minimum": 0, "default": 0.4,
                   "description": "colour jitter strength (brightness, contrast; saturation for RGB)"},
        "jitter_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.8},
        "hue": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.1},
        "grid_dropout_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
        "grid_dropout_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.teacher: nn.Module | None = None
        self.steps = 0
        self._pending_teacher_state: dict | None = None

    def train_transform(self, augment, size):
        base = train_transform(augment, size)
        flip = [v2.RandomHorizontalFlip()] if self.p["flip"] else []
        weak = v2.Compose([base, *flip])
        strong = v2.Compose([
            base, *flip,
            v2.RandomApply([v2.GaussianBlur(3, sigma=tuple(self.p["blur_sigma"]))], p=self.p["blur_p"]),
            v2.RandomRotation(self.p["rotation_degrees"]),
            v2.RandomApply([_ColorJitterAnyChannels(self.p["jitter"], self.p["hue"])], p=self.p["jitter_p"]),
            GridDropout(self.p["grid_dropout_ratio"], p=self.p["grid_dropout_p"]),
        ])
        return TwoViews(strong, weak)

    def _teacher(self, net: nn.Module) -> nn.Module:
        if self.teacher is None:
            self.teacher = copy.deepcopy(net)
            for q in self.teacher.parameters():
                q.requires_grad_(False)
            if self._pending_teacher_state is not None:  # resumed: the teacher is built from net lazily
                self.teacher.load_state_dict(self._pending_teacher_state)
                self._pending_teacher_state = None
        return self.teacher

    def state_dict(self):
        state = {"steps": self.steps}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_state_dict(self, state):
        self.steps = int(state["steps"])
        self.teacher = None
        self._pending_teacher_state = state.get("teacher")

    def loss(self, net, x, y, epoch):
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise ValueError("rrl expects (strong, weak) views from its train_transform")
        xs, xw = x
        teacher = self._teacher(net)
        consistency = epoch >= self.p["consistency_start_epoch"] and self.p["lambda_1"] > 0
        z_s = logits_s = None
        if consistency or self.p["ce_view"] == "strong":  # no strong pass when nothing uses it
            z_s = net.features(xs)
            logits_s = net.classifier(z_s)
        logits_ce = logits_s if self.p["ce_view"] == "strong" else net(xw)
        terms = {"ce": self.p["ce_weight"] * F.cross_entropy(logits_ce, y)}
        if consistency:
            teacher.train(self.p["teacher_bn"] == "batch")
            with torch.no_grad():
                z_t = teacher.features(xw)
                logits_t = teacher.classifier(z_t)
            lam = self.p["lambda_1"]
            terms["sample"] = lam * sample_loss(z_s, z_t, self.p["gram"])
            terms["channel"] = lam * channel_loss(z_s, z_t, self.p["gram"])
            terms["prob"] = lam * self.p["prob_weight"] * prob_loss(logits_s, logits_t)
        return terms

    def after_step(self, net):
        ema_update_(self._teacher(net), net, self.p["ema_decay"], self.steps,
                    copy_buffers=self.p["teacher_bn"] == "running")
        self.steps += 1
