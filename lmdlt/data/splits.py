"""Split protocols and split manifests.

A manifest is a Parquet table with one row per image used (``id``, ``label``, ``split`` and
whatever else the source index had: ``path``, ``group``), a content hash over (id, label,
split), and the provenance record in the Parquet metadata. Splits are reproducible from the
source index, the split config and the seed alone.

Protocols are registered by name; adding one is one function here plus its test:

* ``lmd`` — LMD reference code: Pareto-subsample every class, then per-class val/test fractions.
* ``cui`` — Cui / Ju: balanced val and test per class, Pareto-profiled training set.
* ``random`` — per-class (stratified) random val/test fractions of all images (Hyper-Kvasir 8:1:1).
* ``predefined`` — the split read from the source's ``fold`` column (published split files,
  official folds), mapped onto train/val/test by ``split.folds``.

``split.grouped: true`` (``lmd`` and ``random``) keeps every group of the index's ``group``
column (HAM10000 ``lesion_id``) in one split: groups, not images, are allocated, so no lesion
crosses train/val/test. ``split.grouped: false`` accepts a naive split: the groups stay in the
manifest and the overlap is reported (``group_overlap``), so the leak can be measured. Left out,
a split whose groups cross splits is an error.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_path, sha256_json
from .longtail import cui_train_counts, lmd_keep_counts
from .sources import SourceIndex, normalise_key

SPLITS = ("train", "val", "test")
log = logging.getLogger("lmdlt.splits")
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


def _per_class_fractions(n: int, val_fraction: float, test_fraction: float,
                         class_name: str = "?") -> tuple[int, int]:
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    if n >= 3:  # every split sees every class when the class has images enough
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    if n_val + n_test >= n or (n < 3 and val_fraction > 0 and test_fraction > 0):
        raise ValueError(f"class {class_name!r} has {n} images: too few to split "
                         f"{val_fraction}/{test_fraction} for val/test and keep a training image")
    return n_val, n_test


def group_keys(table: pd.DataFrame) -> pd.Series:
    """The group of every row as the split compares it (``sources.normalise_key``: ``4``,
    ``4.0`` and ``004`` are one group). The split, its leak checks and its leak report all use
    this, so the report counts exactly what the split kept together."""
    return table["group"].map(normalise_key)


def _groups_of(index: SourceIndex, cfg: dict) -> np.ndarray | None:
    """The group key of every row when the split is grouped, else None."""
    if not cfg.get("grouped", False):
        return None
    if "group" not in index.table.columns:
        raise ValueError("split.grouped: the source index has no 'group' column "
                         "(sources with groups: ham10000)")
    return group_keys(index.table).to_numpy()


def _grouped_order(rows: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``rows`` reordered group by group, groups in random order (rows of a group together)."""
    uniq = np.unique(groups[rows])
    rank = dict(zip(rng.permutation(uniq).tolist(), range(len(uniq))))
    key = np.array([rank[g] for g in groups[rows]])
    return rows[np.argsort(key, kind="stable")]


def _assign(split: pd.Series, rows: np.ndarray, n_val: int, n_test: int,
            groups: np.ndarray | None) -> None:
    """First ``n_test`` rows to test, next ``n_val`` to val, the rest to train. With groups,
    ``rows`` must be in grouped order; a group goes whole to the split its first row falls in
    (test and val may overshoot their target by less than one group)."""
    if groups is None:
        split.iloc[rows[:n_test]] = "test"
        split.iloc[rows[n_test:n_test + n_val]] = "val"
        split.iloc[rows[n_test + n_val:]] = "train"
        return
    counts = {"test": 0, "val": 0}
    target = {"test": n_test, "val": n_val}
    g_rows = pd.Series(rows).groupby(groups[rows], sort=False)
    for _, members in sorted(g_rows, key=lambda kv: kv[1].index[0]):
        dest = next((s for s in ("test", "val") if counts[s] < target[s]), "train")
        if dest != "train":
            counts[dest] += len(members)
        split.iloc[members.to_numpy()] = dest


def _primary_label(labels: np.ndarray, groups: np.ndarray, rows: np.ndarray) -> dict:
    """The most frequent label of each group among ``rows`` (ties: the smaller label)."""
    df = pd.DataFrame({"g": groups[rows], "y": labels[rows]})
    counts = df.groupby(["g", "y"]).size().reset_index(name="n")
    counts = counts.sort_values(["g", "n", "y"], ascending=[True, False, True])
    return dict(zip(counts.drop_duplicates("g")["g"], counts.drop_duplicates("g")["y"]))


def _split_by_class(index: SourceIndex, cfg: dict, rng: np.random.Generator,
                    kept: dict[int, np.ndarray], groups: np.ndarray | None) -> pd.Series:
    """Per class, val/test fractions of the kept rows (whole groups when grouped)."""
    labels = index.table["label"].to_numpy()
    split = pd.Series("", index=index.table.index, dtype=object)
    if groups is not None:  # allocate each group with the class most of its kept images have
        all_rows = np.concatenate([kept[c] for c in sorted(kept)])
        primary = _primary_label(labels, groups, all_rows)
        per_class = {c: all_rows[np.array([primary[g] == c for g in groups[all_rows]], bool)]
                     for c in sorted(kept)}
    else:
        per_class = kept
    for c, rows in per_class.items():
        rows = (_grouped_order(rows, groups, rng) if groups is not None else rng.permutation(rows))
        n_val, n_test = _per_class_fractions(len(rows), cfg["val_fraction"], cfg["test_fraction"],
                                             index.class_names[c])
        _assign(split, rows, n_val, n_test, groups)
    return split


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
    _log_ratio(cfg["imbalance_ratio"], keep, "kept per class")
    groups = _groups_of(index, cfg)
    kept: dict[int, np.ndarray] = {}
    for c, n_keep in zip(order, keep):
        rows = np.flatnonzero(labels == c)
        # grouped: whole groups are kept (in random group order), the last one possibly in part;
        # images left out are used nowhere, so a partial group cannot leak
        rows = _grouped_order(rows, groups, rng) if groups is not None else rng.permutation(rows)
        kept[c] = rows[:n_keep]
    return _split_by_class(index, cfg, rng, kept, groups)


@register_protocol("random")
def _random(index: SourceIndex, cfg: dict, rng: np.random.Generator) -> pd.Series:
    """All images, per class (stratified) random val/test fractions (Hyper-Kvasir: 8:1:1)."""
    labels = index.table["label"].to_numpy()
    kept = {c: np.flatnonzero(labels == c) for c in range(len(index.class_names))}
    empty = [index.class_names[c] for c, r in kept.items() if len(r) == 0]
    if empty:
        raise ValueError(f"classes without images: {empty}")
    return _split_by_class(index, cfg, rng, kept, _groups_of(index, cfg))


@register_protocol("predefined")
def _predefined(index: SourceIndex, cfg: dict, rng: np.random.Generator) -> pd.Series:
    """The split given by the source (its ``fold`` column), mapped by ``split.folds``."""
    if "fold" not in index.table.columns:
        raise ValueError("split.protocol predefined: the source index has no 'fold' column; set the "
                         "source's split files / fold file (e.g. dataset.options.folds)")
    folds = cfg.get("folds") or {s: [s] for s in SPLITS}
    unknown = set(folds) - set(SPLITS)
    if unknown:
        raise ValueError(f"split.folds: unknown split(s) {sorted(unknown)} (known: {', '.join(SPLITS)})")
    fold = index.table["fold"].astype(str).to_numpy()
    present = set(fold)
    split = pd.Series("", index=index.table.index, dtype=object)
    seen: dict[str, str] = {}
    for s_name, values in folds.items():
        for v in [str(v) for v in values]:
            if v in seen:
                raise ValueError(f"split.folds: fold {v!r} is mapped to both {seen[v]!r} and {s_name!r}")
            if v not in present:
                raise ValueError(f"split.folds.{s_name}: fold {v!r} is not in the source "
                                 f"(folds: {sorted(present)})")
            seen[v] = s_name
            split.iloc[np.flatnonzero(fold == v)] = s_name
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
    _log_ratio(cfg["imbalance_ratio"], wanted, f"training images per class (n_cap {n_cap})")
    for c, n in zip(order, wanted):
        if n > avail[c]:
            raise ValueError(
                f"class {index.class_names[c]!r} has {avail[c]} images left after val/test, the "
                f"cui profile with n_cap={n_cap} asks for {n}; lower split.n_cap")
        split.iloc[remaining[c][:n]] = "train"
    return split


def _log_ratio(asked: float, counts: list[int], what: str) -> None:
    """The imbalance the counts realise (rounding to whole images moves it off ``asked``): logged,
    and a warning when it is more than 10% off."""
    got = counts[0] / counts[-1]
    level = logging.WARNING if abs(got - asked) > 0.1 * asked else logging.INFO
    log.log(level, "imbalance_ratio %g asked, %.2f realised by the whole-image counts (%s: %s)",
            asked, got, what, counts)


def check_data(dataset_cfg: dict, split_cfg: dict, seeds: Iterable[int],
               index: SourceIndex | None = None) -> dict[int, pd.DataFrame]:
    """The data checks that need no image: read the source's index (labels and paths only) and
    build every seed's split in memory, so that an absent or too small class, an infeasible
    split and an imbalance ratio the data cannot give are errors *before* the image cache is
    built (the workflow calls this while the cache or a split is missing; docs/reliability.md).
    Returns the split table of every seed. ``index``: the source's index when already read."""
    from .sources import source_from_config

    if index is None:
        index = source_from_config(dataset_cfg).index()
    counts = np.bincount(index.table["label"].to_numpy(), minlength=len(index.class_names))
    empty = [index.class_names[c] for c in range(len(counts)) if counts[c] == 0]
    if empty:
        raise ValueError(f"classes without images: {empty} (images per class: "
                         f"{dict(zip(index.class_names, counts.tolist()))})")
    return {int(seed): build_split(index, split_cfg, int(seed)) for seed in seeds}


def write_split(dataset: dict, split_cfg: dict, seed: int, out) -> tuple[pd.DataFrame, list[str], str]:
    """``lmdlt split``: build a seed's split from a config's dataset and split sections and write
    its manifest, recording the fingerprint of the data it was built from
    (lmdlt.data.fingerprint); unreadable files the index left out are named in the log.
    Returns the table, the class names and the content hash."""
    from ..io import provenance
    from .fingerprint import compute_fingerprint, mode_of
    from .image_cache import log_skipped
    from .sources import source_from_config

    src = source_from_config(dataset)
    index = src.index()
    log_skipped(index, f"split {out}")
    fp = compute_fingerprint(src, mode_of(dataset), index)
    table = build_split(index, split_cfg, seed)
    cfg = {"dataset": dataset, "split": split_cfg, "data_fingerprint": fp.record()}
    digest = write_manifest(out, table, index.class_names, provenance("split", cfg, seed=seed))
    return table, list(index.class_names), digest


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
    # grouped absent: a split that leaks groups is an error; grouped: false accepts (and reports) it
    check_disjoint(table, groups=cfg.get("grouped") is not False)
    for s in SPLITS:
        missing = set(range(len(index.class_names))) - set(table.loc[table["split"] == s, "label"])
        if missing:
            names = [index.class_names[c] for c in sorted(missing)]
            raise ValueError(f"split {s!r} has no image of classes {names}")
    order = {s: i for i, s in enumerate(SPLITS)}
    table["_o"] = table["split"].map(order)
    table = table.sort_values(["_o", "label", "id"], kind="stable").drop(columns="_o")
    return table.reset_index(drop=True)


def check_disjoint(table: pd.DataFrame, groups: bool = True) -> None:
    """No image id, and (``groups`` and a group column exists) no group, in two splits."""
    dup = table["id"][table["id"].duplicated()]
    if len(dup):
        raise ValueError(f"split leak: image id {dup.iloc[0]!r} appears more than once")
    if groups and "group" in table.columns:
        per_group = table["split"].groupby(group_keys(table)).nunique()
        bad = per_group[per_group > 1]
        if len(bad):
            raise ValueError(f"split leak: group {bad.index[0]!r} crosses splits (set split.grouped: "
                             "true to split by group, or false to accept a naive split)")


def group_overlap(table: pd.DataFrame) -> dict:
    """How much a split leaks through its groups (e.g. lesions): groups present in more than one
    split, per pair of splits, and test/val images whose group also has training images."""
    if "group" not in table.columns:
        return {}
    group = group_keys(table)
    sets = {s: set(group[table["split"] == s]) for s in SPLITS}
    train = sets["train"]
    out = {
        "groups": int(group.nunique()),
        "groups_in_several_splits": int((table["split"].groupby(group).nunique() > 1).sum()),
        "train_val_groups": len(train & sets["val"]),
        "train_test_groups": len(train & sets["test"]),
        "val_test_groups": len(sets["val"] & sets["test"]),
    }
    for s in ("val", "test"):
        rows = table["split"] == s
        out[f"{s}_images_with_train_group"] = int(group[rows].isin(train).sum())
        out[f"{s}_images"] = int(rows.sum())
    return out


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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split manifest {path} not found")
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


def summary_text(table: pd.DataFrame, class_names: list[str], digest: str | None = None) -> str:
    """Per-class counts per split, totals, the content hash and (when the manifest has groups)
    the group overlap between splits: what ``lmdlt show-split`` / ``split-summary`` print."""
    counts = split_counts(table, class_names)
    lines = [f"content hash {digest or content_hash(table)}", counts.to_string(),
             "total: " + ", ".join(f"{k} {int(v)}" for k, v in counts.sum().items())]
    overlap = group_overlap(table)
    if overlap:
        lines.append("groups: " + ", ".join(f"{k} {v}" for k, v in overlap.items()))
    return "\n".join(lines)
