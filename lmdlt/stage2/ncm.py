"""NCM, nearest class mean (Kang et al. 2020): training features centred by their mean and
L2-normalised; each class's centroid is the mean of its normalised features; a feature is
scored by cosine similarity to the (normalised) centroids, or by minus the Euclidean distance."""
from __future__ import annotations

import numpy as np

from .base import Stage2Method, register


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@register("ncm")
class NearestClassMean(Stage2Method):
    params = {"metric": {"enum": ["cosine", "euclidean"], "default": "cosine",
                         "description": "score: cosine to the centroids, or minus the Euclidean distance",
                         "source": "departure: cosine (reference: facebookresearch/classifier-"
                                   "balancing@22370c6 models/KNNClassifier.py:16 dist_type 'l2'; "
                                   "Kang et al. 2020 report both)"}}

    def fit(self, train, val, stage1_classifier, generator):
        x = np.asarray(train["features"], dtype=np.float64)
        y = np.asarray(train["labels"])
        missing = sorted(set(range(self.num_classes)) - set(np.unique(y).tolist()))
        if missing:
            raise ValueError(f"ncm: classes {missing} have no training feature")
        self.mean = x.mean(0)
        z = _l2(x - self.mean)
        self.centroids = np.stack([z[y == k].mean(0) for k in range(self.num_classes)])

    def logits(self, features):
        z = _l2(np.asarray(features, dtype=np.float64) - self.mean)
        if self.p["metric"] == "cosine":
            out = z @ _l2(self.centroids).T
        else:
            out = -np.linalg.norm(z[:, None, :] - self.centroids[None, :, :], axis=2)
        return out.astype(np.float32)

    def state(self):
        return {"centroids": self.centroids.astype(np.float32), "mean": self.mean.astype(np.float32)}
