"""Feature extraction: the frozen encoder's features, logits and labels per split, to HDF5.

Written once per stage-1 checkpoint and read by every stage-2 variant. Layout::

    /<split>/features  float32 (N, C)
    /<split>/logits    float32 (N, K)   the stage-1 classifier's outputs
    /<split>/labels    int64 (N,)
    /<split>/ids       str (N,)
    /classifier/weight, /classifier/bias   the stage-1 linear classifier
    attrs: provenance (JSON), checkpoint_sha256, split_hash, class_names, precision
"""
from __future__ import annotations

import logging
import time

import h5py
import numpy as np
import torch

from .data.image_cache import ImageCache
from .data.splits import SPLITS, read_manifest
from .io import atomic_path, h5_read_provenance, h5_write_provenance, provenance, sha256_file
from .runtime import autocast, resolve_precision, select_device, setup_torch, use_channels_last
from .models.checkpoint import load_checkpoint

log = logging.getLogger("lmdlt.features")


@torch.inference_mode()
def encode(net, images: np.ndarray, device, batch_size: int = 512, precision: str = "fp32",
           channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features and logits (float32) of uint8 NHWC ``images``, ``batch_size`` at a time.

    ``precision`` is a resolved one (``fp32`` or ``bf16``: autocast of the forward pass, outputs
    returned as float32); ``channels_last`` also puts the weights in channels-last memory
    format. Batches keep the cache's layout either way: NHWC images permuted to NCHW are
    channels-last in memory already (no copy; on the CPU this measured faster than contiguous
    NCHW, benchmarks/extraction.py).
    """
    net.eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2)
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            f = net.features(x)
            z = net.classifier(f)
        feats.append(f.float().cpu())
        logits.append(z.float().cpu())
    if not feats:
        return (np.zeros((0, net.feature_dim), np.float32),
                np.zeros((0, net.classifier.out_features), np.float32))
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def extract_features(checkpoint_path, manifest_path, cache_path, out_path,
                     threads: int | None = None, device: str = "auto", batch_size: int = 512,
                     precision: str = "auto", channels_last: str = "auto") -> None:
    """Write the features file of a checkpoint. ``precision`` (auto: bf16 on CUDA, fp32 on the
    CPU) and ``channels_last`` (auto: on CUDA) are resolved by :mod:`lmdlt.runtime` and recorded
    in the file's provenance."""
    setup_torch(0, threads)
    dev = select_device(device)
    prec = resolve_precision(dev, precision)
    cl = use_channels_last(dev, channels_last)
    net, meta = load_checkpoint(checkpoint_path, dev)
    ckpt_hash = sha256_file(checkpoint_path)
    table, man_meta = read_manifest(manifest_path)
    if meta["provenance"]["parents"].get("split") != man_meta["content_hash"]:
        raise ValueError(f"{checkpoint_path} was trained on split "
                         f"{meta['provenance']['parents'].get('split')}, not on {manifest_path} "
                         f"({man_meta['content_hash']})")
    cache = ImageCache(cache_path)
    log.info("device %s, precision %s, channels_last %s", dev, prec, cl)
    prov = provenance("features", {"batch_size": batch_size, "precision": prec, "channels_last": cl},
                      {"checkpoint": ckpt_hash, "split": man_meta["content_hash"]},
                      meta["provenance"]["seed"])
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        for split in SPLITS:
            rows = table[table["split"] == split]
            t0 = time.perf_counter()
            feats, logits = encode(net, cache.load(rows["id"].tolist()), dev, batch_size, prec, cl)
            g = f.create_group(split)
            g["features"] = feats
            g["logits"] = logits
            g["labels"] = rows["label"].to_numpy(np.int64)
            g.create_dataset("ids", data=np.array(rows["id"].tolist(), dtype=object),
                             dtype=h5py.string_dtype())
            log.info("%s: %d images -> features %s in %.2fs", split, len(rows), feats.shape,
                     time.perf_counter() - t0)
        f["classifier/weight"] = net.classifier.weight.detach().cpu().numpy()
        f["classifier/bias"] = net.classifier.bias.detach().cpu().numpy()
        f.attrs["checkpoint_sha256"] = ckpt_hash
        f.attrs["split_hash"] = man_meta["content_hash"]
        f.attrs["class_names"] = list(meta["class_names"])
        f.attrs["precision"] = prec
        h5_write_provenance(f, prov)


class FeatureSet:
    """Everything of a features (or predictions) HDF5 file, in memory."""

    def __init__(self, path) -> None:
        self.path = str(path)
        with h5py.File(path, "r") as f:
            self.provenance = h5_read_provenance(f)
            self.attrs = {k: f.attrs[k] for k in f.attrs if k != "provenance"}
            self.class_names = [str(c) for c in f.attrs["class_names"]]
            self.splits = {}
            for split in SPLITS:
                if split in f:
                    g = f[split]
                    self.splits[split] = {
                        k: (g[k].asstr()[:] if k == "ids" else g[k][:]) for k in g.keys()}
            self.classifier = ({k: f["classifier"][k][:] for k in f["classifier"]}
                               if "classifier" in f else None)

    def __getitem__(self, split: str) -> dict:
        if split not in self.splits:
            raise KeyError(f"{self.path} has no split {split!r}")
        return self.splits[split]
