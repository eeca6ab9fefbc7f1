"""MedMNIST / MedMNIST+ ``.npz`` files (``train_images``, ``train_labels``, ``val_*``, ``test_*``).

``dataset.root`` is the ``.npz`` file itself, or a folder with ``dataset.options.file`` in it
(e.g. ``dermamnist.npz``). Images are (N, H, W) grey or (N, H, W, 3) RGB uint8; labels (N, 1)
(multi-label sets such as ChestMNIST are rejected). The index has a ``fold`` column (train, val,
test: the official split, for the ``predefined`` protocol); ids are ``<fold>_<row>``. The .npz
is read without pickle (``allow_pickle=False``).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from . import Source, SourceIndex, register_source
from ._files import data_file, require_root
from ..resize import resize_uint8

FOLDS = ("train", "val", "test")


@register_source("medmnist")
class MedMNISTSource(Source):
    options = {"file": None, "class_names": None}

    def _path(self) -> Path:
        root = require_root(self.name, self.root)
        if self.opts["file"] is None:
            if root.suffix == ".npz" and root.is_file():
                return root
            raise ValueError("dataset.options.file: name the .npz file (or set dataset.root to it); "
                             f"{str(root)!r} is not a .npz file")
        return data_file(root, self.opts["file"], "MedMNIST file")

    def _load(self, key: str) -> np.ndarray:
        """One array of the file (kept: an .npz array is decompressed whole on every read)."""
        memo = self.__dict__.setdefault("_arrays", {})
        if key in memo:
            return memo[key]
        path = self._path()
        try:
            with np.load(path, allow_pickle=False) as z:
                if key not in z.files:
                    raise ValueError(f"MedMNIST file {str(path)!r} lacks array {key!r} "
                                     f"(arrays found: {sorted(z.files)})")
                memo[key] = z[key]
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"MedMNIST file {str(path)!r} cannot be read ({e})") from None
        return memo[key]

    def data_files(self) -> list[Path]:
        return [self._path()]

    def index(self) -> SourceIndex:
        frames = []
        for fold in FOLDS:
            y = self._load(f"{fold}_labels")
            if y.ndim == 2 and y.shape[1] != 1:
                raise ValueError(f"MedMNIST file {str(self._path())!r}: {fold}_labels has shape "
                                 f"{y.shape}; multi-label sets are not supported")
            y = y.reshape(-1).astype(np.int64)
            frames.append(pd.DataFrame({"id": [f"{fold}_{i:06d}" for i in range(len(y))],
                                        "label": y, "fold": fold}))
        table = pd.concat(frames, ignore_index=True)
        k = int(table["label"].max()) + 1
        names = self.opts["class_names"] or [str(i) for i in range(k)]
        if k > len(names):
            raise ValueError(f"MedMNIST file {str(self._path())!r}: label {k - 1} is not in the "
                             f"class list {list(names)}")
        return SourceIndex(table, list(names))

    def images(self, table: pd.DataFrame, size: int | None) -> np.ndarray:
        fold = table["id"].str.rsplit("_", n=1).str[0].to_numpy()
        row = table["id"].str.rsplit("_", n=1).str[1].astype(int).to_numpy()
        out = None
        for f in FOLDS:
            sel = np.flatnonzero(fold == f)
            if not len(sel):
                continue
            arr = self._load(f"{f}_images")
            if arr.ndim == 3:
                arr = arr[..., None]
            block = resize_uint8(arr[row[sel]].astype(np.uint8, copy=False), size)
            if out is None:
                out = np.empty((len(table),) + block.shape[1:], np.uint8)
            out[sel] = block
        if out is None:
            side = size or 28
            out = np.zeros((0, side, side, 1), np.uint8)
        return out
