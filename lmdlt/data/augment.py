"""Where training augmentation runs and what it draws from.

**Per-sample seeds (the DataLoader path).** ``SeededDraws`` wraps a training sampler and hands
out ``(index, seed)`` keys, the seeds drawn from (run seed, stream, epoch, pass); the dataset
augments each image under its own seed (``seeded_call``). So an image's augmentation depends on
the run and its place in the epoch's draw only, not on which process or worker makes it, how
many workers there are, whether they persist across epochs, or where a run was resumed: a
resumed run augments as the uninterrupted one with persistent workers, the worker count can
follow the machine, and under DDP (the sampler sharded after ``SeededDraws``) every image gets
the augmentation it gets in a single-process run.

**Batched augmentation on the training device (the GPU path).** ``batched(transform)`` turns
the per-sample transforms lmdlt builds (``transforms.train_transform``, the two-view wrappers,
RRL's strong view) into one operation on a whole uint8 batch (B, C, H, W) on the device, with
every random parameter drawn per sample from a device generator: the same operations and
parameter distributions as torchvision's per-image v2 transforms (each op is checked equal to
torchvision's kernel for the same parameters, and the distributions statistically, in
tests/test_cuda_paths.py), only another random stream. RRL's strong view costs about 6 ms per
224 px image on one CPU core, so CPU workers cannot feed a GPU from a node's 8-16 cores
(docs/devices.md); on the GPU it is a few kernels per batch. A transform with a step that has
no batched form (the elastic distortion) gives None: it stays on the DataLoader path.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler, get_worker_info

# ------------------------------------------------------------------ per-sample seeds


def stream_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (NumPy's SeedSequence: independent streams per key)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SeededDraws(Sampler):
    """``sampler``'s indices as ``(index, seed)`` keys; the seeds come from (``seed``,
    ``stream``, epoch, pass), the pass counting the iterations within one epoch (a paired loader
    cycled several times per epoch). ``set_epoch`` (forwarded to ``sampler``) starts an epoch."""

    def __init__(self, sampler: Sampler, seed: int, stream: int = 0) -> None:
        self.sampler, self.seed, self.stream = sampler, int(seed), int(stream)
        self.epoch = 0
        self._passes = 0

    @property
    def generator(self):  # the resume state saves and restores the sampler's generator
        return getattr(self.sampler, "generator", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._passes = int(epoch), 0
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        idx = list(self.sampler)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.stream, self.epoch, self._passes]))
        self._passes += 1
        seeds = rng.integers(0, 2**63 - 1, size=len(idx), dtype=np.int64).tolist()
        return iter(zip(idx, seeds))


def seeded_call(transform: Callable, img: torch.Tensor, seed: int) -> Any:
    """``transform(img)`` drawing from torch's CPU generator seeded with ``seed``. In a
    DataLoader worker the generator is the worker's own; in the main process its state is put
    back afterwards, so the training loop's own stream is untouched."""
    g = torch.random.default_generator
    if get_worker_info() is not None:
        g.manual_seed(seed)
        return transform(img)
    state = g.get_state()
    g.manual_seed(seed)
    try:
        return transform(img)
    finally:
        g.set_state(state)


# ------------------------------------------------------------------ batched operations
# Each op maps a uint8 batch (B, C, H, W) to a uint8 batch, drawing its parameters per sample
# from the generator ``g`` (on the batch's device).


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device, dtype=torch.float32) * (hi - lo) + lo


def _per_sample(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (x.dim() - 1)))


class BatchCompose:
    def __init__(self, ops: list) -> None:
        self.ops = ops

    def __call__(self, x, g):
        for op in self.ops:
            x = op(x, g)
        return x


class BatchIdentity:
    def __call__(self, x, g):
        return x


class BatchRandomApply:
    """``op`` on each sample with probability ``p`` (v2.RandomApply: applied when U < p)."""

    def __init__(self, op, p: float) -> None:
        self.op, self.p = op, p

    def __call__(self, x, g):
        apply = torch.rand(x.shape[0], generator=g, device=x.device) < self.p
        return torch.where(_per_sample(apply, x), self.op(x, g), x)


class BatchFlip:
    """v2.RandomHorizontalFlip / RandomVerticalFlip: flipped with probability p per sample."""

    def __init__(self, dim: int, p: float = 0.5) -> None:
        self.dim, self.p = dim, p

    def __call__(self, x, g):
        flip = torch.rand(x.shape[0], generator=g, device=x.device) < self.p
        return torch.where(_per_sample(flip, x), x.flip(self.dim), x)


class BatchRandomCrop:
    """v2.RandomCrop(size, padding, padding_mode='reflect'): reflect padding, then a crop at a
    uniform offset per sample."""

    def __init__(self, size: int, padding: int) -> None:
        self.size, self.padding = size, padding

    def __call__(self, x, g):
        p, s = self.padding, self.size
        xp = F.pad(x.float(), (p, p, p, p), mode="reflect") if p else x.float()
        b, _, hp, wp = xp.shape
        top = torch.randint(0, hp - s + 1, (b,), generator=g, device=x.device)
        left = torch.randint(0, wp - s + 1, (b,), generator=g, device=x.device)
        ar = torch.arange(s, device=x.device)
        rows = (top[:, None] + ar)[:, :, None]                     # B, s, 1
        cols = (left[:, None] + ar)[:, None, :]                    # B, 1, s
        out = xp[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]  # B, s, s, C
        return out.permute(0, 3, 1, 2).to(x.dtype)


class BatchGaussianBlur:
    """v2.GaussianBlur(kernel_size, sigma=(lo, hi)): sigma uniform per sample, torchvision's
    kernel (softmax of -(x / sigma)^2 over linspace(+-(k-1) / (2 sqrt 2))), reflect padding,
    rounded back to uint8."""

    def __init__(self, kernel_size: int, sigma: tuple[float, float]) -> None:
        self.k, self.sigma = kernel_size, sigma

    def __call__(self, x, g):
        return gaussian_blur(x, self.k, _uniform(x.shape[0], *self.sigma, g, x.device))


def gaussian_blur(x: torch.Tensor, k: int, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur (kernel side ``k``, ``sigma`` (B,)) as torchvision's kernel."""
    b, c, h, w = x.shape
    lim = (k - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, k, device=x.device)
    k1 = torch.softmax(-(t[None, :] / sigma[:, None]).pow(2), dim=1)      # B, k
    k2 = k1[:, :, None] * k1[:, None, :]                                   # B, k, k
    weight = k2.repeat_interleave(c, dim=0)[:, None]                       # B*C, 1, k, k
    pad = k // 2
    xf = F.pad(x.float().reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(xf, weight, groups=b * c).reshape(b, c, h, w)
    return out.round_().to(x.dtype)


def _inverse_affine(angle_deg, tx, ty, scale):
    """torchvision's inverse affine matrix (no shear, centre 0) per sample: (B, 2, 3), computed
    in float64 as torchvision computes it in Python floats, then float32 as its theta."""
    angle_deg, tx, ty, scale = (t.double() for t in (angle_deg, tx, ty, scale))
    rot = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(rot), torch.sin(rot)
    m = torch.stack([cos, sin, torch.zeros_like(cos), -sin, cos, torch.zeros_like(cos)], 1) / scale[:, None]
    m2 = m[:, 0] * -tx + m[:, 1] * -ty
    m5 = m[:, 3] * -tx + m[:, 4] * -ty
    return torch.stack([m[:, 0], m[:, 1], m2, m[:, 3], m[:, 4], m5], 1).view(-1, 2, 3).float()


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """torchvision v2's ``_affine_grid`` for a batch of inverse matrices (B, 2, 3): normalised
    sampling coordinates (B, h, w, 2) for grid_sample(align_corners=False)."""
    dev = theta.device
    base = torch.empty(1, h, w, 3, device=dev)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=dev))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=dev).unsqueeze(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], device=dev)
    return (base.view(1, h * w, 3).expand(theta.shape[0], -1, -1) @ scaled).view(-1, h, w, 2)


class BatchShiftScaleRotate:
    """``rrl.ShiftScaleRotate``: v2.RandomAffine's parameters per sample (angle uniform in
    +-degrees, translation round(uniform(+-translate x side)) pixels of the image it is applied
    to, scale uniform), nearest-neighbour sampling; ``reflect``: on the reflect-padded image
    (padding (side - 1) // 2), cropped back; ``constant``: zeros outside."""

    def __init__(self, degrees: float, translate: float, scale: tuple[float, float], border: str) -> None:
        self.degrees, self.translate, self.scale, self.border = degrees, translate, scale, border

    def __call__(self, x, g):
        b, _, h, w = x.shape
        hh, ww = (h + 2 * max(1, (h - 1) // 2), w + 2 * max(1, (w - 1) // 2)) if self.border == "reflect" else (h, w)
        angle = _uniform(b, -self.degrees, self.degrees, g, x.device)
        # v2.RandomAffine: int(round(uniform)) pixels of the image it transforms (here padded)
        tx = torch.round(_uniform(b, -self.translate * ww, self.translate * ww, g, x.device))
        ty = torch.round(_uniform(b, -self.translate * hh, self.translate * hh, g, x.device))
        scale = _uniform(b, *self.scale, g, x.device)
        return shift_scale_rotate(x, angle, tx, ty, scale, self.border)


def shift_scale_rotate(x: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
                       scale: torch.Tensor, border: str) -> torch.Tensor:
    """``rrl.ShiftScaleRotate`` with given per-sample parameters (B,): v2.functional.affine
    (nearest, fill 0) on the reflect-padded (``reflect``) or plain (``constant``) image."""
    _, _, h, w = x.shape
    xf = x.float()
    ph = pw = 0
    if border == "reflect":
        ph, pw = max(1, (h - 1) // 2), max(1, (w - 1) // 2)
        xf = F.pad(xf, (pw, pw, ph, ph), mode="reflect")
    hh, ww = xf.shape[-2:]
    grid = affine_grid(_inverse_affine(angle, tx, ty, scale), hh, ww)
    out = F.grid_sample(xf, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out = out[..., ph:ph + h, pw:pw + w]
    return out.round_().clamp_(0, 255).to(x.dtype)


class BatchRGBShift:
    """``rrl.RGBShift``: a uniform shift in +-limit per sample and channel."""

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def __call__(self, x, g):
        b, c = x.shape[:2]
        shift = (torch.rand(b, c, 1, 1, generator=g, device=x.device) * 2 - 1) * self.limit
        return (x.float() + shift).round_().clamp_(0, 255).to(x.dtype)


def _brightness(xf: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """v2.functional.adjust_brightness on uint8 values held as float (truncated back)."""
    return (xf * factor.view(-1, 1, 1, 1)).clamp_(0, 255).trunc_()


def _contrast(xf: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """v2.functional.adjust_contrast on uint8 values held as float: blend with the mean of the
    (floored) greyscale image, truncated back."""
    if xf.shape[1] == 3:
        grey = (xf[:, 0] * 0.2989 + xf[:, 1] * 0.587 + xf[:, 2] * 0.114).floor_()
    else:
        grey = xf[:, 0]
    mean = grey.mean(dim=(-2, -1)).view(-1, 1, 1, 1)
    f = factor.view(-1, 1, 1, 1)
    return (xf * f + mean * (1.0 - f)).clamp_(0, 255).trunc_()


class BatchBrightnessContrast:
    """v2.ColorJitter(brightness=s, contrast=s) (saturation and hue 0): factors uniform in
    [1 - s, 1 + s], applied in a random order per sample, as ColorJitter's permutation does."""

    def __init__(self, strength: float) -> None:
        self.lo, self.hi = max(0.0, 1.0 - strength), 1.0 + strength

    def __call__(self, x, g):
        b = x.shape[0]
        bf = _uniform(b, self.lo, self.hi, g, x.device)
        cf = _uniform(b, self.lo, self.hi, g, x.device)
        brightness_first = torch.rand(b, generator=g, device=x.device) < 0.5
        xf = x.float()
        one = _contrast(_brightness(xf, bf), cf)
        other = _brightness(_contrast(xf, cf), bf)
        return torch.where(_per_sample(brightness_first, x), one, other).to(x.dtype)


class BatchGridDropout:
    """``rrl.GridDropout`` with albumentations' default grid (unit max(2, side // 10), holes of
    round(ratio x unit) at a random offset per sample), applied with probability p."""

    def __init__(self, ratio: float, p: float) -> None:
        self.ratio, self.p = ratio, p

    def __call__(self, x, g):
        b, _, h, w = x.shape
        unit = max(2, min(h, w) // 10)
        apply = torch.rand(b, generator=g, device=x.device) < self.p
        offset = torch.randint(0, unit, (b, 2), generator=g, device=x.device)
        return x * (~grid_holes(h, w, unit, max(1, int(round(self.ratio * unit))), offset, apply))[:, None].to(x.dtype)


def grid_holes(h: int, w: int, unit: int, hole: int, offset: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """GridDropout's holes (B, h, w): pixel (r, c) is in a hole when (r - oy) mod unit < hole
    and (c - ox) mod unit < hole, ``offset`` (B, 2) = (oy, ox), only where ``apply``."""
    rows = ((torch.arange(h, device=offset.device)[None] - offset[:, :1]) % unit) < hole   # B, h
    cols = ((torch.arange(w, device=offset.device)[None] - offset[:, 1:]) % unit) < hole   # B, w
    return rows[:, :, None] & cols[:, None, :] & apply[:, None, None]


class BatchViews:
    """Several views of one batch (a tuple), as the per-sample two-view transforms return."""

    def __init__(self, views: list) -> None:
        self.views = views

    def __call__(self, x, g):
        return tuple(v(x, g) for v in self.views)


class BatchAugment:
    """A batched transform applied on the batch's device, its generator seeded per call (the
    trainer passes a seed from (run seed, epoch, step, rank, stream))."""

    def __init__(self, op) -> None:
        self.op = op
        self._generators: dict = {}

    def __call__(self, x: torch.Tensor, seed: int):
        g = self._generators.get(x.device)
        if g is None:
            g = self._generators[x.device] = torch.Generator(device=x.device)
        g.manual_seed(seed)
        return self.op(x, g)


def batched(transform) -> Any | None:
    """The batched form of a per-sample transform lmdlt builds, or None when a step has none
    (then it stays per sample, in the DataLoader)."""
    from torchvision.transforms import v2

    from ..stage1.common import TwoViewTransform
    from ..stage1.rrl import GridDropout, RGBShift, ShiftScaleRotate, TwoViews, _ColorJitterAnyChannels
    from .transforms import Identity

    def conv(t):
        if isinstance(t, Identity):
            return BatchIdentity()
        if isinstance(t, v2.Compose):
            ops = [conv(s) for s in t.transforms]
            return None if any(o is None for o in ops) else BatchCompose(ops)
        if isinstance(t, TwoViewTransform):
            one = conv(t.transform)
            return None if one is None else BatchViews([one, one])
        if isinstance(t, TwoViews):
            s, w = conv(t.strong), conv(t.weak)
            return None if s is None or w is None else BatchViews([s, w])
        if isinstance(t, v2.RandomApply):
            if t.p <= 0:
                return BatchIdentity()
            inner = conv(v2.Compose(list(t.transforms)))
            return None if inner is None else BatchRandomApply(inner, t.p)
        if isinstance(t, v2.RandomHorizontalFlip):
            return BatchFlip(-1, t.p)
        if isinstance(t, v2.RandomVerticalFlip):
            return BatchFlip(-2, t.p)
        if isinstance(t, v2.RandomCrop):
            pad = t.padding
            if (t.size[0] != t.size[1] or t.padding_mode != "reflect" or t.pad_if_needed
                    or (pad is not None and len(set(pad)) != 1)):
                return None
            return BatchRandomCrop(t.size[0], pad[0] if pad is not None else 0)
        if isinstance(t, v2.GaussianBlur):
            if t.kernel_size[0] != t.kernel_size[1]:
                return None
            return BatchGaussianBlur(t.kernel_size[0], tuple(t.sigma))
        if isinstance(t, ShiftScaleRotate):
            a = t.affine
            if a.shear is not None or a.translate[0] != a.translate[1]:
                return None
            return BatchShiftScaleRotate(a.degrees[1], a.translate[0], tuple(a.scale), t.border)
        if isinstance(t, RGBShift):
            return BatchRGBShift(t.limit)
        if isinstance(t, _ColorJitterAnyChannels):
            cj = t.rgb
            if cj.saturation is not None or cj.hue is not None or cj.brightness != cj.contrast:
                return None
            return BatchBrightnessContrast(cj.brightness[1] - 1.0)
        if isinstance(t, GridDropout):
            if t.unit_min is not None or t.unit_max is not None:
                return None
            return BatchGridDropout(t.ratio, t.p)
        return None

    op = conv(transform)
    return None if op is None else BatchAugment(op)


AUGMENT_DEVICES = ("auto", "cpu", "gpu")


def resolve_augment_device(setting: str, device: torch.device, transform) -> BatchAugment | None:
    """``compute.augment_device``: the batched transform to run on the training device, or None
    for the per-sample DataLoader path. ``auto``: batched on CUDA when the transform has a
    batched form (every transform lmdlt builds, except RRL's with ``distortion_p`` > 0), per
    sample otherwise; ``cpu``: per sample; ``gpu``: batched on the training device (on a CPU-only
    run: batched on the CPU), an error where the transform has no batched form."""
    if setting not in AUGMENT_DEVICES:
        raise ValueError(f"compute.augment_device: {setting!r} is not one of {', '.join(AUGMENT_DEVICES)}")
    # auto off CUDA: decided without building the batched form (which imports torchvision)
    from .transforms import Identity

    if setting == "cpu" or (setting == "auto" and torch.device(device).type != "cuda") or isinstance(transform, Identity):
        return None
    aug = batched(transform)
    if aug is not None and isinstance(aug.op, BatchIdentity):
        return None  # nothing to augment
    if setting == "gpu" and aug is None:
        raise ValueError(f"compute.augment_device: gpu, but the training transform {transform!r} has a step "
                         "without a batched form (e.g. RRL's distortion_p > 0); use auto or cpu")
    return aug
