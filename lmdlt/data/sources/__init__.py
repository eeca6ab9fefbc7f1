"""Image sources behind a registry.

A source turns a dataset's published layout into an *index* (one row per image: ``id``,
``label``, optionally ``path`` (relative to the source's image folder), ``group`` (e.g. a lesion:
grouped splits keep it in one split) and ``fold`` (a published split, for the ``predefined``
protocol)) plus class names, without decoding any image, and
can decode images for the image cache. Splitting only needs the index, so a split can be built
and inspected before a single image is read.

Adding a source: one module here that defines a ``Source`` subclass decorated with
``@register_source("name")``, plus its test.
"""
from __future__ import annotations

import abc
import importlib
import logging
import pkgutil
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

log = logging.getLogger("lmdlt.sources")

_NUMERIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


def normalise_key(value) -> str:
    """A group id or class name as the split compares it: text, stripped, and numeric-looking
    text (digits with an optional sign and decimal point, no exponent) written one way, so that
    ``4``, ``4.0``, ``004`` and ``+4`` are one key ``'4'`` and ``0.50`` is ``'0.5'`` (spreadsheets
    and pandas write one id in several ways). Anything else is kept as written."""
    text = str(value).strip()
    if not _NUMERIC.fullmatch(text):
        return text
    d = Decimal(text)
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def normalise_keys(values, what: str, where: str) -> list[str]:
    """``normalise_key`` of every value; spellings merged into one key are logged (a warning
    naming them), never silent."""
    keys = [normalise_key(v) for v in values]
    spellings: dict[str, set[str]] = {}
    for v, k in zip(values, keys):
        spellings.setdefault(k, set()).add(str(v).strip())
    merged = {k: sorted(s) for k, s in spellings.items() if len(s) > 1}
    if merged:
        shown = "; ".join(f"{what} {k!r} written {', '.join(map(repr, s))}"
                          for k, s in list(merged.items())[:5])
        log.warning("%s: %d %s id(s) written in several ways are compared as one (numeric-looking "
                    "ids are normalised): %s%s", where, len(merged), what, shown,
                    "; ..." if len(merged) > 5 else "")
    return keys


@dataclass
class SourceIndex:
    """What a source knows about its images before decoding them."""

    table: pd.DataFrame  # columns: id (str, unique), label (int 0..K-1); optional path, group, fold
    class_names: list[str]
    #: image files listed by the data but unreadable (a dangling link, no read permission), left
    #: out of the table: (path, why); the image cache's and the split's logs name them
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = {"id", "label"} - set(self.table.columns)
        if missing:
            raise ValueError(f"source index lacks columns {sorted(missing)}")
        if "group" in self.table.columns:  # what the split and its leak report compare
            self.table["group"] = normalise_keys(self.table["group"].tolist(), "group",
                                                 "source index")
        dup = self.table["id"][self.table["id"].duplicated()]
        if len(dup):
            raise ValueError(f"source index has duplicate image ids, e.g. {dup.iloc[0]!r}")
        labels = self.table["label"].to_numpy()
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(
                f"source index has labels outside 0..{len(self.class_names) - 1}")


class Source(abc.ABC):
    """Base class: subclasses implement ``index`` and ``images``."""

    name: str = ""
    #: options accepted under ``dataset.options`` with their defaults
    options: dict[str, Any] = {}
    #: False for embedded sources; the others need ``dataset.root`` (checked with the config)
    needs_root: bool = True

    def __init__(self, root: str | None = None, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(
                f"dataset.options: unknown option(s) {sorted(unknown)} for source "
                f"{self.name!r} (known: {sorted(self.options) or 'none'})")
        self.root = root
        self.opts = {**self.options, **options}

    @abc.abstractmethod
    def index(self) -> SourceIndex:
        """The image index, read from labels/metadata only."""

    @abc.abstractmethod
    def images(self, table: pd.DataFrame, size: int | None) -> np.ndarray:
        """Decode the images of ``table`` (in its row order) as uint8 (N, H, W, C)."""

    def image_files(self, table: pd.DataFrame) -> list[Path] | None:
        """The file each row of ``table`` is decoded from (None: the images are not files of
        their own). The data fingerprint stats or hashes them (lmdlt.data.fingerprint)."""
        return None

    def data_files(self) -> list[Path]:
        """Files that hold the pixels of many images (a MedMNIST .npz, CIFAR pickles), for the
        data fingerprint; none for sources with one file per image or embedded data."""
        return []


_REGISTRY: dict[str, type[Source]] = {}


def register_source(name: str) -> Callable[[type[Source]], type[Source]]:
    def deco(cls: type[Source]) -> type[Source]:
        if name in _REGISTRY:
            raise ValueError(f"source {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _import_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def available_sources() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def get_source(name: str, root: str | None = None, options: dict | None = None) -> Source:
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(
            f"dataset.source: unknown source {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name](root=root, **(options or {}))


def source_from_config(dataset_cfg: dict) -> Source:
    return get_source(dataset_cfg["source"], dataset_cfg.get("root"), dataset_cfg.get("options"))
