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
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd


@dataclass
class SourceIndex:
    """What a source knows about its images before decoding them."""

    table: pd.DataFrame  # columns: id (str, unique), label (int 0..K-1); optional path, group, fold
    class_names: list[str]

    def __post_init__(self) -> None:
        missing = {"id", "label"} - set(self.table.columns)
        if missing:
            raise ValueError(f"source index lacks columns {sorted(missing)}")
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
