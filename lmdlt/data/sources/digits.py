"""The embedded default: scikit-learn's real 8x8 handwritten digits (1,797 images, 10 classes).

Needs no download; a long-tail profile turns it into a small LT benchmark that trains on CPU in
seconds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import Source, SourceIndex, register_source
from ..resize import resize_uint8


@register_source("digits")
class DigitsSource(Source):
    needs_root = False
    options: dict = {}

    def _data(self):
        from sklearn.datasets import load_digits

        return load_digits()

    def index(self) -> SourceIndex:
        d = self._data()
        table = pd.DataFrame({
            "id": [f"digit_{i:04d}" for i in range(len(d.target))],
            "label": d.target.astype(np.int64),
        })
        return SourceIndex(table, [str(c) for c in d.target_names])

    def images(self, table: pd.DataFrame, size: int | None) -> np.ndarray:
        d = self._data()
        rows = table["id"].str.removeprefix("digit_").astype(int).to_numpy()
        # pixel values are 0..16 in the original data
        imgs = np.rint(d.images[rows] * (255.0 / 16.0)).astype(np.uint8)[..., None]
        return resize_uint8(imgs, size)
