"""Class-frequency samplers shared by every method.

Each sampler is a per-sample weight rule: a sample of class k is drawn with probability
proportional to ``n_k ** (q - 1)``, so class k is drawn with probability proportional to
``n_k ** q``: instance q = 1, square-root q = 1/2, class-balanced q = 0, class-aware with
exponent gamma q = -gamma (gamma = 0 balanced, 1 reverse). Non-instance samplers draw with
replacement, one epoch being as many draws as there are samples.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler

_EXPONENTS: dict[str, Callable[..., float]] = {
    "instance": lambda: 1.0,
    "sqrt": lambda: 0.5,
    "class_balanced": lambda: 0.0,
    "class_aware": lambda gamma=0.0: -float(gamma),
}


def available_samplers() -> list[str]:
    return sorted(_EXPONENTS)


def class_exponent(name: str, **kwargs) -> float:
    if name not in _EXPONENTS:
        raise ValueError(f"sampler: unknown sampler {name!r} (known: {', '.join(available_samplers())})")
    return _EXPONENTS[name](**kwargs)


def sample_weights(labels: np.ndarray, name: str, **kwargs) -> np.ndarray:
    """Per-sample draw probabilities (sum 1) for ``labels``."""
    labels = np.asarray(labels)
    q = class_exponent(name, **kwargs)
    counts = np.bincount(labels).astype(np.float64)
    w = counts[labels] ** (q - 1.0)
    return w / w.sum()


def make_sampler(labels: np.ndarray, name: str, generator: torch.Generator,
                 num_samples: int | None = None, **kwargs) -> Sampler:
    n = num_samples or len(labels)
    if name == "instance":
        return RandomSampler(range(len(labels)), num_samples=n, generator=generator)
    w = torch.as_tensor(sample_weights(labels, name, **kwargs), dtype=torch.double)
    return WeightedRandomSampler(w, num_samples=n, replacement=True, generator=generator)
