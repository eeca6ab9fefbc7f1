"""Split protocols and split manifests.

A manifest is a Parquet table with one row per image used (``id``, ``label``, ``split`` and
whatever else the source index had: ``path``, ``group``), a content hash over (id, label,
split), and the provenance record in the Parquet metadata. Splits are reproducible from the
source index, the split config and the seed alone.

Protocols are registered by name; adding one is one function here plus its test.
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_path, sha256_json
from .longtail import cui_train_counts, lmd_keep_counts
from .sources import SourceIndex

SPLITS = ("train", "val", "test")
ProtocolFn = Callable[[SourceIndex, dict, np.random.Generator], pd.Series]
_PROTOCOLS: dict[str, ProtocolFn] = {}


def register_protocol(name: str) -> Callable[[ProtocolFn], ProtocolFn]:
    def deco(fn: ProtocolFn) -> ProtocolFn:
        _PROTOCOLS[name] = fn
        return fn

    return deco


def available_protocols() -> list[str]:
    return sorted(_PROTOCOLS)


def class_rank(labels: np.ndarray, num_classes: int, order: str) -> list[int]:
    """Class ids from head to tail: by count descending (ties by label), or by label."""
    counts = np.bincount(labels, minlength=num_classes)
    if order == "label":
        return list(range(num_classes))
    if order == "count":
        return sorted(range(num_classes), key=lambda c: (-counts[c], c))
    raise ValueError(f"split.class_order: unknown order {order!r} (known: count, label)")


def _per_class_fractions(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    if n >= 3:  # every split sees every class when the class has images enough
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    if n_val + n_test >= n:
        raise ValueError(f"a class with {n} images cannot be split {val_fraction}/{test_fraction} "
                         "for val/test and keep a training image")
    return n_val, n_test


@register_protocol("lmd")
def _lmd(index: SourceIndex, cfg: dict, rng: np.random.Generator) -> pd.Series:
    """LMD reference code: Pareto subsample of every class, then per class train/val/test."""
    labels = index.table["label"].to_numpy()
    k = len(index.class_names)
    counts = np.bincount(labels, minlength=k)
    absent = [index.class_names[c] for c in range(k) if counts[c] == 0]
    if absent:
        raise ValueError(f"classes without images: {absent}")
    order = class_rank(labels, k, "count")  # the LMD scheme is defined on counts, descending
    keep = lmd_keep_counts([counts[c] for c in order], cfg["imbalance_ratio"])
    split = pd.Series("", index=index.table.index, dtype=object)
    for c, n_keep in zip(order, keep):
        rows = np.flatnonzero(labels == c)
        rows = rng.permutation(rows)[:n_keep]
        n_val, n_test = _per_class_fractions(n_keep, cfg["val_fraction"], cfg["test_fraction"])
        split.iloc[rows[:n_test]] = "test"
        split.iloc[rows[n_test:n_test + n_val]] = "val"
        split.iloc[rows[n_test + n_val:]] = "train"
    return split


@register_protocol("cui")
def _cui(index: SourceIndex, cfg: dict, rng: np.random.Generator) -> pd.Series:
    """Cui / Ju: balanced val and test drawn first, then a Pareto-profiled training set."""
    labels = index.table["label"].to_numpy()
    k = len(index.class_names)
    n_val, n_test = cfg["val_per_class"], cfg["test_per_class"]
    split = pd.Series("", index=index.table.index, dtype=object)
    remaining: dict[int, np.ndarray] = {}
    for c in range(k):
        rows = rng.permutation(np.flatnonzero(labels == c))
        if len(rows) < n_val + n_test + 1:
            raise ValueError(
                f"class {index.class_names[c]!r} has {len(rows)} images; the cui protocol needs "
                f"val_per_class + test_per_class + 1 = {n_val + n_test + 1}")
        split.iloc[rows[:n_test]] = "test"
        split.iloc[rows[n_test:n_test + n_val]] = "val"
        remaining[c] = rows[n_test + n_val:]
    avail = np.array([len(remaining[c]) for c in range(k)])
    order = class_rank(labels, k, cfg["class_order"])
    n_cap = cfg.get("n_cap") or int(avail.min())
    wanted = cui_train_counts(n_cap, cfg["imbalance_ratio"], k)
    for c, n in zip(order, wanted):
        if n > avail[c]:
            raise ValueError(
                f"class {index.class_names[c]!r} has {avail[c]} images left after val/test, the "
                f"cui profile with n_cap={n_cap} asks for {n}; lower split.n_cap")
        split.iloc[remaining[c][:n]] = "train"
    return split


def build_split(index: SourceIndex, cfg: dict, seed: int) -> pd.DataFrame:
    """Apply the configured protocol; return the manifest table (rows not used are dropped)."""
    proto = cfg["protocol"]
    if proto not in _PROTOCOLS:
        raise ValueError(
            f"split.protocol: unknown protocol {proto!r} (known: {', '.join(available_protocols())})")
    rng = np.random.default_rng(seed)
    split = _PROTOCOLS[proto](index, cfg, rng)
    table = index.table.assign(split=split.to_numpy())
    table = table[table["split"] != ""].copy()
    check_disjoint(table)
    for s in SPLITS:
        missing = set(range(len(index.class_names))) - set(table.loc[table["split"] == s, "label"])
        if missing:
            names = [index.class_names[c] for c in sorted(missing)]
            raise ValueError(f"split {s!r} has no image of classes {names}")
    order = {s: i for i, s in enumerate(SPLITS)}
    table["_o"] = table["split"].map(order)
    table = table.sort_values(["_o", "label", "id"], kind="stable").drop(columns="_o")
    return table.reset_index(drop=True)


def check_disjoint(table: pd.DataFrame) -> None:
    """No image id, and no group when a group column exists, may appear in two splits."""
    dup = table["id"][table["id"].duplicated()]
    if len(dup):
        raise ValueError(f"split leak: image id {dup.iloc[0]!r} appears more than once")
    if "group" in table.columns:
        per_group = table.groupby("group")["split"].nunique()
        bad = per_group[per_group > 1]
        if len(bad):
            raise ValueError(f"split leak: group {bad.index[0]!r} crosses splits")


def content_hash(table: pd.DataFrame) -> str:
    rows = table[["id", "label", "split"]].sort_values("id")
    return sha256_json({"id": rows["id"].tolist(), "label": rows["label"].astype(int).tolist(),
                        "split": rows["split"].tolist()})


def write_manifest(path, table: pd.DataFrame, class_names: list[str], prov: dict) -> str:
    digest = content_hash(table)
    meta = {"content_hash": digest, "class_names": class_names, "provenance": prov}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                           b"lmdlt": json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
    return digest


def read_manifest(path) -> tuple[pd.DataFrame, dict]:
    """The manifest table and its metadata (content_hash, class_names, provenance)."""
    arrow = pq.read_table(path)
    raw = (arrow.schema.metadata or {}).get(b"lmdlt")
    if raw is None:
        raise ValueError(f"{path}: not an lmdlt split manifest (no 'lmdlt' metadata)")
    meta = json.loads(raw)
    table = arrow.to_pandas()
    if content_hash(table) != meta["content_hash"]:
        raise ValueError(f"{path}: content hash mismatch; the manifest was modified after writing")
    return table, meta


def split_counts(table: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Per-class image counts per split (rows: classes, columns: train/val/test/total)."""
    counts = (table.groupby(["label", "split"]).size().unstack(fill_value=0)
              .reindex(index=range(len(class_names)), columns=list(SPLITS), fill_value=0))
    counts.index = pd.Index(class_names, name="class")
    counts["total"] = counts.sum(axis=1)
    return counts
