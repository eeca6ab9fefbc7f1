"""CIFAR-10 / CIFAR-100, the "python version" pickles.

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

(``dataset.root`` may also be that folder itself.) ``dataset.options.variant`` is 10 or 100;
CIFAR-100 labels are the ``fine`` ones unless ``label: coarse``. The index has a ``fold`` column
(train, test). The pickles are read with a restricted unpickler that only rebuilds NumPy arrays
and plain containers, never arbitrary objects.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from . import Source, SourceIndex, register_source
from ._files import require_root
from ..resize import resize_uint8

LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
    100: ("cifar-100-python", ["train"], ["test"], "meta"),
}
_ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")


def read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file {str(path)!r} not found")
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"CIFAR file {str(path)!r} is corrupt or not a CIFAR pickle ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR file {str(path)!r} is not a CIFAR pickle (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


@register_source("cifar")
class CifarSource(Source):
    options = {"variant": 10, "label": "fine"}

    def _folder(self) -> Path:
        root = require_root(self.name, self.root)
        variant = self.opts["variant"]
        if variant not in LAYOUT:
            raise ValueError(f"dataset.options.variant must be 10 or 100, got {variant!r}")
        sub = LAYOUT[variant][0]
        return root if root.name == sub else root / sub

    def _key(self) -> str:
        if self.opts["variant"] == 10:
            return "labels"
        if self.opts["label"] not in ("fine", "coarse"):
            raise ValueError(f"dataset.options.label must be fine or coarse, got {self.opts['label']!r}")
        return f"{self.opts['label']}_labels"

    def _batches(self):
        _, train, test, _ = LAYOUT[self.opts["variant"]]
        return [("train", b) for b in train] + [("test", b) for b in test]

    def data_files(self) -> list[Path]:
        folder = self._folder()
        return [folder / b for _, b in self._batches()] + [folder / LAYOUT[self.opts["variant"]][3]]

    def index(self) -> SourceIndex:
        folder = self._folder()
        key = self._key()
        meta_file = folder / LAYOUT[self.opts["variant"]][3]
        meta = read_pickle(meta_file)
        names_key = "label_names" if self.opts["variant"] == 10 else f"{self.opts['label']}_label_names"
        if names_key not in meta:
            raise ValueError(f"CIFAR file {str(meta_file)!r} lacks {names_key!r}")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
        frames = []
        for fold, b in self._batches():
            d = read_pickle(folder / b)
            if key not in d:
                raise ValueError(f"CIFAR file {str(folder / b)!r} lacks {key!r}")
            y = np.asarray(d[key], dtype=np.int64)
            frames.append(pd.DataFrame({"id": [f"{b}_{i:05d}" for i in range(len(y))], "label": y,
                                        "fold": fold}))
        return SourceIndex(pd.concat(frames, ignore_index=True), names)

    def images(self, table: pd.DataFrame, size: int | None) -> np.ndarray:
        folder = self._folder()
        batch = table["id"].str.rsplit("_", n=1).str[0].to_numpy()
        row = table["id"].str.rsplit("_", n=1).str[1].astype(int).to_numpy()
        out = np.empty((len(table), size or 32, size or 32, 3), np.uint8)
        for b in np.unique(batch):
            sel = np.flatnonzero(batch == b)
            memo = self.__dict__.setdefault("_data", {})  # one read per batch file
            if b not in memo:
                memo[b] = np.asarray(read_pickle(folder / b)["data"], dtype=np.uint8)
            data = memo[b]
            imgs = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)[row[sel]]
            out[sel] = resize_uint8(imgs, size)
        return out
