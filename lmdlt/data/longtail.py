"""Long-tail (Pareto / exponential) profiles: how many images each class keeps for an imbalance
ratio r (the LMD paper prints its formula garbled; its reference code is the authority).

Two schemes, both with classes ordered by count (largest first) unless told otherwise:

* ``lmd`` — the LMD reference code (ISIC2019-LT): every class is subsampled from its *own*
  count, ``keep_i = ceil(n_i * mu**i)`` with ``mu = (n_max / (n_min * r)) ** (1/(K-1))``, so
  the last class keeps ``n_max / r`` and the imbalance is exactly ``r``. ``mu > 1`` (r below the
  data's natural imbalance) would need more images than exist, and ``r > n_max`` would keep
  less than one tail image: both are errors naming what the data can give, never a silent cap.
* ``cui`` — Cui et al. 2019 / Ju et al. 2022: the training set gets
  ``n_i = ceil(n_cap * mu**i)`` with ``mu = (1/r) ** (1/(K-1))``. ``mu**i`` (not
  ``(1/r)**(i/(K-1))``) reproduces Ju et al.'s published counts exactly, floating-point
  rounding included (their r = 100 tail class has 51 images, not 50). ``r > n_cap`` (less than
  one tail image) is an error naming the largest ratio the data can give.
"""
from __future__ import annotations

import math
from typing import Sequence


def lmd_keep_counts(counts_desc: Sequence[int], ratio: float) -> list[int]:
    """Images kept per class under the LMD-code scheme; ``counts_desc`` sorted descending."""
    counts = [int(c) for c in counts_desc]
    _check(counts, ratio)
    if any(a < b for a, b in zip(counts, counts[1:])):
        raise ValueError("lmd_keep_counts: class counts must be sorted in descending order")
    k = len(counts)
    n_max, n_min = counts[0], counts[-1]
    natural = n_max / n_min
    mu = (n_max / (n_min * ratio)) ** (1.0 / (k - 1))
    if mu > 1.0:
        raise ValueError(
            f"imbalance_ratio r={ratio:g} is below the data's natural imbalance "
            f"{natural:.2f} (largest class {n_max}, smallest {n_min}); the LMD scheme would need "
            f"more images than exist. Use r >= {natural:.2f}.")
    if ratio > n_max:
        raise ValueError(
            f"imbalance_ratio r={ratio:g} is more than the data can give: the LMD scheme keeps "
            f"n_max / r of the tail class, and with the largest class at {n_max} images that is "
            f"below one image (it would be rounded up to 1, silently giving r = {n_max}). "
            f"The data can give {natural:.2f} <= r <= {n_max}.")
    return [math.ceil(n * mu**i) for i, n in enumerate(counts)]


def cui_train_counts(n_cap: int, ratio: float, num_classes: int) -> list[int]:
    """Training images per class (in class-rank order) under the Cui / Ju scheme."""
    if n_cap < 1:
        raise ValueError(f"n_cap must be >= 1, got {n_cap}")
    _check([n_cap] * num_classes, ratio)
    if ratio > n_cap:
        raise ValueError(
            f"imbalance_ratio r={ratio:g} is more than the data can give: the cui profile gives "
            f"the tail class n_cap / r images, and with n_cap = {n_cap} that is below one image "
            f"(it would be rounded up to 1, silently giving r = {n_cap}). The data can give "
            f"1 <= r <= {n_cap}; lower split.imbalance_ratio (or raise split.n_cap, if the "
            "classes have the images).")
    mu = (1.0 / ratio) ** (1.0 / (num_classes - 1))
    return [math.ceil(n_cap * mu**i) for i in range(num_classes)]


def _check(counts: list[int], ratio: float) -> None:
    if len(counts) < 2:
        raise ValueError(f"a long-tail profile needs at least 2 classes, got {len(counts)}")
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"imbalance_ratio must be a finite number >= 1, got {ratio!r}")
    if min(counts) < 1:
        raise ValueError(f"every class needs at least one image; counts {counts}")
