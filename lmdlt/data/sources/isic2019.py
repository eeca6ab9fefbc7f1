"""ISIC 2019 (training set): the official ground-truth CSV plus a JPEG folder.

Layout under ``dataset.root`` (names configurable through ``dataset.options``)::

    ISIC_2019_Training_GroundTruth.csv     image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (one-hot)
    ISIC_2019_Training_Input/<image>.jpg

UNK (no image in the training set has it) is dropped, as are rows whose label is UNK. 2,074
images carry a ``_downsampled`` suffix in their name (``ISIC_0000017_downsampled``): the image id
is the name as listed (the ISIC archive has both ``ISIC_0013863`` and a different
``ISIC_0013863_downsampled``, so the suffix is not dropped from ids), and the file is found under
either spelling (redistributions often strip the suffix from file names).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import Source, SourceIndex, register_source
from ._files import FileImagesMixin, data_file, inside, load_images, read_csv, require_root

CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
SUFFIX = "_downsampled"


def isic_id(name: str) -> str:
    """The image id of an image file name: the name without its extension."""
    for ext in (".jpg", ".jpeg", ".JPG", ".png"):
        name = name.removesuffix(ext)
    return name


def isic_file(image_root: Path, rel: str) -> Path:
    """The image file of a relative path, trying the other ``_downsampled`` spelling too."""
    p = inside(image_root, rel)
    if p.is_file():
        return p
    stem, ext = p.stem, p.suffix
    alt = p.with_name(stem.removesuffix(SUFFIX) + ext if stem.endswith(SUFFIX) else stem + SUFFIX + ext)
    return alt if alt.is_file() else p  # a missing file is reported under its listed name


@register_source("isic2019")
class ISIC2019Source(FileImagesMixin, Source):
    options = {
        "csv": "ISIC_2019_Training_GroundTruth.csv",
        "image_dir": "ISIC_2019_Training_Input",
        "extension": ".jpg",
    }

    def image_root(self) -> Path:
        return inside(require_root(self.name, self.root), self.opts["image_dir"],
                      "dataset.options.image_dir")

    def index(self) -> SourceIndex:
        root = require_root(self.name, self.root)
        path = data_file(root, self.opts["csv"], "ISIC 2019 ground-truth CSV")
        df = read_csv(path, ["image", *CLASSES], "ISIC 2019 ground-truth CSV")
        onehot_cols = CLASSES + (["UNK"] if "UNK" in df.columns else [])
        try:
            onehot = df[onehot_cols].astype(float).to_numpy()
        except ValueError as e:
            raise ValueError(f"ISIC 2019 ground-truth CSV {str(path)!r}: non-numeric label ({e})") from None
        bad = np.flatnonzero(onehot.sum(axis=1) != 1)
        if len(bad):
            raise ValueError(f"ISIC 2019 ground-truth CSV {str(path)!r}: image "
                             f"{df['image'].iloc[bad[0]]!r} does not have exactly one label")
        label = onehot.argmax(axis=1)
        keep = label < len(CLASSES)  # UNK dropped
        names = df["image"].to_numpy()[keep]
        table = pd.DataFrame({
            "id": [isic_id(n) for n in names],
            "label": label[keep].astype(np.int64),
            "path": [n + self.opts["extension"] for n in names],
        })
        return SourceIndex(table, list(CLASSES))

    def image_files(self, table: pd.DataFrame) -> list[Path]:
        img_root = self.image_root()
        return [isic_file(img_root, p) for p in table["path"]]

    def images(self, table: pd.DataFrame, size: int | None) -> np.ndarray:
        img_root = self.image_root()
        return load_images([isic_file(img_root, p) for p in table["path"]], size)
