"""A CSV list of images: one row per image, ``path,label[,group]``.

``dataset.root`` is the CSV file itself, or a folder holding it (``dataset.options.csv``, by
default ``labels.csv``)::

    path,label,group
    images/0001.png,benign,patient_17
    images/0002.png,malignant,patient_17
    /data/other/0003.png,benign,patient_02

* ``path``: relative to the CSV's folder (or to ``dataset.options.image_root``), where it must
  stay (a '..' that climbs out is refused), or absolute (the list names it: use lists you trust).
* ``label``: a class name (any text; classes are the sorted names, numerically when every name
  is an integer, unless ``dataset.options.class_names`` lists them, in head-to-tail or any order).
* ``group`` (optional): a patient, lesion, video... id.
* Labels and groups that look like numbers (digits, an optional sign and decimal point) are
  compared as numbers: ``4``, ``4.0`` and ``004`` are one group ``4``, ``0`` and ``0.0`` one
  class ``0`` (a spreadsheet or pandas often writes one id in several ways); the merged
  spellings are named in a warning. Other text is compared as written. With ``split.grouped: true`` (``lmd`` and
  ``random`` protocols) every group goes whole to one split, so near-duplicates of one patient
  never sit in train and test. ``dataset.options.group_column``: ``null`` (the default) uses a
  ``group`` column when the CSV has one; a name requires that column.

Column names: ``dataset.options.path_column``, ``label_column``, ``group_column``. Every image
file is checked to exist when the index is read (a stat, no decoding), so a missing file stops the
run before any job starts. Errors name the CSV file and the row (``row 3 (line 4)``: data rows
count from 1 after the header line).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import Source, SourceIndex, normalise_key, normalise_keys, register_source
from ._files import (ChannelsOption, FileImagesMixin, files_inside, inside, load_images, read_csv,
                     require_root)


def _row(i: int) -> str:
    return f"row {i + 1} (line {i + 2})"


def sort_class_names(names) -> list[str]:
    """Sorted class names: numerically when every name is an integer ('2' before '10')."""
    names = sorted(set(names))
    try:
        return sorted(names, key=int)
    except ValueError:
        return names


@register_source("csv")
class CSVListSource(ChannelsOption, FileImagesMixin, Source):
    options = {
        "csv": "labels.csv",
        "path_column": "path",
        "label_column": "label",
        "group_column": None,
        "class_names": None,
        "image_root": None,
        "channels": 3,
    }

    def csv_path(self) -> Path:
        root = require_root(self.name, self.root)
        if root.is_dir():
            name = Path(str(self.opts["csv"])).expanduser()
            p = name if name.is_absolute() else root / name
        else:
            p = root
        if not p.is_file():
            raise FileNotFoundError(f"image list CSV {str(p)!r} not found")
        return p

    def image_root(self) -> Path:
        base = self.opts["image_root"]
        csv_dir = self.csv_path().parent
        if base is None:
            return csv_dir
        b = Path(str(base)).expanduser()
        return Path(os.path.abspath(b if b.is_absolute() else csv_dir / b))

    def resolve(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        if p.is_absolute():
            return p
        return inside(self.image_root(), rel)

    def index(self) -> SourceIndex:
        path = self.csv_path()
        where = f"image list CSV {str(path)!r}"
        pcol, lcol, gcol = (self.opts["path_column"], self.opts["label_column"],
                            self.opts["group_column"])
        df = read_csv(path, [pcol, lcol] + ([gcol] if gcol else []), "image list CSV")
        if gcol is None and "group" in df.columns:
            gcol = "group"
        if df.empty:
            raise ValueError(f"{where} has no rows")
        paths = df[pcol].str.strip()
        labels = pd.Series(normalise_keys(df[lcol].tolist(), "label", where), index=df.index)
        root = self.image_root()
        for i, (p, y) in enumerate(zip(paths, labels)):
            if p == "":
                raise ValueError(f"{where} {_row(i)}: empty {pcol!r}")
            if y == "":
                raise ValueError(f"{where} {_row(i)}: empty label ({lcol!r}) for image {p!r}")
            try:
                full = self.resolve(p)
            except ValueError as e:
                raise ValueError(f"{where} {_row(i)}: {e}") from None
            if not full.is_file():
                raise FileNotFoundError(f"{where} {_row(i)}: image file {str(full)!r} not found"
                                        + ("" if Path(p).is_absolute()
                                           else f" (paths are relative to {str(root)!r})"))
        dup = paths.duplicated(keep=False)
        if dup.any():
            rows = np.flatnonzero(dup.to_numpy())[:2]
            raise ValueError(f"{where}: image {paths.iloc[rows[0]]!r} is listed twice "
                             f"({_row(rows[0])} and {_row(rows[1])})")
        names = self.opts["class_names"]
        if names:
            spelled = [str(n) for n in names]
            names = [normalise_key(n) for n in spelled]
            for k, n in enumerate(names):
                if names.index(n) != k:
                    raise ValueError(f"dataset.options.class_names: {spelled[names.index(n)]!r} and "
                                     f"{spelled[k]!r} are one class ({n!r}: numeric-looking names "
                                     "are compared as numbers)")
            lookup = {n: k for k, n in enumerate(names)}
            for i, y in enumerate(labels):
                if y not in lookup:
                    raise ValueError(f"{where} {_row(i)}: label {y!r} is not in "
                                     f"dataset.options.class_names {names}")
        else:
            names = sort_class_names(labels)
            lookup = {n: k for k, n in enumerate(names)}
        table = pd.DataFrame({
            "id": paths.to_numpy(),
            "label": np.array([lookup[y] for y in labels], dtype=np.int64),
            "path": paths.to_numpy(),
        })
        if gcol:
            groups = df[gcol].str.strip()
            empty = np.flatnonzero(groups.eq("").to_numpy())
            if len(empty):
                raise ValueError(f"{where} {_row(empty[0])}: empty group ({gcol!r}) for image "
                                 f"{paths.iloc[empty[0]]!r} (give every image a group, or leave "
                                 "the column out)")
            table["group"] = normalise_keys(groups.tolist(), "group", where)
        return SourceIndex(table, list(names))

    def image_files(self, table: pd.DataFrame) -> list[str]:
        paths = table["path"].tolist()
        relative = [p for p in paths if not Path(p).expanduser().is_absolute()]
        inside_root = iter(files_inside(self.image_root(), relative))
        return [str(Path(p).expanduser()) if Path(p).expanduser().is_absolute() else next(inside_root)
                for p in paths]

    def images(self, table: pd.DataFrame, size: int | None) -> np.ndarray:
        if "path" not in table.columns:
            raise ValueError(f"source {self.name!r}: the index has no 'path' column")
        return load_images([self.resolve(p) for p in table["path"]], size, self.channels)
