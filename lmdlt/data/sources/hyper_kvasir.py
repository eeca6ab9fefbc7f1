"""Hyper-Kvasir (Borgli et al. 2020), the 10,662 labelled images in 23 classes.

Two layouts (``dataset.options.layout``):

* ``official`` (default) — the published tree plus its label list::

      <root>/image-labels.csv         Video file (the image uuid),Organ,Finding,Classification
      <root>/labeled-images/<organ>/<classification>/<finding>/<uuid>.jpg
          e.g. labeled-images/lower-gi-tract/pathological-findings/polyps/<uuid>.jpg

  (``image-labels.csv`` is also found inside ``labeled-images/``, where the release puts it.)
* ``flat`` — one folder per class, ``<root>/<class>/<uuid>.jpg``; no CSV needed.

Class names are the spellings of ``image-labels.csv`` (``polyps``, ``cecum``, ``hemorrhoids``,
``esophagitis-a`` ...). The official fold files and many flat trees use other spellings
(``polyp``, ``normal-cecum``, ``hemorroids``, ``oesophagitis-a`` ...): they are mapped onto the
canonical names (``ALIASES``). With ``options.folds`` set to an official fold file
(``splits/2_fold_split.csv``), the index gets a ``fold`` column for the ``predefined`` protocol;
every image must appear in it exactly once, with the same class.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import Source, SourceIndex, register_source
from ._files import (FileImagesMixin, check_confined, check_unreadable, data_file, inside,
                     labels_from_names, list_images, read_csv, require_root)

CLASSES = sorted([
    "barretts", "barretts-short-segment", "bbps-0-1", "bbps-2-3", "cecum", "dyed-lifted-polyps",
    "dyed-resection-margins", "esophagitis-a", "esophagitis-b-d", "hemorrhoids", "ileum",
    "impacted-stool", "polyps", "pylorus", "retroflex-rectum", "retroflex-stomach",
    "ulcerative-colitis-grade-0-1", "ulcerative-colitis-grade-1", "ulcerative-colitis-grade-1-2",
    "ulcerative-colitis-grade-2", "ulcerative-colitis-grade-2-3", "ulcerative-colitis-grade-3",
    "z-line",
])
#: other spellings (official fold files, flat trees) -> the image-labels.csv spelling
ALIASES = {
    "polyp": "polyps", "normal-cecum": "cecum", "hemorroids": "hemorrhoids",
    "oesophagitis-a": "esophagitis-a", "oesophagitis-b-d": "esophagitis-b-d",
    "short-segment-barretts": "barretts-short-segment", "normal-pylorus": "pylorus",
    "normal-z-line": "z-line",
}
ORGANS = {"lower gi": "lower-gi-tract", "upper gi": "upper-gi-tract"}


def canonical(name: str) -> str:
    name = name.strip().lower()
    return ALIASES.get(name, name)


@register_source("hyper_kvasir")
class HyperKvasirSource(FileImagesMixin, Source):
    options = {
        "layout": "official",
        "labels_csv": "image-labels.csv",
        "image_dir": None,  # official: labeled-images; flat: the root
        "folds": None,
        "extension": ".jpg",
    }

    def image_root(self) -> Path:
        root = require_root(self.name, self.root)
        d = self.opts["image_dir"]
        if d is None:
            d = "labeled-images" if self.opts["layout"] == "official" else "."
        return inside(root, d, "dataset.options.image_dir")

    def index(self) -> SourceIndex:
        self._skipped: list[tuple[str, str]] = []  # unreadable files of a flat tree
        layout = self.opts["layout"]
        if layout == "official":
            table = self._official()
        elif layout == "flat":
            table = self._flat()
        else:
            raise ValueError(f"dataset.options.layout: unknown Hyper-Kvasir layout {layout!r} "
                             "(known: official, flat)")
        if self.opts["folds"] is not None:
            table = self._with_folds(table)
        return SourceIndex(table.reset_index(drop=True), list(CLASSES),
                           skipped=self._skipped)

    def _official(self) -> pd.DataFrame:
        root = require_root(self.name, self.root)
        name = self.opts["labels_csv"]
        p = Path(name).expanduser()
        if not p.is_absolute() and not (root / p).is_file() and (self.image_root() / p).is_file():
            p = self.image_root() / p
        path = data_file(root, p, "Hyper-Kvasir label list")
        df = read_csv(path, ["Video file", "Organ", "Finding", "Classification"], "Hyper-Kvasir label list")
        where = f"Hyper-Kvasir label list {str(path)!r}"
        findings = [canonical(f) for f in df["Finding"]]
        labels = labels_from_names(findings, CLASSES, where)
        organs = []
        for o in df["Organ"]:
            key = o.strip().lower()
            if key not in ORGANS:
                raise ValueError(f"{where}: unknown Organ {o!r} (known: Lower GI, Upper GI)")
            organs.append(ORGANS[key])
        ext = self.opts["extension"]
        paths = [f"{o}/{c.strip()}/{f.strip()}/{u.strip()}{ext}"
                 for o, c, f, u in zip(organs, df["Classification"], df["Finding"], df["Video file"])]
        check_confined(self.image_root(), paths, where)
        return pd.DataFrame({"id": df["Video file"].str.strip().to_numpy(), "label": labels, "path": paths})

    def _flat(self) -> pd.DataFrame:
        img_root = self.image_root()
        if not img_root.is_dir():
            raise FileNotFoundError(f"Hyper-Kvasir flat tree {str(img_root)!r} not found")
        rows = []
        skipped: list[tuple[str, str]] = self._skipped
        for d in sorted(p for p in img_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = labels_from_names([canonical(d.name)], CLASSES, f"Hyper-Kvasir folder {str(d)!r}")[0]
            for f in list_images(d, skipped):
                rows.append((f.stem, int(label), f"{d.name}/{f.name}"))
        if not rows:
            raise ValueError(f"Hyper-Kvasir flat tree {str(img_root)!r} has no class folder with images")
        check_unreadable(skipped, len(rows), f"Hyper-Kvasir flat tree {str(img_root)!r}")
        return pd.DataFrame(rows, columns=["id", "label", "path"])

    def _with_folds(self, table: pd.DataFrame) -> pd.DataFrame:
        root = require_root(self.name, self.root)
        path = data_file(root, self.opts["folds"], "Hyper-Kvasir fold file")
        folds = read_csv(path, ["file-name", "class-name", "split-index"], "Hyper-Kvasir fold file", sep=";")
        where = f"Hyper-Kvasir fold file {str(path)!r}"
        ids = folds["file-name"].str.strip().str.replace(r"\.(jpg|jpeg|png)$", "", regex=True)
        dup = ids[ids.duplicated()]
        if len(dup):
            raise ValueError(f"{where}: image {dup.iloc[0]!r} is listed twice")
        fold_labels = labels_from_names([canonical(c) for c in folds["class-name"]], CLASSES, where)
        by_id = pd.DataFrame({"fold_label": fold_labels, "fold": folds["split-index"].str.strip().to_numpy()},
                             index=ids.to_numpy())
        missing = table.loc[~table["id"].isin(by_id.index), "id"]
        if len(missing):
            raise ValueError(f"{where}: image {missing.iloc[0]!r} of the index has no fold")
        extra = by_id.index.difference(pd.Index(table["id"]))
        if len(extra):
            raise ValueError(f"{where}: image {extra[0]!r} is not in the index")
        joined = by_id.loc[table["id"].to_numpy()]
        clash = np.flatnonzero(joined["fold_label"].to_numpy() != table["label"].to_numpy())
        if len(clash):
            i = clash[0]
            raise ValueError(f"{where}: image {table['id'].iloc[i]!r} is "
                             f"{CLASSES[joined['fold_label'].iloc[i]]!r} there but "
                             f"{CLASSES[table['label'].iloc[i]]!r} in the index")
        return table.assign(fold=joined["fold"].to_numpy())
