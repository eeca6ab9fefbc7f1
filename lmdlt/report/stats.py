"""Paired comparisons on the test images: bootstrap confidence intervals of a metric difference.

For one comparison (run A vs run B) and each seed, both runs' test predictions are on the same
test images (checked: same ids and labels). One bootstrap resample draws n test images with
replacement — the same indices for A and B (paired) — and computes metric(A) - metric(B) on
them; the per-seed differences are averaged over seeds (the table reports means over seeds).
The percentile interval of those averaged differences is the confidence interval; the two-sided
p-value is twice the share of resamples on the other side of zero (capped at 1), with the usual
1/(B+1) floor.
"""
from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn import metrics as skm

from ..io import open_h5


def balanced_accuracy_batch(labels: np.ndarray, pred: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Balanced accuracy of each resample: ``idx`` (B, n) image indices -> (B,).

    Mean recall over the classes present in the resample (as scikit-learn's
    ``balanced_accuracy_score``), vectorised over resamples."""
    b = idx.shape[0]
    lab = labels[idx]
    correct = (pred[idx] == lab).astype(np.float64)
    flat = (lab + k * np.arange(b)[:, None]).ravel()
    total = np.bincount(flat, minlength=b * k).reshape(b, k)
    hits = np.bincount(flat, weights=correct.ravel(), minlength=b * k).reshape(b, k)
    present = total > 0
    recall = np.divide(hits, total, out=np.zeros_like(hits), where=present)
    return recall.sum(1) / present.sum(1)


def _metric_fn(metric: str, k: int):
    """metric(labels, probs) for the metrics the bootstrap supports besides BACC."""
    classes = list(range(k))
    fns = {
        "accuracy": lambda y, p: skm.accuracy_score(y, p.argmax(1)),
        "auc": lambda y, p: skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=classes),
        "f1": lambda y, p: skm.f1_score(y, p.argmax(1), labels=classes, average="macro", zero_division=0),
        "precision": lambda y, p: skm.precision_score(y, p.argmax(1), labels=classes, average="macro",
                                                      zero_division=0),
        "recall": lambda y, p: skm.recall_score(y, p.argmax(1), labels=classes, average="macro",
                                                zero_division=0),
        "kappa_quadratic": lambda y, p: skm.cohen_kappa_score(y, p.argmax(1), labels=classes,
                                                              weights="quadratic"),
    }
    if metric not in fns:
        raise ValueError(f"bootstrap: unsupported main metric {metric!r} "
                         f"(bacc, {', '.join(fns)})")
    return fns[metric]


def metric_on_resamples(metric: str, labels: np.ndarray, probs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    k = probs.shape[1]
    if metric == "bacc":
        return balanced_accuracy_batch(labels, probs.argmax(1), idx, k)
    fn = _metric_fn(metric, k)
    out = np.empty(idx.shape[0])
    for i, ix in enumerate(idx):
        y = labels[ix]
        try:
            out[i] = fn(y, probs[ix])
        except ValueError:  # e.g. AUC of a resample that lost a class
            out[i] = np.nan
    return out


def paired_bootstrap(labels: list[np.ndarray], probs_a: list[np.ndarray], probs_b: list[np.ndarray],
                     metric: str = "bacc", resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> dict:
    """Paired bootstrap of metric(A) - metric(B), one (labels, probs_a, probs_b) per seed.

    Returns ``diff`` (mean over seeds of the observed differences), ``lo``/``hi`` (percentile
    interval of the seed-averaged resampled differences), ``p`` (two-sided), ``resamples``,
    ``n_seeds``."""
    if not labels or not (len(labels) == len(probs_a) == len(probs_b)):
        raise ValueError("paired_bootstrap: one labels/probs_a/probs_b triple per seed, at least one")
    rng = np.random.default_rng(seed)
    observed, boot = [], []
    for y, pa, pb in zip(labels, probs_a, probs_b):
        y = np.asarray(y)
        n = len(y)
        full = np.arange(n)[None, :]
        observed.append(float(metric_on_resamples(metric, y, pa, full)[0]
                              - metric_on_resamples(metric, y, pb, full)[0]))
        idx = rng.integers(0, n, size=(resamples, n))
        boot.append(metric_on_resamples(metric, y, pa, idx) - metric_on_resamples(metric, y, pb, idx))
    diffs = np.nanmean(np.vstack(boot), axis=0) if len(boot) > 1 else boot[0]
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    d = float(np.mean(observed))
    side = np.mean(diffs <= 0) if d > 0 else np.mean(diffs >= 0)
    p = float(min(1.0, max(2 * side, 1.0 / (len(diffs) + 1)))) if d != 0 else 1.0
    return {"diff": d, "lo": float(lo), "hi": float(hi), "p": p, "resamples": int(len(diffs)),
            "n_seeds": len(labels), "confidence": confidence}


def read_test_predictions(path, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, probabilities) of a features or predictions HDF5 file."""
    with open_h5(path, "predictions file") as f:
        ids = f[f"{split}/ids"].asstr()[:]
        labels = f[f"{split}/labels"][:]
        logits = f[f"{split}/logits"][:]
    return ids, labels, softmax(logits.astype(np.float64), axis=1)


def compare_runs(pred_a: dict, pred_b: dict, metric: str, resamples: int, confidence: float,
                 seed: int = 0) -> dict:
    """Paired bootstrap between two runs given {seed: predictions path}; seeds both have."""
    seeds = sorted(set(pred_a) & set(pred_b), key=int)
    if not seeds:
        raise ValueError("compare_runs: the two runs share no seed")
    ys, pas, pbs = [], [], []
    for s in seeds:
        ia, ya, pa = read_test_predictions(pred_a[s])
        ib, yb, pb = read_test_predictions(pred_b[s])
        if not (np.array_equal(ia, ib) and np.array_equal(ya, yb)):
            raise ValueError(f"seed {s}: {pred_a[s]} and {pred_b[s]} are not on the same test images")
        ys.append(ya)
        pas.append(pa)
        pbs.append(pb)
    return paired_bootstrap(ys, pas, pbs, metric, resamples, confidence, seed)
