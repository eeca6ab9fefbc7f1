"""LMD stage 1: Relation-aware Representation Learning (RRL) with the MRC module.

A student f.g sees a strongly augmented view x_s, a mean teacher f'.g' (EMA of the student,
initialised as a copy of it) a weakly augmented view x_w of the same image:

    L_stage1 = L_CE + lambda_1 * (L_sample + L_channel + prob_weight * L_prob)

* L_sample: Gram matrices z z^T (B x B) of student and teacher features (pooled encoder output).
* L_channel: Gram matrices z^T z (C x C).
* L_prob: KL(teacher || student) of the class distributions, summed, divided by B.

Both Gram terms are computed over the global batch: under DDP the features of every process are
gathered first (``distributed.gather_batch``, gradients flowing back to each process's rows) and
B is the global batch, the per-process batch x processes, as the reference's BatchLoss and
ChannelLoss (``utils/loss.py``: ``GatherLayer``, ``N = batch_size * world_size``; its
``batch_size`` 128 is per process, on 4 GPUs: N = 512). So N processes compute what one process
computes on the whole batch. How the terms depend on N (``gram: reference``): every row of a
normalised Gram matrix has norm 1, so L_sample (N rows, / N) stays of order 1 whatever N; L_channel
(C rows, / N) falls with N: as 1/N for a systematic difference between the student's and the
teacher's channel correlations, and as 1/N^2 where the difference is sample-wise noise that the
C x C average over N samples shrinks (measured on 512 ReLU features with Gaussian noise 0.3:
1.54, 0.394, 0.102, 0.027 at N = 32, 64, 128, 256; L_sample 0.012, 0.009, 0.008, 0.007). A
smaller global batch than the reference's 512 thus weighs the channel term more at the same
lambda_1.

Precision: the Gram matrices (and the KL term) are computed in fp32 with autocast off
(``runtime.full_precision``). Under bf16 autocast (CUDA's default here) the matmuls would round
the Gram entries to 8 bits, and when student and teacher features are close that rounding, not
their difference, makes L_sample: 2.8x the fp32 value for 64 x 512 features 1 % apart, 7-25x in
the simulations of the CUDA policy (tests/test_cuda_paths.py).

Defaults and their sources (paper: Pan et al., LMD, Sec. 3.1 and Eqs. 1-5; reference:
peterlipan/LMD ``utils/train.py``, ``data/transforms.py``, ``config/*.yaml``):

* ``lambda_1`` 10 and ``prob_weight`` 0.5: the paper (Eq. 5 and the text below it). The
  reference weighs the terms separately (CE 1, prob 5, sample 10, channel 10), which is the same.
* ``ce_view: weak``: the paper (L_CE on f.g(x_w)); ``strong`` is the reference (CE on the
  student's only pass, on x_s, ``utils/train.py``).
* ``gram: reference``: each Gram row L2-normalised, sum of squared differences / B for both
  terms (``utils/loss.py`` BatchLoss/ChannelLoss); ``paper``: raw Gram, / B and / C.
* ``consistency_start_epoch`` 21: the reference's ``if epoch > 20`` (0-based); before it only
  L_CE trains (warm-up), and ``select: best_val`` never keeps such an epoch (``selectable``):
  a warm-up epoch is a CE model, not RRL. No epoch after the warm-up is an error.
* ``ema_decay`` 0.999: the reference's ``min(1 - 1/(step + 1), ema_decay)``; the EMA covers
  parameters only (``update_ema_variables``).
* ``teacher_bn: batch``: the reference never puts its teacher in eval mode, so its BatchNorm uses
  batch statistics; ``running``: eval mode with the student's running statistics copied each step.
* ``bn_stats`` (where the student's BatchNorm running statistics come from; the evaluated and
  saved model uses them). The reference's student runs once per step, on x_s: its statistics come
  from one (strong) distribution. With ``ce_view: weak`` the student runs twice (x_s, then x_w),
  and letting both passes update the statistics mixes two distributions; strong views with
  black borders and dropped grid cells shift them far from clean images (measured on HAM10000
  at 16 px: stem running variance 2.5x its clean value, validation collapsing to the head
  class). ``weak_pass`` (default): the strong pass runs with BatchNorm momentum 0 (batch
  statistics in the forward pass, running statistics untouched), so they come from x_w only;
  ``recalibrate``: after every epoch, before validation, the running statistics are
  re-estimated on the clean training images (``torch.optim.swa_utils.update_bn``, no weight
  change); ``all``: every train-mode pass updates them (a plain train-mode network). Measured
  side by side in docs/lmd.md.

Augmentations (on uint8 CHW, torchvision v2), reference ``data/transforms.py``:

* weak: horizontal and vertical flip, p 0.5 each (``flip``, ``vflip``).
* strong: the same flips; blur p 0.5 (reference: one of motion/median/box blur; here a 3x3
  Gaussian, a named departure); ShiftScaleRotate p 0.5 with rotation +-45 deg, shift 0.0625,
  scale 0.2 and a *reflected* border (``affine_p``, ``rotation_degrees``, ``translate``,
  ``scale``, ``border: reflect``; ``constant`` fills black, a departure); RGB shift +-15 p 0.5
  (``rgb_shift``), brightness/contrast +-0.2 p 0.5 (``jitter``, ``jitter_p``; saturation and
  hue 0 as in the reference); grid dropout p 0.2 with albumentations' default grid (unit
  ``max(2, side // 10)``, holes half a unit: ``grid_dropout_*``). The reference's
  one-of(grid/elastic/optical distortion) at p 0.7 is a departure: off by default
  (``distortion_p``: torchvision's ElasticTransform when > 0).

Only the student is saved: the trainer checkpoints ``net``; the teacher lives here.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from ..data.transforms import train_transform
from ..runtime import full_precision
from .base import Stage1Method, register
from .distributed import gather_batch


# --- the loss terms (pure functions, unit-tested) -----------------------------------------

def gram_sample(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    s = z @ z.T
    return F.normalize(s, p=2, dim=1) if normalize else s


def gram_channel(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    s = z.T @ z
    return F.normalize(s, p=2, dim=1) if normalize else s


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors (autocast outputs) in fp32; fp32 and fp64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def sample_loss(z_s: torch.Tensor, z_t: torch.Tensor, gram: str = "reference") -> torch.Tensor:
    """L_sample: squared differences of the B x B Gram matrices, summed, / B (in fp32 at least,
    autocast off)."""
    norm = _gram_normalize(gram)
    with full_precision(z_s.device.type):
        z_s, z_t = _fp32(z_s), _fp32(z_t)
        return (gram_sample(z_s, norm) - gram_sample(z_t, norm)).pow(2).sum() / z_s.shape[0]


def channel_loss(z_s: torch.Tensor, z_t: torch.Tensor, gram: str = "reference") -> torch.Tensor:
    """L_channel: squared differences of the C x C Gram matrices, summed, / B (reference) or
    / C (paper) (in fp32 at least, autocast off)."""
    norm = _gram_normalize(gram)
    with full_precision(z_s.device.type):
        z_s, z_t = _fp32(z_s), _fp32(z_t)
        d = (gram_channel(z_s, norm) - gram_channel(z_t, norm)).pow(2).sum()
        return d / (z_s.shape[0] if gram == "reference" else z_s.shape[1])


def prob_loss(logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """L_prob: KL(teacher || student) summed over the batch and classes, / B (fp32)."""
    with full_precision(logits_s.device.type):
        logits_s, logits_t = _fp32(logits_s), _fp32(logits_t)
        return (F.kl_div(F.log_softmax(logits_s, 1), F.softmax(logits_t, 1), reduction="sum")
                / logits_s.shape[0])


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
    # two fused multi-tensor kernels for all parameters instead of two launches per parameter
    pt = list(teacher.parameters())
    torch._foreach_mul_(pt, a)
    torch._foreach_add_(pt, [q.detach() for q in student.parameters()], alpha=1.0 - a)
    if copy_buffers:
        torch._foreach_copy_(list(teacher.buffers()), list(student.buffers()))
    return a


# --- augmentations ------------------------------------------------------------------------

class GridDropout(nn.Module):
    """Zero a regular grid of square holes (albumentations' GridDropout) on a CHW tensor, with
    probability p. Grid unit: ``unit_min``..``unit_max`` (fractions of the side, drawn per
    image), or albumentations' default ``max(2, side // 10)`` pixels when both are None; in every
    unit a hole of side ``ratio * unit`` at a random offset."""

    def __init__(self, ratio: float = 0.5, unit_min: float | None = None,
                 unit_max: float | None = None, p: float = 0.2) -> None:
        super().__init__()
        self.ratio, self.unit_min, self.unit_max, self.p = ratio, unit_min, unit_max, p

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or torch.rand(()) >= self.p:
            return img
        h, w = img.shape[-2:]
        side = min(h, w)
        if self.unit_min is None and self.unit_max is None:
            unit = max(2, side // 10)
        else:
            lo = max(2, int(round((self.unit_min or self.unit_max) * side)))
            hi = max(lo, int(round((self.unit_max or self.unit_min) * side)))
            unit = int(torch.randint(lo, hi + 1, ()))
        hole = max(1, int(round(self.ratio * unit)))
        oy, ox = (int(v) for v in torch.randint(0, unit, (2,)))
        mask = torch.ones(h, w, dtype=torch.bool)
        for y0 in range(oy - unit, h, unit):
            for x0 in range(ox - unit, w, unit):
                mask[max(y0, 0):max(y0 + hole, 0), max(x0, 0):max(x0 + hole, 0)] = False
        return img * mask.to(img.dtype)


class ShiftScaleRotate(nn.Module):
    """albumentations' ShiftScaleRotate on a CHW tensor: rotation in +-``degrees``, shift up to
    ``translate`` of the side, scale in [1 - scale, 1 + scale]. ``border: reflect`` (the
    reference's default, cv2.BORDER_REFLECT_101): the image is reflect-padded by half its side,
    transformed, and cropped back, so no black corners appear; ``constant``: filled with 0."""

    def __init__(self, degrees: float, translate: float, scale: float, border: str = "reflect") -> None:
        super().__init__()
        if border not in ("reflect", "constant"):
            raise ValueError(f"border: unknown mode {border!r} (reflect, constant)")
        self.border = border
        self.affine = v2.RandomAffine(degrees=degrees, translate=(translate, translate),
                                      scale=(max(1.0 - scale, 1e-3), 1.0 + scale))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.border == "constant":
            return self.affine(img)
        h, w = img.shape[-2:]
        ph, pw = max(1, (h - 1) // 2), max(1, (w - 1) // 2)  # reflect padding must be < side
        padded = F.pad(img.unsqueeze(0).float(), (pw, pw, ph, ph), mode="reflect").squeeze(0)
        out = self.affine(padded)[..., ph:ph + h, pw:pw + w]
        return out.round().clamp_(0, 255).to(img.dtype)


class RGBShift(nn.Module):
    """albumentations' RGBShift: an independent uniform shift in +-``limit`` (0-255 scale) per
    channel (one shift for a grey image)."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        shift = (torch.rand(img.shape[-3], 1, 1) * 2 - 1) * self.limit
        return (img.float() + shift).round().clamp_(0, 255).to(img.dtype)


class _ColorJitterAnyChannels(nn.Module):
    """Brightness/contrast jitter; saturation and hue only for 3-channel images (undefined for
    grey) and only when non-zero."""

    def __init__(self, strength: float, saturation: float, hue: float) -> None:
        super().__init__()
        self.grey = v2.ColorJitter(brightness=strength, contrast=strength)
        self.rgb = v2.ColorJitter(brightness=strength, contrast=strength, saturation=saturation, hue=hue)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.rgb(img) if img.shape[-3] == 3 else self.grey(img)


class TwoViews:
    """Per-sample transform returning (strong view, weak view) of one uint8 CHW image."""

    def __init__(self, strong, weak) -> None:
        self.strong, self.weak = strong, weak

    def __call__(self, img: torch.Tensor):
        return self.strong(img), self.weak(img)


@contextlib.contextmanager
def frozen_bn_statistics(net: nn.Module):
    """BatchNorm layers of ``net`` normalise with batch statistics but leave their running
    statistics untouched (momentum 0) inside the block; restored afterwards."""
    saved = [(m, m.momentum) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        for m, _ in saved:
            m.momentum = 0.0
        yield
    finally:
        for m, mom in saved:
            m.momentum = mom


@torch.no_grad()
def recalibrate_bn(net: nn.Module, images_nhwc, device, batch_size: int = 256) -> None:
    """Re-estimate every BatchNorm's running statistics on clean (un-augmented) images, as a
    cumulative average over one pass (``torch.optim.swa_utils.update_bn``); weights unchanged.
    BatchNorm layers the network keeps in eval mode (frozen by ``finetune``) keep theirs; an
    encoder without BatchNorm (a ViT) has nothing to re-estimate."""
    from torch.optim.swa_utils import update_bn

    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
    # one batch on the device at a time (at 224 px the training set would not fit beside the model)
    batches = (x[s:s + batch_size].to(device) for s in range(0, len(x), batch_size))
    was_training = net.training
    net.train()
    frozen = [(m, [b.clone() for b in m.buffers()]) for m in net.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training]
    update_bn(batches, net)  # resets every BatchNorm's statistics first
    with torch.no_grad():
        for m, saved in frozen:
            for b, v in zip(m.buffers(), saved):
                b.copy_(v)
    net.train(was_training)


@register("rrl")
class RelationAwareRepresentation(Stage1Method):
    # paper: Pan et al., LMD; reference: peterlipan/LMD (utils/train.py, utils/loss.py,
    # data/transforms.py, config/*.yaml)
    params = {
        "lambda_1": {"type": "number", "minimum": 0, "default": 10.0,
                     "description": "weight of the consistency terms (paper 10)",
                     "source": "paper: LMD Sec. 3.3, L_stage1, and Sec. 4.2 (lambda_1 = 10)"},
        "prob_weight": {"type": "number", "minimum": 0, "default": 0.5,
                        "description": "weight of L_prob inside the bracket (paper 1/2)",
                        "source": "paper: LMD Sec. 3.3, L_stage1 (1/2 L_prob; reference: prob 5 = 10 x 0.5)"},
        "ce_weight": {"type": "number", "minimum": 0, "default": 1.0,
                      "description": "weight of L_CE (paper and reference 1)",
                      "source": "paper: LMD Sec. 3.3, L_stage1 (reference classification_loss_weight 1)"},
        "ce_view": {"enum": ["weak", "strong"], "default": "weak",
                    "description": "weak: paper (student on x_w); strong: reference code",
                    "source": "paper: LMD Sec. 3.3, L_CE on f.g(x_w) (reference utils/train.py: "
                              "on x_s, ce_view strong)"},
        "gram": {"enum": ["reference", "paper"], "default": "reference",
                 "description": "reference: row-L2-normalised Gram, /B; paper: raw Gram, /B and /C",
                 "source": "reference: utils/loss.py BatchLoss / ChannelLoss (Eqs. 4-5 print no "
                           "normalisation: gram paper)"},
        "consistency_start_epoch": {"type": "integer", "minimum": 0, "default": 21,
                                    "description": "0-based epoch the consistency terms start (reference: epoch > 20)",
                                    "source": "reference: utils/train.py 'if epoch > 20'"},
        "ema_decay": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.999,
                      "description": "teacher EMA decay cap (reference 0.999)",
                      "source": "reference: update_ema_variables, min(1 - 1/(step + 1), 0.999)"},
        "teacher_bn": {"enum": ["batch", "running"], "default": "batch",
                       "description": "batch: reference (teacher BatchNorm on batch statistics); running: eval mode",
                       "source": "reference: the teacher is never put in eval mode"},
        "bn_stats": {"enum": ["weak_pass", "recalibrate", "all"], "default": "weak_pass",
                     "description": "student running statistics: weak view only, re-estimated on clean "
                                    "images each epoch, or every pass (see the module docstring)",
                     "source": "option: ours; one distribution, as the reference's single pass"},
        "flip": {"type": "boolean", "default": True,
                 "description": "random horizontal flip in both views (reference p 0.5)",
                 "source": "reference: data/transforms.py HorizontalFlip p 0.5"},
        "vflip": {"type": "boolean", "default": True,
                  "description": "random vertical flip in both views (reference p 0.5)",
                  "source": "reference: data/transforms.py VerticalFlip p 0.5"},
        "blur_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                   "description": "reference: one-of blur at p 0.5",
                   "source": "reference: data/transforms.py OneOf(blurs) p 0.5"},
        "blur_sigma": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                       "minItems": 2, "maxItems": 2, "default": [0.1, 1.0],
                       "description": "sigma range of the strong view's 3x3 Gaussian blur",
                       "source": "departure: a 3x3 Gaussian blur (reference: one of motion, "
                                 "median, box blur)"},
        "affine_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                     "description": "ShiftScaleRotate probability (reference 0.5)",
                     "source": "reference: data/transforms.py ShiftScaleRotate p 0.5"},
        "rotation_degrees": {"type": "number", "minimum": 0, "default": 45.0,
                             "description": "reference rotate_limit 45",
                             "source": "reference: data/transforms.py ShiftScaleRotate rotate_limit 45"},
        "translate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0625,
                      "description": "reference shift_limit 0.0625",
                      "source": "reference: ShiftScaleRotate shift_limit 0.0625 (albumentations default)"},
        "scale": {"type": "number", "minimum": 0, "maximum": 0.99, "default": 0.2,
                  "description": "reference scale_limit 0.2",
                  "source": "reference: ShiftScaleRotate scale_limit 0.2"},
        "border": {"enum": ["reflect", "constant"], "default": "reflect",
                   "description": "reflect: reference (BORDER_REFLECT_101); constant: black fill",
                   "source": "reference: ShiftScaleRotate border BORDER_REFLECT_101 (albumentations default)"},
        "distortion_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0,
                         "description": "elastic distortion probability (reference: one-of distortions at 0.7; off here)",
                         "source": "departure: off (reference: OneOf(grid, elastic, optical "
                                   "distortion) p 0.7)"},
        "rgb_shift": {"type": "number", "minimum": 0, "default": 15.0,
                      "description": "per-channel shift limit on 0-255 (reference 15)",
                      "source": "reference: data/transforms.py RGBShift limit 15"},
        "rgb_shift_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                        "description": "probability of the RGB shift",
                        "source": "reference: data/transforms.py RGBShift p 0.5"},
        "jitter": {"type": "number", "minimum": 0, "default": 0.2,
                   "description": "brightness/contrast limit (reference RandomBrightnessContrast 0.2)",
                   "source": "reference: data/transforms.py RandomBrightnessContrast limits 0.2"},
        "jitter_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                     "description": "probability of the brightness/contrast change",
                     "source": "reference: RandomBrightnessContrast p 0.5"},
        "saturation": {"type": "number", "minimum": 0, "default": 0.0,
                       "description": "saturation jitter (0: none)",
                       "source": "reference: 0 (RandomBrightnessContrast changes no saturation)"},
        "hue": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.0,
                "description": "hue jitter (0: none)",
                "source": "reference: 0 (RandomBrightnessContrast changes no hue)"},
        "grid_dropout_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2,
                           "description": "reference GridDropout p 0.2",
                           "source": "reference: data/transforms.py GridDropout p 0.2"},
        "grid_dropout_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5,
                               "description": "hole side / grid unit (albumentations default 0.5)",
                               "source": "reference: GridDropout ratio 0.5 (albumentations default)"},
        "grid_dropout_unit": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1,
                              "default": None,
                              "description": "grid unit as a fraction of the side; null: max(2, side // 10) px",
                              "source": "reference: GridDropout's default unit max(2, side // 10) "
                                        "(albumentations)"},
    }

    def __init__(self, params, class_counts):
        super().__init__(params, class_counts)
        self.teacher: nn.Module | None = None
        self.steps = 0
        self._pending_teacher_state: dict | None = None
        if self.p["bn_stats"] == "weak_pass" and self.p["ce_view"] == "strong":
            raise ValueError("rrl: bn_stats weak_pass needs ce_view weak (with ce_view strong the "
                             "student has no weak-view pass); use bn_stats recalibrate or all")

    def on_train_start(self, net, epochs, steps_per_epoch):
        super().on_train_start(net, epochs, steps_per_epoch)
        if self.p["lambda_1"] > 0 and epochs <= self.p["consistency_start_epoch"]:
            raise ValueError(
                f"rrl: epochs ({epochs}) <= consistency_start_epoch "
                f"({self.p['consistency_start_epoch']}): no epoch would train the consistency "
                "terms, so the model would be plain CE; lower consistency_start_epoch or train longer")

    def selectable(self, epoch):
        return self.p["lambda_1"] == 0 or epoch >= self.p["consistency_start_epoch"]

    def on_epoch_end(self, net, train_images, device):
        if self.p["bn_stats"] == "recalibrate":
            recalibrate_bn(net, train_images, device)

    def train_transform(self, augment, size):
        p = self.p
        base = train_transform(augment, size)
        flips = ([v2.RandomHorizontalFlip()] if p["flip"] else []) + ([v2.RandomVerticalFlip()] if p["vflip"] else [])
        weak = v2.Compose([base, *flips])
        unit = p["grid_dropout_unit"]
        strong = v2.Compose([
            base, *flips,
            v2.RandomApply([v2.GaussianBlur(3, sigma=tuple(p["blur_sigma"]))], p=p["blur_p"]),
            v2.RandomApply([ShiftScaleRotate(p["rotation_degrees"], p["translate"], p["scale"],
                                             p["border"])], p=p["affine_p"]),
            v2.RandomApply([v2.ElasticTransform()], p=p["distortion_p"]),
            v2.RandomApply([RGBShift(p["rgb_shift"])], p=p["rgb_shift_p"]),
            v2.RandomApply([_ColorJitterAnyChannels(p["jitter"], p["saturation"], p["hue"])], p=p["jitter_p"]),
            GridDropout(p["grid_dropout_ratio"], unit, unit, p=p["grid_dropout_p"]),
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
        p = self.p
        teacher = self._teacher(net)
        consistency = epoch >= p["consistency_start_epoch"] and p["lambda_1"] > 0
        z_s = logits_s = None
        if consistency or p["ce_view"] == "strong":  # no strong pass when nothing uses it
            # weak_pass: the strong view must not move the running statistics (module docstring)
            frozen = p["bn_stats"] == "weak_pass"
            with frozen_bn_statistics(net) if frozen else contextlib.nullcontext():
                z_s = net.features(xs)
            logits_s = net.classifier(z_s)
        logits_ce = logits_s if p["ce_view"] == "strong" else net(xw)
        terms = {"ce": p["ce_weight"] * F.cross_entropy(logits_ce, y)}
        if consistency:
            teacher.train(p["teacher_bn"] == "batch")
            with torch.no_grad():
                z_t = teacher.features(xw)
                logits_t = teacher.classifier(z_t)
            lam = p["lambda_1"]
            # the global batch under DDP (the module docstring); the batch itself otherwise
            zs_all, zt_all = gather_batch(_fp32(z_s)), gather_batch(_fp32(z_t))
            terms["sample"] = lam * sample_loss(zs_all, zt_all, p["gram"])
            terms["channel"] = lam * channel_loss(zs_all, zt_all, p["gram"])
            terms["prob"] = lam * p["prob_weight"] * prob_loss(logits_s, logits_t)
        return terms

    def after_step(self, net):
        ema_update_(self._teacher(net), net, self.p["ema_decay"], self.steps,
                    copy_buffers=self.p["teacher_bn"] == "running")
        self.steps += 1
