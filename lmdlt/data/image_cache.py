"""The decoded-image cache: every image of a source decoded and resized once.

One HDF5 file per (source, image size) with ``images`` (N, H, W, C) uint8, chunked per block
of images so training can read any subset without decoding, plus ``ids``. Training then never
touches a JPEG.
"""
from __future__ import annotations

import h5py
import numpy as np
from tqdm import tqdm

from ..io import atomic_path, h5_read_provenance, h5_write_provenance
from .sources import Source
from .splits import read_manifest

BLOCK = 512  # images decoded per batch and per HDF5 chunk (bounded memory for large sources)


def build_image_cache(source: Source, size: int | None, path, prov: dict) -> int:
    """Decode every image of ``source`` into ``path``; returns the number of images."""
    index = source.index()
    table = index.table.reset_index(drop=True)
    n = len(table)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        images = None
        for start in tqdm(range(0, n, BLOCK), desc=f"decode {source.name}", unit="block",
                          disable=None):
            block = source.images(table.iloc[start:start + BLOCK], size)
            if images is None:
                h, w, c = block.shape[1:]
                images = f.create_dataset("images", shape=(n, h, w, c), dtype=np.uint8,
                                          chunks=(min(BLOCK, n), h, w, c))
            images[start:start + len(block)] = block
        f.create_dataset("ids", data=np.array(table["id"].tolist(), dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("labels", data=table["label"].to_numpy(np.int64))
        f.attrs["class_names"] = list(index.class_names)
        h5_write_provenance(f, prov)
    return n


class ImageCache:
    """Read access to a cache file by image id."""

    def __init__(self, path) -> None:
        self.path = str(path)
        with h5py.File(self.path, "r") as f:
            self.provenance = h5_read_provenance(f)
            ids = f["ids"].asstr()[:]
            self.shape = f["images"].shape
        self._row = {i: r for r, i in enumerate(ids)}

    def load(self, ids) -> np.ndarray:
        """uint8 (len(ids), H, W, C) in the order of ``ids``."""
        try:
            rows = np.array([self._row[i] for i in ids], dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"image id {e.args[0]!r} is not in the image cache {self.path}") from None
        out = np.empty((len(rows),) + tuple(self.shape[1:]), dtype=np.uint8)
        with h5py.File(self.path, "r") as f:
            images = f["images"]
            # one contiguous read per block of BLOCK rows that holds wanted rows (h5py's point
            # selection is slow for thousands of rows); memory stays bounded by one block
            block_of = rows // BLOCK
            for b in np.unique(block_of):
                sel = np.flatnonzero(block_of == b)
                start = int(b) * BLOCK
                chunk = images[start:min(start + BLOCK, self.shape[0])]
                out[sel] = chunk[rows[sel] - start]
        return out


def load_split_images(manifest_path, cache_path) -> dict:
    """Images and labels per split, plus the manifest metadata."""
    table, meta = read_manifest(manifest_path)
    cache = ImageCache(cache_path)
    out = {"meta": meta}
    for split in ("train", "val", "test"):
        rows = table[table["split"] == split]
        out[split] = (cache.load(rows["id"].tolist()), rows["label"].to_numpy(np.int64),
                      rows["id"].tolist())
    return out
