"""tau-normalisation (Kang et al. 2020): the stage-1 classifier's weights rescaled per class,
w_k / ||w_k||^tau, bias dropped. tau is swept over a grid (default 0, 0.1, ..., 2) and the value
with the best balanced accuracy on the *validation* split is kept (ties: the smallest tau); the
test split is never seen (``fit`` does not receive it)."""
from __future__ import annotations

import numpy as np

from ..method_registry import with_sources
from .base import TAU_GRID_PARAMS, Stage2Method, register, tau_grid


def tau_normalised(weight: np.ndarray, tau: float) -> np.ndarray:
    norms = np.linalg.norm(weight, axis=1, keepdims=True)
    return weight / np.maximum(norms, 1e-12) ** tau


@register("tau_norm")
class TauNorm(Stage2Method):
    params = with_sources(
        TAU_GRID_PARAMS,
        tau_min="reference: facebookresearch/classifier-balancing@22370c6 tau_norm.py:110 "
                "np.linspace(0, 2, 21)",
        tau_max="reference: facebookresearch/classifier-balancing@22370c6 tau_norm.py:110 "
                "np.linspace(0, 2, 21)",
        tau_step="reference: facebookresearch/classifier-balancing@22370c6 tau_norm.py:110 "
                 "(21 values over [0, 2])")

    def grid(self) -> np.ndarray:
        return tau_grid(self.p, "tau_norm")

    def fit(self, train, val, stage1_classifier, generator):
        if stage1_classifier is None:
            raise ValueError("tau_norm needs the stage-1 classifier (weight) in the features file")
        if val is None or len(val["labels"]) == 0:
            raise ValueError("tau_norm selects tau on the validation split, which is empty")
        from sklearn.metrics import balanced_accuracy_score  # lazy: only this method's jobs pay for it

        w = np.asarray(stage1_classifier["weight"], dtype=np.float64)
        self.scores = {}
        for tau in self.grid():
            pred = (val["features"] @ tau_normalised(w, tau).T).argmax(1)
            self.scores[float(tau)] = float(balanced_accuracy_score(val["labels"], pred))
        self.tau = max(self.scores, key=lambda t: (self.scores[t], -t))
        self.weight = tau_normalised(w, self.tau).astype(np.float32)

    def logits(self, features):
        return np.asarray(features, dtype=np.float32) @ self.weight.T

    def state(self):
        return {"weight": self.weight}

    def summary(self):
        return {"tau": self.tau, "val_bacc": self.scores[self.tau]}
