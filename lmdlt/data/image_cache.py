"""The decoded-image cache: every image of a source decoded and resized once.

One HDF5 file per (source, image size) with ``images`` (N, H, W, C) uint8, chunked per block
of images so training can read any subset without decoding, plus ``ids``. Training then never
touches a JPEG.
"""
from __future__ import annotations

import logging
import os

import h5py
import numpy as np

from ..errors import NotFoundError
from ..io import atomic_path, h5_read_provenance, h5_write_provenance
from ..progress import bar
from .sources import Source
from .splits import read_manifest

BLOCK = 512  # images decoded per batch and per HDF5 chunk (bounded memory for large sources)
log = logging.getLogger("lmdlt.image_cache")


def cache_dir_name(dataset: dict) -> str:
    """``<source>-<hash>``: the cache folder of a dataset section, keyed by what identifies the
    images (source, root, options) and not by the experiment, so experiments on the same images
    (ISIC-2019-LT at r = 100, 300, 500) share one decode per image size."""
    from ..io import sha256_json

    key = {"source": dataset["source"], "root": dataset.get("root"), "options": dataset.get("options") or {}}
    return f"{dataset['source']}-{sha256_json(key)[:10]}"


def write_image_cache(dataset: dict, size: int, out) -> int:
    """``lmdlt cache``: the image cache of a config's dataset section at ``size`` px, recording
    the source, root, options, size and the fingerprint of the data it decoded
    (lmdlt.data.fingerprint); unreadable files the index left out are named in the log.
    Returns the number of images."""
    from ..io import provenance
    from .fingerprint import compute_fingerprint, mode_of
    from .sources import source_from_config

    src = source_from_config(dataset)
    index = src.index()
    log_skipped(index, f"image cache {out}")
    fp = compute_fingerprint(src, mode_of(dataset), index)
    cfg = {"source": dataset["source"], "root": dataset.get("root"),
           "options": dataset.get("options") or {}, "image_size": size,
           "data_fingerprint": fp.record()}
    if index.skipped:
        cfg["skipped_files"] = [list(s) for s in index.skipped]
    n = build_image_cache(src, size, out, provenance("image_cache", cfg), index=index)
    log.info("cached %d images of %s at %s px in %s (data fingerprint %s: %s)", n, src.name, size,
             out, fp.mode, fp.sha256[:16])
    return n


def log_skipped(index, what: str) -> None:
    """Count and name the image files the index left out as unreadable."""
    if index.skipped:
        total = len(index.table) + len(index.skipped)
        log.warning("%s: %d of %d image files skipped, unreadable:\n%s", what, len(index.skipped),
                    total, "\n".join(f"  {p} ({why})" for p, why in index.skipped))


def build_image_cache(source: Source, size: int | None, path, prov: dict, index=None) -> int:
    """Decode every image of ``source`` (of ``index``, when already read) into ``path``;
    returns the number of images."""
    index = index if index is not None else source.index()
    table = index.table.reset_index(drop=True)
    n = len(table)
    # a bar on a terminal only (the CLI logs one line when the cache is written)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f, \
            bar(total=n, desc=f"decode {source.name}", unit="image") as shown:
        images = None
        for start in range(0, n, BLOCK):
            block = source.images(table.iloc[start:start + BLOCK], size)
            shown.update(len(block))
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
            raise NotFoundError(f"image id {e.args[0]!r} is not in the image cache {self.path}") from None
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


#: the keys of a cache's and a manifest's provenance that say which images they are about
SOURCE_KEYS = ("source", "root", "options")


def _normalised(key: str, value):
    if key == "root" and value not in (None, ""):
        return os.path.normpath(os.path.abspath(os.path.expanduser(str(value))))
    if key == "options":
        return value or {}
    return value


def check_cache_matches(cache: "ImageCache", manifest_path, manifest_meta: dict, ids=None,
                        image_size: int | None = None) -> None:
    """Provenance guard: the image cache holds the images the split manifest was built from.

    Compares the source, data root and source options recorded by both (where both record
    them: hand-made artefacts may not), their data fingerprints with each other and with the
    data as it is now (``check_same_data``), ``image_size`` (when the caller knows the size it
    expects) with the cache's, and names the manifest's ``ids`` the cache lacks. Every message
    names both files. Feature extraction and every loader of a split's images call this.
    """
    recorded = cache.provenance.get("config", {}) or {}
    expected = (manifest_meta.get("provenance", {}).get("config", {}) or {}).get("dataset") or {}
    for key in SOURCE_KEYS:
        if key in recorded and key in expected:
            ours, theirs = _normalised(key, recorded[key]), _normalised(key, expected[key])
            if ours != theirs:
                raise ValueError(
                    f"image cache {cache.path} was built from dataset {key} {recorded[key]!r} "
                    f"(config {cache.provenance.get('config_hash', '?')[:12]}), but split "
                    f"{manifest_path} (hash {manifest_meta.get('content_hash', '?')[:12]}) was "
                    f"built from {expected[key]!r}; rebuild the cache or use the matching one")
    check_same_data(cache, manifest_path, manifest_meta)
    if image_size is not None and cache.shape[1:3] != (image_size, image_size):
        raise ValueError(f"image cache {cache.path} holds {cache.shape[1]}x{cache.shape[2]} px "
                         f"images, not the {image_size}x{image_size} px expected for split "
                         f"{manifest_path}")
    if ids is not None:
        missing = [i for i in ids if i not in cache._row]
        if missing:
            raise ValueError(f"{len(missing)} image(s) of split {manifest_path} are not in the image "
                             f"cache {cache.path}, e.g. {missing[:5]}; the cache was built from "
                             "another source or version of the data")


_REBUILD = ("re-run snakemake: it rebuilds the image cache, the split and everything made from "
            "them (the data fingerprint is a key of both)")


def check_same_data(cache: "ImageCache", manifest_path, manifest_meta: dict) -> None:
    """The image cache and the split were built from the same data, and the data has not
    changed since (lmdlt.data.fingerprint): the fingerprints both record must be equal, and
    equal to the fingerprint of the data now (taken again, in the recorded mode, when the data
    root is there; a cache read where the raw data is not is compared with the split only).
    Artefacts that record no fingerprint (made by hand, or before fingerprints were recorded)
    are not compared. Every message names the files and the fix."""
    from .fingerprint import dataset_fingerprint, recorded

    ours = recorded(cache.provenance)
    theirs = recorded(manifest_meta.get("provenance", {}))
    if ours and theirs and ours["sha256"] != theirs["sha256"]:
        raise ValueError(
            f"image cache {cache.path} was built from other data (fingerprint "
            f"{ours['sha256'][:12]}, {ours['images']} images) than split {manifest_path} "
            f"(fingerprint {theirs['sha256'][:12]}, {theirs['images']} images): the data changed "
            f"between them; {_REBUILD}")
    if ours:
        what, rec, ds = f"image cache {cache.path}", ours, cache.provenance.get("config") or {}
    elif theirs:
        what, rec = f"split {manifest_path}", theirs
        ds = (manifest_meta.get("provenance", {}).get("config") or {}).get("dataset") or {}
    else:
        return
    if "source" not in ds:
        return
    section = {**{k: ds.get(k) for k in SOURCE_KEYS}, "fingerprint": rec["mode"]}
    try:
        now = dataset_fingerprint(section)
    except FileNotFoundError as e:  # the raw data is not here (a cache copied to a GPU node)
        log.info("data fingerprint not compared with the data: %s", e)
        return
    if now.sha256 != rec["sha256"]:
        raise ValueError(
            f"{what} was built from data that has changed since (fingerprint {rec['sha256'][:12]}, "
            f"{rec['images']} images; the data under {ds.get('root') or ds['source']!r} now: "
            f"{now.sha256[:12]}, {now.images} images); {_REBUILD}")


def check_checkpoint_inputs(checkpoint_path, checkpoint_meta: dict, manifest_path,
                            manifest_meta: dict, cache: "ImageCache", ids=None) -> None:
    """Provenance guard of a consumer of a stage-1 checkpoint (feature extraction, encoder
    fine-tuning): the checkpoint was trained on this split and on an image cache with this
    cache's config (same source and image size), and the cache matches the manifest (and
    holds ``ids``, the manifest's image ids, when given)."""
    parents = checkpoint_meta.get("provenance", {}).get("parents", {})
    if parents.get("split") != manifest_meta["content_hash"]:
        raise ValueError(f"{checkpoint_path} was trained on split {parents.get('split')}, not on "
                         f"{manifest_path} ({manifest_meta['content_hash']})")
    images_hash = cache.provenance.get("config_hash")
    if parents.get("images") is not None and parents["images"] != images_hash:
        raise ValueError(f"{checkpoint_path} was trained on the image cache {parents['images']}, "
                         f"not on {cache.path} ({images_hash}): another source or image size")
    check_cache_matches(cache, manifest_path, manifest_meta, ids)


def load_split_images(manifest_path, cache_path, image_size: int | None = None) -> dict:
    """Images and labels per split, plus the manifest metadata. The cache must match the
    manifest (``check_cache_matches``: same source, size when given, every id present)."""
    table, meta = read_manifest(manifest_path)
    cache = ImageCache(cache_path)
    check_cache_matches(cache, manifest_path, meta, table["id"].tolist(), image_size)
    out = {"meta": meta}
    for split in ("train", "val", "test"):
        rows = table[table["split"] == split]
        out[split] = (cache.load(rows["id"].tolist()), rows["label"].to_numpy(np.int64),
                      rows["id"].tolist())
    return out
