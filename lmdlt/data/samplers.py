"""Class-frequency samplers shared by every method.

Each sampler is a per-sample weight rule: a sample of class k is drawn with probability
proportional to ``n_k ** (q - 1)``, so class k is drawn with probability proportional to
``n_k ** q``:

- ``instance``: q = 1 (every image equally often; without replacement, a shuffled epoch);
- ``sqrt``: q = 1/2 (Mahajan et al. 2018);
- ``class_balanced``: q = 0 (every class equally often);
- ``class_aware``: q = -gamma, i.e. p(k) proportional to (1/n_k)^gamma (ICCL Eq. 2; gamma = 0
  balanced, gamma = 1 the reverse sampler of BBN);
- ``progressive``: p_k(t) = (1 - t/T) p_k^instance + (t/T) p_k^balanced at epoch t (0-based) of
  T (Kang et al. 2020); it must be told the epoch (``set_epoch``), like DistributedSampler.

Non-instance samplers draw with replacement, one epoch being as many draws as there are samples.
The re-weighting counterpart, effective-number class weights (Cui et al. 2019), is here too.
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
_PER_EPOCH = ("progressive",)


def available_samplers() -> list[str]:
    return sorted([*_EXPONENTS, *_PER_EPOCH])


def _check(name: str) -> None:
    if name not in available_samplers():
        raise ValueError(f"sampler: unknown sampler {name!r} (known: {', '.join(available_samplers())})")


def class_exponent(name: str, **kwargs) -> float:
    _check(name)
    if name in _PER_EPOCH:
        raise ValueError(f"sampler {name!r} changes every epoch: it has no fixed class exponent")
    try:
        return _EXPONENTS[name](**kwargs)
    except TypeError:
        raise ValueError(f"sampler {name!r} takes no option(s) {sorted(kwargs)} "
                         "(only class_aware takes gamma)") from None


def _class_probabilities(counts: np.ndarray, q: float) -> np.ndarray:
    """p(k) proportional to n_k**q over the classes present (absent classes get 0)."""
    p = np.zeros(len(counts), dtype=np.float64)
    present = counts > 0
    p[present] = counts[present].astype(np.float64) ** q
    return p / p.sum()


def class_probabilities(labels: np.ndarray, name: str, epoch: int = 0, epochs: int = 1,
                        **kwargs) -> np.ndarray:
    """Probability that one draw returns each class (index = label)."""
    counts = np.bincount(np.asarray(labels))
    if name == "progressive":
        _check(name)
        if kwargs:
            raise ValueError(f"sampler 'progressive' takes no option(s) {sorted(kwargs)}")
        if not 0 <= epoch < max(epochs, 1):
            raise ValueError(f"sampler 'progressive': epoch {epoch} outside 0..{epochs - 1}")
        t = epoch / max(epochs, 1)
        return (1 - t) * _class_probabilities(counts, 1.0) + t * _class_probabilities(counts, 0.0)
    return _class_probabilities(counts, class_exponent(name, **kwargs))


def sample_weights(labels: np.ndarray, name: str, epoch: int = 0, epochs: int = 1,
                   **kwargs) -> np.ndarray:
    """Per-sample draw probabilities (sum 1) for ``labels``: a class's probability shared
    equally among its samples."""
    labels = np.asarray(labels)
    counts = np.bincount(labels).astype(np.float64)
    p_class = class_probabilities(labels, name, epoch, epochs, **kwargs)
    w = p_class[labels] / counts[labels]
    return w / w.sum()


class ProgressiveSampler(Sampler[int]):
    """Progressively-balanced sampling: re-weighted at each ``set_epoch`` call."""

    def __init__(self, labels: np.ndarray, epochs: int, generator: torch.Generator,
                 num_samples: int | None = None) -> None:
        self.labels = np.asarray(labels)
        self.epochs = int(epochs)
        self.generator = generator
        self.num_samples = num_samples or len(self.labels)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def weights(self) -> torch.Tensor:
        return torch.as_tensor(sample_weights(self.labels, "progressive", self.epoch, self.epochs),
                               dtype=torch.double)

    def __iter__(self):
        idx = torch.multinomial(self.weights(), self.num_samples, replacement=True,
                                generator=self.generator)
        return iter(idx.tolist())

    def __len__(self) -> int:
        return self.num_samples


def make_sampler(labels: np.ndarray, name: str, generator: torch.Generator,
                 num_samples: int | None = None, epochs: int | None = None, **kwargs) -> Sampler:
    """A sampler over ``range(len(labels))``. ``epochs`` is required by ``progressive`` (call
    its ``set_epoch`` at the start of every epoch); ``class_aware`` takes ``gamma``."""
    _check(name)
    n = num_samples or len(labels)
    if name == "progressive":
        if kwargs:
            raise ValueError(f"sampler 'progressive' takes no option(s) {sorted(kwargs)}")
        if not epochs:
            raise ValueError("sampler 'progressive' needs the number of epochs")
        return ProgressiveSampler(labels, epochs, generator, n)
    if name == "instance":
        class_exponent(name, **kwargs)  # rejects options
        return RandomSampler(range(len(labels)), num_samples=n, generator=generator)
    w = torch.as_tensor(sample_weights(labels, name, **kwargs), dtype=torch.double)
    return WeightedRandomSampler(w, num_samples=n, replacement=True, generator=generator)


def set_sampler_epoch(sampler, epoch: int) -> None:
    """Tell a per-epoch sampler (progressive) which epoch starts; a no-op for the others."""
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def effective_number_weights(counts, beta: float) -> torch.Tensor:
    """Cui et al. 2019: w_k proportional to (1 - beta) / (1 - beta**n_k), normalised to sum to
    the number of classes present; a class with no training image gets weight 0."""
    n = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    w = torch.zeros_like(n)
    present = n > 0
    w[present] = (1 - beta) / (1 - beta ** n[present])
    w = w / w.sum() * present.sum()
    return w.float()
