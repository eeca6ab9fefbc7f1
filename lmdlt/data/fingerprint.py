"""The data fingerprint: the key the image cache and the split have besides their settings.

A source's images can change while its config does not (images deleted, added or re-labelled,
a class folder renamed, a CSV edited). The fingerprint is a SHA-256 over the source's *index*,
in index order (the split draws from that order), and the files the images are decoded from:

* ``stat`` (the default, ``dataset.fingerprint: stat``): per image its id, class name, group,
  fold, and the size and modification time (ns) of its file; no byte is read, one ``stat()`` per
  image.
* ``content`` (``dataset.fingerprint: content``): per image the SHA-256 of the file's bytes
  instead of its size and time: a copy of the data that does not keep file times (a copy to a
  node's scratch disk, a fresh download) keeps its fingerprint, at the price of reading every
  byte each time the fingerprint is taken.

Sources whose pixels sit in a few shared files (a MedMNIST ``.npz``, CIFAR pickles) add those
files; the embedded digits source has the index only. A file that is missing counts as missing
(the image cache then fails naming it). The class names list is part of it, so renaming a class
changes it even where the ids would not.

Where it is used: the workflow takes it when it builds the job graph and keeps it in a stamp
beside the image cache and every split (``.<output>.data.json``, :mod:`lmdlt.stamps`), so a
change of the data re-runs the image cache, the split and everything below them, in a fresh
clone too; the cache and split jobs record the fingerprint of the data they read in their
provenance (``config.data_fingerprint``), and every reader of a split's images
(``lmdlt.data.image_cache.check_cache_matches``) refuses a cache and a split built from
different data, or from data that has changed since (docs/reliability.md).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .sources import Source, SourceIndex, source_from_config

MODES = ("stat", "content")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFingerprint:
    mode: str
    sha256: str
    images: int

    def record(self) -> dict:
        """What the cache and the split record in their provenance and the stamps hold."""
        return {"mode": self.mode, "sha256": self.sha256, "images": self.images}

    def stamp_text(self) -> str:
        return json.dumps(self.record(), sort_keys=True)


def mode_of(dataset_cfg: dict) -> str:
    mode = dataset_cfg.get("fingerprint") or "stat"
    if mode not in MODES:
        raise ValueError(f"dataset.fingerprint: unknown mode {mode!r} (known: {', '.join(MODES)})")
    return mode


def _file_key(path: Path | None, mode: str):
    """[size, mtime_ns] (stat) or the SHA-256 of the bytes (content); None when missing."""
    if path is None:
        return None
    try:
        if mode == "stat":
            st = os.stat(path)
            return [st.st_size, st.st_mtime_ns]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()
    except FileNotFoundError:
        return None


def compute_fingerprint(source: Source, mode: str = "stat",
                        index: SourceIndex | None = None) -> DataFingerprint:
    """The fingerprint of ``source`` (its ``index`` when already read)."""
    if mode not in MODES:
        raise ValueError(f"dataset.fingerprint: unknown mode {mode!r} (known: {', '.join(MODES)})")
    index = index if index is not None else source.index()
    table = index.table
    files = source.image_files(table)
    h = hashlib.sha256()
    h.update(json.dumps({"mode": mode, "source": source.name,
                         "class_names": list(index.class_names)}).encode())
    names = index.class_names
    cols = [table[c].tolist() if c in table.columns else [None] * len(table)
            for c in ("id", "label", "group", "fold")]
    for i, (image_id, label, group, fold) in enumerate(zip(*cols)):
        key = _file_key(files[i], mode) if files is not None else None
        row = [image_id, names[int(label)], group, fold, key]
        h.update(b"\n" + json.dumps(row, default=str).encode())
    for p in source.data_files():
        h.update(b"\n" + json.dumps([os.path.basename(p), _file_key(p, mode)]).encode())
    return DataFingerprint(mode, h.hexdigest(), len(table))


def dataset_fingerprint(dataset_cfg: dict, index: SourceIndex | None = None) -> DataFingerprint:
    """The fingerprint of a config's dataset section (source, root, options, fingerprint mode)."""
    return compute_fingerprint(source_from_config(dataset_cfg), mode_of(dataset_cfg), index)


def recorded(provenance: dict) -> dict | None:
    """The fingerprint an artefact's provenance records (None: made without one)."""
    return ((provenance or {}).get("config") or {}).get("data_fingerprint")


def recorded_in_file(path: str | os.PathLike) -> dict | None:
    """The fingerprint recorded by an image cache (HDF5) or a split manifest (Parquet), read
    from its metadata only; None when it records none or cannot be read."""
    from ..io import h5_read_provenance

    path = str(path)
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            raw = (pq.read_schema(path).metadata or {}).get(b"lmdlt")
            return recorded(json.loads(raw)["provenance"]) if raw else None
        import h5py

        with h5py.File(path, "r") as f:
            return recorded(h5_read_provenance(f))
    except Exception:  # noqa: BLE001 - unreadable: treated as recording nothing
        return None
