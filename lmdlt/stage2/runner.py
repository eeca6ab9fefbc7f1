"""Runs one stage-2 variant on a features file and writes its predictions.

Output (HDF5): ``/<split>/logits``, ``labels``, ``ids`` for every split, the method's fitted
state under ``/state``, and the provenance naming the features file's hash.
"""
from __future__ import annotations

import logging

import h5py
import numpy as np

from ..features import FeatureSet
from ..io import atomic_path, h5_write_provenance, provenance, sha256_file
from ..runtime import setup_torch
from .base import get_method

log = logging.getLogger("lmdlt.stage2")


def run_stage2(features_path, cfg: dict, seed: int, out_path, threads: int | None = None) -> dict:
    gen = setup_torch(seed, threads)
    fs = FeatureSet(features_path)
    k = len(fs.class_names)
    method = get_method(cfg["method"])(cfg["params"], k)
    train, val = fs["train"], fs["val"]
    log.info("%s on %s: train %d features (per class %s), dim %d", cfg["method"], features_path,
             len(train["labels"]), np.bincount(train["labels"], minlength=k).tolist(),
             train["features"].shape[1])
    method.fit(train, val, fs.classifier, gen)  # the test split is never handed to fit
    summary = method.summary()
    if summary:
        log.info("fitted: %s", summary)
    prov = provenance("stage2", cfg, {"features": sha256_file(features_path),
                                      "checkpoint": fs.attrs["checkpoint_sha256"],
                                      "split": fs.attrs["split_hash"]}, seed)
    prov["summary"] = summary
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        for split, d in fs.splits.items():
            g = f.create_group(split)
            g["logits"] = method.logits(d["features"]).astype(np.float32)
            g["labels"] = d["labels"]
            g.create_dataset("ids", data=np.array(list(d["ids"]), dtype=object),
                             dtype=h5py.string_dtype())
        for name, arr in method.state().items():
            f[f"state/{name}"] = arr
        f.attrs["class_names"] = fs.class_names
        f.attrs["checkpoint_sha256"] = fs.attrs["checkpoint_sha256"]
        f.attrs["split_hash"] = fs.attrs["split_hash"]
        h5_write_provenance(f, prov)
    return summary
