"""Post-hoc logit adjustment (Menon et al., ICLR 2021, "Long-tail learning via logit
adjustment"): the stage-1 classifier's logits shifted by the log training prior,
  z_k(x) - tau * log pi_k,  pi_k = n_k / N (training split),
nothing re-trained. tau is swept over a grid (default 0, 0.1, ..., 2) and the value with the
best balanced accuracy on the *validation* split is kept; ties go to the tau closest to 1 (the
reference's default), then to the smaller. The test split is never seen (``fit`` does not
receive it).

Reference (github.com/google-research/google-research, ``logit_adjustment/main.py``): flag
``tau`` default 1.0 (l.42); post-hoc mode ``adjusted_logits = logits -
tf.math.log(base_probs**tau + 1e-12)`` in the test loop, ``base_probs`` the training class
frequencies (``<dataset>_base_probs.txt``). The paper tunes tau on held-out data as well.
Defaults: tau grid [0, 2] step 0.1 (contains the reference's 1.0).
Departures: the +1e-12 inside the log is replaced by counting a class without training images
as 1 image (a finite shift); tau selected on validation balanced accuracy (the reference
reports a fixed tau)."""
from __future__ import annotations

import numpy as np

from ..method_registry import with_sources
from .base import TAU_GRID_PARAMS, Stage2Method, register, tau_grid


def log_prior(labels, num_classes: int) -> np.ndarray:
    n = np.maximum(np.bincount(labels, minlength=num_classes), 1).astype(np.float64)
    return np.log(n / n.sum())


def adjusted_logits(logits: np.ndarray, log_pi: np.ndarray, tau: float) -> np.ndarray:
    return np.asarray(logits, dtype=np.float64) - tau * log_pi[None, :]


@register("logit_adjust")
class PostHocLogitAdjustment(Stage2Method):
    params = with_sources(
        TAU_GRID_PARAMS,
        tau_min="paper: Menon et al. 2021 tune tau; the grid [0, 2] holds the reference's 1.0",
        tau_max="reference: google-research logit_adjustment/main.py:42 (tau flag 1.0, inside "
                "the grid)",
        tau_step="option: grid step, as tau_norm's")

    def grid(self) -> np.ndarray:
        return tau_grid(self.p, "logit_adjust")

    def _base_logits(self, features):
        return np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias

    def fit(self, train, val, stage1_classifier, generator):
        if stage1_classifier is None:
            raise ValueError("logit_adjust needs the stage-1 classifier (weight, bias) in the features file")
        if val is None or len(val["labels"]) == 0:
            raise ValueError("logit_adjust selects tau on the validation split, which is empty")
        from sklearn.metrics import balanced_accuracy_score  # lazy: only this method's jobs pay for it

        self.weight = np.asarray(stage1_classifier["weight"], dtype=np.float64)
        self.bias = np.asarray(stage1_classifier["bias"], dtype=np.float64)
        self.log_pi = log_prior(train["labels"], self.num_classes)
        z = self._base_logits(val["features"])
        self.scores = {}
        for tau in self.grid():
            pred = adjusted_logits(z, self.log_pi, tau).argmax(1)
            self.scores[float(tau)] = float(balanced_accuracy_score(val["labels"], pred))
        self.tau = max(self.scores, key=lambda t: (self.scores[t], -abs(t - 1.0), -t))

    def logits(self, features):
        return adjusted_logits(self._base_logits(features), self.log_pi, self.tau).astype(np.float32)

    def state(self):
        return {"log_prior": self.log_pi.astype(np.float32)}

    def summary(self):
        return {"tau": self.tau, "val_bacc": self.scores[self.tau]}
