"""HAM10000 (Tschandl et al. 2018): the metadata CSV plus JPEG folder(s).

Layout under ``dataset.root``::

    HAM10000_metadata.csv        lesion_id,image_id,dx,dx_type,age,sex,localization
    HAM10000_images_part_1/<image_id>.jpg
    HAM10000_images_part_2/<image_id>.jpg     (dataset.options.image_dirs: any list of folders)

Seven classes (``dx``): akiec, bcc, bkl, df, mel, nv, vasc. The index's ``group`` column is the
``lesion_id``: images of one lesion are near duplicates, so a leak-free split keeps each lesion
in one split (``split.grouped: true``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import Source, SourceIndex, register_source
from ._files import (check_confined, data_file, files_inside, inside, labels_from_names, load_images,
                     read_csv, require_root)

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


@register_source("ham10000")
class HAM10000Source(Source):
    options = {
        "csv": "HAM10000_metadata.csv",
        "image_dirs": ["HAM10000_images_part_1", "HAM10000_images_part_2"],
        "extension": ".jpg",
    }

    def _dirs(self) -> list[Path]:
        root = require_root(self.name, self.root)
        dirs = self.opts["image_dirs"]
        if isinstance(dirs, str):
            dirs = [dirs]
        return [inside(root, d, "dataset.options.image_dirs entry") for d in dirs]

    def index(self) -> SourceIndex:
        root = require_root(self.name, self.root)
        path = data_file(root, self.opts["csv"], "HAM10000 metadata CSV")
        df = read_csv(path, ["lesion_id", "image_id", "dx"], "HAM10000 metadata CSV")
        table = pd.DataFrame({
            "id": df["image_id"].to_numpy(),
            "label": labels_from_names(df["dx"], CLASSES, f"HAM10000 metadata CSV {str(path)!r}"),
            "path": (df["image_id"] + self.opts["extension"]).to_numpy(),
            "group": df["lesion_id"].to_numpy(),
        })
        check_confined(self._dirs()[0], table["path"], f"HAM10000 metadata CSV {str(path)!r}")
        empty = table["group"].eq("")
        if empty.any():
            raise ValueError(f"HAM10000 metadata CSV {str(path)!r}: image "
                             f"{table['id'][empty].iloc[0]!r} has no lesion_id")
        return SourceIndex(table, list(CLASSES))

    def _find(self, dirs: list[Path], rel: str) -> Path:
        cands = [inside(d, rel) for d in dirs]
        for c in cands:
            if c.is_file():
                return c
        return cands[0]  # reported as missing under the first folder

    def image_files(self, table: pd.DataFrame) -> list[str]:
        """As ``images`` finds them: the first folder of ``image_dirs`` that has the file."""
        rels = table["path"].tolist()
        per_dir = [files_inside(d, rels) for d in self._dirs()]
        return [next((f for f in cands if os.path.isfile(f)), cands[0]) for cands in zip(*per_dir)]

    def images(self, table: pd.DataFrame, size: int | None) -> np.ndarray:
        dirs = self._dirs()
        paths = [self._find(dirs, p) for p in table["path"]]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"image file {str(missing[0])!r} not found (searched "
                                    f"{[str(d) for d in dirs]})")
        return load_images(paths, size)
