"""ISIC archive split lists (Ju et al. 2022, "Flexible Sampling"; ISIC2019-LT and
ISIC-Archive-LT): NumPy arrays of image file names per split plus a name -> label map.

Layout::

    <lists>/dic.csv                    name,label   (name = file name, label = 0..K-1)
    <lists>/train.npy val.npy test.npy (or train_100.npy ...: dataset.options.split_files)
    <root>/<image_dir>/<name>          the JPEGs (ISIC_xxxxxxx.jpg, some *_downsampled.jpg)

``lists`` defaults to the data root. The index holds the images of the split files, with a
``fold`` column naming the file each came from, so the ``predefined`` split protocol reproduces
the published split exactly. Ids are the file names without extension, as in the
``isic2019`` source; files are found under either ``_downsampled`` spelling.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import Source, SourceIndex, register_source
from ._files import check_confined, data_file, inside, load_images, read_csv, require_root
from .isic2019 import isic_file, isic_id


@register_source("isic_lists")
class ISICListsSource(Source):
    options = {
        "lists": None,
        "image_dir": ".",
        "dic": "dic.csv",
        "split_files": {"train": "train.npy", "val": "val.npy", "test": "test.npy"},
        "class_names": None,
    }

    def _lists_root(self) -> Path:
        root = require_root(self.name, self.root)
        lists = self.opts["lists"]
        return root if lists is None else Path(lists).expanduser().resolve()

    def image_root(self) -> Path:
        return inside(require_root(self.name, self.root), self.opts["image_dir"],
                      "dataset.options.image_dir")

    def index(self) -> SourceIndex:
        lists = self._lists_root()
        dic_path = data_file(lists, self.opts["dic"], "label map")
        dic = read_csv(dic_path, ["name", "label"], "label map")
        try:
            labels = dic["label"].astype(int).to_numpy()
        except ValueError as e:
            raise ValueError(f"label map {str(dic_path)!r}: non-integer label ({e})") from None
        names = self.opts["class_names"]
        k = int(labels.max()) + 1 if len(labels) else 0
        if names is None:
            names = [str(i) for i in range(k)]
        bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
        if len(bad):
            raise ValueError(f"label map {str(dic_path)!r}: image {dic['name'].iloc[bad[0]]!r} has "
                             f"label {labels[bad[0]]}, not in the class list {list(names)}")
        label_of = dict(zip(dic["name"], labels))

        files = self.opts["split_files"]
        if files is None:
            table = pd.DataFrame({"id": [isic_id(n) for n in dic["name"]], "label": labels,
                                  "path": dic["name"].tolist()})
            check_confined(self.image_root(), table["path"], f"label map {str(dic_path)!r}")
            return SourceIndex(table, list(names))
        rows = []
        for fold, fname in files.items():
            path = data_file(lists, fname, f"split file ({fold})")
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise ValueError(f"split file {str(path)!r}: not a NumPy array of names ({e})") from None
            for n in arr.reshape(-1).tolist():
                if n not in label_of:
                    raise ValueError(f"split file {str(path)!r}: image {n!r} is not in the "
                                     f"label map {str(dic_path)!r}")
                rows.append((isic_id(n), int(label_of[n]), n, fold))
        table = pd.DataFrame(rows, columns=["id", "label", "path", "fold"])
        check_confined(self.image_root(), table["path"], f"split files {sorted(files.values())}")
        dup = table["id"][table["id"].duplicated()]
        if len(dup):
            raise ValueError(f"split files {sorted(files.values())}: image {dup.iloc[0]!r} is listed "
                             "twice (in two splits or twice in one)")
        return SourceIndex(table, list(names))

    def image_files(self, table: pd.DataFrame) -> list[Path]:
        img_root = self.image_root()
        return [isic_file(img_root, p) for p in table["path"]]

    def images(self, table: pd.DataFrame, size: int | None) -> np.ndarray:
        img_root = self.image_root()
        return load_images([isic_file(img_root, p) for p in table["path"]], size)
