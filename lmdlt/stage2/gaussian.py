"""Gaussian feature statistics shared by the LMD stage-2 methods (VFC, implicit VFC, ICC/FDC).

* ``class_statistics``: per-class mean and covariance of features drawn with a sampler
  (Eq. 6/7 of the LMD paper: class-balanced resampling in the M-step), covariance with
  ``/(n - 1)`` plus ``cov_reg * I`` as in the reference code.
* ``ema_update``: the EMA of the statistics across ICC iterations, decay
  ``min(1 - 1/(step + 1), decay)`` (step counts from 0, so the first estimate is taken as is).
* ``iter_virtual_batches``: exactly R virtual features per class drawn from N(mu_k, Sigma_k),
  generated batch by batch (never R x K x C at once) in a seeded random class order.
* ``isda_logits``: the closed-form upper bound of the expected cross-entropy under
  N(mu_k, Sigma_k) (ISDA, Wang et al. 2019), i.e. VFC in the limit R -> infinity.
* ``psi_phi`` / ``fdc_loss``: attraction Psi and repulsion Phi of the E-step (Eqs. 10-12) as
  squared Mahalanobis distances with the inverse covariance (through a Cholesky factor).
* ``generalized_ce``: the generalised cross-entropy (Zhang & Sabuncu 2018) the reference code
  uses in the E-step.
"""
from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..data.samplers import sample_weights

log = logging.getLogger("lmdlt.stage2")

#: relative jitter tried first on a singular covariance, multiplied by 10 up to JITTER_MAX
JITTER_START = 1e-3
JITTER_MAX = 1e2


def resample_indices(labels: np.ndarray, sampler: str, generator: torch.Generator) -> np.ndarray:
    """Indices of the features one estimation uses.

    ``instance``: every training feature once (the plain per-class estimate).
    Any other sampler (``class_balanced``, ``sqrt``...): ``len(labels)`` draws with replacement
    with that sampler's per-sample probabilities, as the reference code's
    ``ImbalancedDatasetSampler`` loader does (so E[N_hat_k] = N/K for class_balanced, Eq. 7).
    """
    labels = np.asarray(labels)
    if sampler == "instance":
        return np.arange(len(labels))
    w = torch.as_tensor(sample_weights(labels, sampler), dtype=torch.double)
    return torch.multinomial(w, len(labels), replacement=True, generator=generator).numpy()


def class_statistics(features, labels, num_classes: int, cov_reg: float = 1e-2,
                     sampler: str = "instance", generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Per-class mean (K, C) and regularised covariance (K, C, C) in float64, plus the number
    of drawn features per class.

    Covariance: ``sum (x - mu)(x - mu)^T / (n - 1) + cov_reg * I``. A class drawn fewer than
    twice gets the scatter term 0 (only ``cov_reg * I``, logged as a warning); a class with no
    training feature at all, or non-finite features, is an error (no distribution can be
    estimated). A singular covariance (cov_reg 0 with few or rank-deficient features) is
    regularised later, by ``cholesky``.
    """
    x = x_all = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        rows = torch.nonzero(~torch.isfinite(x).all(1)).flatten()
        raise ValueError(f"{len(rows)} training features are non-finite (NaN/inf), e.g. row "
                         f"{int(rows[0])}: cannot estimate class Gaussians from them")
    y = np.asarray(labels, dtype=np.int64)
    y_all = torch.as_tensor(y)
    present = np.bincount(y, minlength=num_classes)
    if (present == 0).any():
        missing = np.flatnonzero(present == 0).tolist()
        raise ValueError(f"classes {missing} have no training features: cannot estimate their "
                         "Gaussian (VFC needs every class in the training split)")
    if sampler != "instance":
        if generator is None:
            raise ValueError("a resampling estimate needs a seeded generator")
        idx = resample_indices(y, sampler, generator)
        x, y = x[torch.as_tensor(idx)], y[idx]
    c = x.shape[1]
    counts = np.bincount(y, minlength=num_classes)
    mu = torch.zeros(num_classes, c, dtype=torch.float64)
    cov = torch.zeros(num_classes, c, c, dtype=torch.float64)
    yt = torch.as_tensor(y)
    for k in range(num_classes):
        xk = x[yt == k]
        if len(xk) == 0:  # resampling drew no feature of a (rare) class: use all of its features
            xk = x_all[y_all == k]
        mu[k] = xk.mean(0)
        if len(xk) > 1:
            d = xk - mu[k]
            cov[k] = d.T @ d / (len(xk) - 1)
        else:
            log.warning("class %d has %d training feature(s) drawn: its covariance is cov_reg * I "
                        "(%g) only", k, len(xk), cov_reg)
        cov[k] += cov_reg * torch.eye(c, dtype=torch.float64)
    return mu, cov, counts


def ema_decay(decay: float, step: int) -> float:
    """The reference code's warm-up of an EMA: ``min(1 - 1/(step + 1), decay)``."""
    return min(1.0 - 1.0 / (step + 1), decay)


def ema_update(ema: torch.Tensor | None, new: torch.Tensor, decay: float, step: int) -> torch.Tensor:
    """``alpha * ema + (1 - alpha) * new`` with ``alpha = ema_decay(decay, step)``; a new tensor."""
    if ema is None:
        return new.clone()
    a = ema_decay(decay, step)
    return ema * a + new * (1.0 - a)


def cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factors of (K, C, C) covariances.

    A covariance that is not positive definite (a class with one or two features and
    ``cov_reg`` 0, rank-deficient features such as dead ReLU dimensions) gets a jitter on its
    diagonal, ``JITTER_START`` times the mean variance of all classes, raised tenfold until it
    factorises; each such class is logged with the jitter it needed. Non-finite covariances, or
    one that no jitter up to ``JITTER_MAX`` fixes, are an error naming the classes.
    """
    finite = torch.isfinite(cov).flatten(1).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(f"covariance of classes {bad} is non-finite (NaN/inf features?)")
    L, info = torch.linalg.cholesky_ex(cov)
    bad = torch.nonzero(info).flatten().tolist()
    if not bad:
        return L
    L = L.clone()
    scale = float(torch.diagonal(cov, 0, 1, 2).mean())
    scale = scale if scale > 0 else 1.0
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    for k in bad:
        rel = JITTER_START
        while rel <= JITTER_MAX:
            Lk, info_k = torch.linalg.cholesky_ex(cov[k] + rel * scale * eye)
            if int(info_k) == 0:
                break
            rel *= 10
        else:
            raise ValueError(f"covariance of class {k} is not positive definite even with a "
                             f"jitter of {JITTER_MAX:g} x the mean variance; raise cov_reg")
        log.warning("covariance of class %d is singular (not positive definite): regularised "
                    "with %.3g * I on its diagonal (%g x the mean variance %.3g); raise cov_reg "
                    "to silence this", k, rel * scale, rel, scale)
        L[k] = Lk
    return L


#: rows of virtual features transformed together (several batches): one matmul per class per
#: group instead of one masked matmul (and a host sync) per class per batch
GROUP_ROWS = 8192


def iter_virtual_batches(mu: torch.Tensor, chol: torch.Tensor, per_class: int, batch_size: int,
                         generator: torch.Generator, dtype=torch.float32, device=None
                         ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (features (b, C), labels (b,)) batches: exactly ``per_class`` draws from
    N(mu_k, L_k L_k^T) for every class k, in a seeded random order of classes.

    Only a group of about ``GROUP_ROWS`` virtual features exists at a time (plus the R*K label
    permutation), so memory is O(GROUP_ROWS * C + K * C^2 + R * K) instead of O(R * K * C). On
    a CUDA ``device`` the draws happen there, from a device generator seeded from
    ``generator``. The standard normal draws are made batch by batch; within a group the rows
    are sorted by class on the host (the labels are drawn on the CPU) and each class's rows go
    through one matmul, so no step waits for the device (no host sync) and a class costs one
    kernel per group, not one masked selection per batch."""
    k, c = mu.shape
    dev = torch.device(device) if device is not None else torch.device("cpu")
    mu_ = mu.to(dev, dtype)
    chol_t = chol.to(dev, dtype).transpose(1, 2)
    labels = torch.arange(k).repeat_interleave(per_class)
    labels = labels[torch.randperm(len(labels), generator=generator)]
    gen = generator
    if dev.type != "cpu":
        gen = torch.Generator(device=dev)
        gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    group = max(1, GROUP_ROWS // batch_size) * batch_size
    for g0 in range(0, len(labels), group):
        y_host = labels[g0:g0 + group]
        z = torch.cat([torch.randn(len(y_host[s:s + batch_size]), c, generator=gen, dtype=dtype, device=dev)
                       for s in range(0, len(y_host), batch_size)])
        order = torch.argsort(y_host, stable=True)
        counts = torch.bincount(y_host, minlength=k).tolist()  # host labels: no device sync
        order_dev = order.to(dev, non_blocking=True)
        pieces = z[order_dev].split(counts)
        v = torch.empty_like(z)
        v[order_dev] = torch.cat([p @ chol_t[cls] + mu_[cls] for cls, p in enumerate(pieces) if len(p)])
        y = y_host.to(dev, non_blocking=True)
        for s in range(0, len(y_host), batch_size):
            yield v[s:s + batch_size], y[s:s + batch_size]


def isda_logits(weight: torch.Tensor, bias: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor,
                strength: float = 1.0) -> torch.Tensor:
    """Augmented logits (K, K) whose cross-entropy with labels ``arange(K)`` upper-bounds the
    expected cross-entropy of a linear classifier over x ~ N(mu_k, Sigma_k) (Jensen, ISDA):

        z_kj = w_j . mu_k + b_j + strength/2 * (w_j - w_k)^T Sigma_k (w_j - w_k).
    """
    logits = mu @ weight.T + bias  # (K, K)
    diff = weight.unsqueeze(0) - weight.unsqueeze(1)  # diff[k, j] = w_j - w_k
    quad = torch.einsum("kjc,kcd,kjd->kj", diff, cov, diff)
    return logits + 0.5 * strength * quad


def mahalanobis_sq(x: torch.Tensor, mu: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances (B, K) of features x (B, C) to every class mean, with the
    inverse covariance Sigma_k^{-1} = (L_k L_k^T)^{-1}: ||L_k^{-1} (x - mu_k)||^2."""
    diff = x.unsqueeze(0) - mu.unsqueeze(1)  # (K, B, C)
    sol = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)  # (K, C, B)
    return sol.pow(2).sum(1).T  # (B, K)


def psi_phi(x: torch.Tensor, y: torch.Tensor, mu: torch.Tensor, chol: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attraction Psi (mean distance to the own class mean, Eq. 10) and repulsion Phi (mean over
    the batch of the mean distance to the other K-1 class means, Eq. 11)."""
    d = mahalanobis_sq(x, mu.to(x.dtype), chol.to(x.dtype))
    own = F.one_hot(y, mu.shape[0]).bool()
    psi = d[own].mean()
    phi = d[~own].view(len(y), -1).mean()
    return psi, phi


def fdc_loss(x, y, mu, chol, sign: str = "paper", reference_dim: int | None = None,
             floor: float | None = None) -> torch.Tensor:
    """The FDC regulariser: ``paper`` Psi - Phi (Eq. 12: pulls a feature toward its own class
    mean); ``reference`` Phi - Psi (the sign the reference code's function returns).

    Beyond the paper (both off by default, i.e. the paper's form):

    * ``reference_dim``: squared Mahalanobis distances grow with the feature dimension C (about
      C for a feature of its own class), so lambda_e = 1e-4, set for C = 512, makes the term
      negligible at C = 32. With ``reference_dim`` the term is multiplied by reference_dim / C:
      lambda_e keeps the weight it has at C = reference_dim.
    * ``floor``: Psi - Phi has no lower bound (Phi grows without limit as class means separate);
      the term is ``max(term, -floor * C)``, so it stops pushing once the mean repulsion exceeds
      the attraction by ``floor`` per dimension (no gradient below the floor).
    """
    psi, phi = psi_phi(x, y, mu, chol)
    if sign == "paper":
        term = psi - phi
    elif sign == "reference":
        term = phi - psi
    else:
        raise ValueError(f"fdc_sign: unknown sign {sign!r} (paper, reference)")
    c = x.shape[1]
    if floor is not None:
        term = torch.clamp(term, min=-floor * c)
    if reference_dim is not None:
        term = term * (reference_dim / c)
    return term


def generalized_ce(logits: torch.Tensor, y: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Generalised cross-entropy (1 - p_y^q) / q, mean over the batch (p clamped at 1e-7)."""
    p = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1).clamp(1e-7, 1.0)
    return ((1.0 - p.pow(q)) / q).mean()
