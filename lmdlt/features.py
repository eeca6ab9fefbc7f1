"""Feature extraction: the frozen encoder's features, logits and labels per split, to HDF5.

Written once per stage-1 checkpoint and read by every stage-2 variant. Layout::

    /<split>/features  float32 (N, C)
    /<split>/logits    float32 (N, K)   the stage-1 classifier's outputs
    /<split>/labels    int64 (N,)
    /<split>/ids       str (N,)
    /classifier/weight, /classifier/bias   the stage-1 linear classifier
    attrs: provenance (JSON), checkpoint_sha256, split_hash, class_names, precision

With ``train_views`` N > 0 (config ``features.train_views``) the file also holds N augmented
passes over the training split, in the order of ``/train/ids``, written once::

    /train_views/features  float32 (N, n_train, C)   view v of training image i: [v, i]
    /train_views/logits    float32 (N, n_train, K)   the stage-1 classifier's outputs of it
    attrs: train_views (N, also 0), and the provenance's config records train_views and, for
           N > 0, the augmentation (view_transform) and the seed of the views

The augmentation is the stage-1 variant's own training augmentation (its
``train_transform(augment, size)``, rebuilt from the checkpoint's recorded config); for a
method whose transform returns (strong, weak) views (RRL) the weak one, for one returning two
views of the same augmentation (SupCon) the first. The views are drawn with the torch
random stream seeded with the checkpoint's seed, in a forked random state (deterministic, and
the rest of the process is unaffected). With N = 0 the file is exactly the layout above
(no ``/train_views``): the linear stage-2 methods then see the un-augmented features.
"""
from __future__ import annotations

import logging
import time

import h5py
import numpy as np
import torch

from .data.image_cache import ImageCache, check_cache_matches
from .data.splits import SPLITS, read_manifest
from .io import atomic_path, check_config_hash, h5_read_provenance, h5_write_provenance, open_h5, provenance, sha256_file
from .runtime import autocast, resolve_precision, select_device, setup_torch, use_channels_last
from .models.checkpoint import load_checkpoint
from .progress import bar

log = logging.getLogger("lmdlt.features")


@torch.inference_mode()
def encode(net, images: np.ndarray, device, batch_size: int = 512, precision: str = "fp32",
           channels_last: bool = False, desc: str = "encode") -> tuple[np.ndarray, np.ndarray]:
    """Features and logits (float32) of uint8 NHWC ``images``, ``batch_size`` at a time.

    ``precision`` is a resolved one (``fp32`` or ``bf16``: autocast of the forward pass, outputs
    returned as float32); ``channels_last`` also puts the weights in channels-last memory
    format. Batches keep the cache's layout either way: NHWC images permuted to NCHW are
    channels-last in memory already (no copy; on the CPU this measured faster than contiguous
    NCHW, benchmarks/extraction.py). On a terminal a bar (``desc``) shows the batches.
    """
    net.eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    feats, logits = [], []
    for start in bar(range(0, len(images), batch_size), desc=desc, unit="batch"):
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


def view_transform(stage1_cfg: dict, class_counts, size: int):
    """(per-image transform of a uint8 CHW tensor to one augmented uint8 CHW tensor,
    description) of a stage-1 variant's own training augmentation, as its trainer builds it
    (``method.train_transform(cfg["augment"], size)``). A two-view transform: the weak view of
    a (strong, weak) one (RRL's ``TwoViews.weak``), the first of two views of one augmentation
    (``two_views``: SupCon)."""
    from .stage1 import get_method as get_stage1_method

    method = get_stage1_method(stage1_cfg["method"])(stage1_cfg["params"], np.asarray(class_counts))
    transform = method.train_transform(stage1_cfg["augment"], size)
    weak = getattr(transform, "weak", None)
    if weak is not None:
        return weak, f"{stage1_cfg['method']}: weak view of its (strong, weak) train_transform"

    def single(img):
        out = transform(img)
        return out[0] if isinstance(out, (tuple, list)) else out

    return single, f"{stage1_cfg['method']}: its train_transform (first view if it returns several)"


def augmented_views(images: np.ndarray, transform, n_views: int, seed: int) -> np.ndarray:
    """(n_views, N, H, W, C) uint8: ``n_views`` augmented passes over uint8 NHWC ``images``,
    one image at a time (a transform on a batch would share one draw across it), with torch's
    random stream seeded with ``seed`` in a forked random state."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    out = np.empty((n_views, *images.shape), dtype=np.uint8)
    with torch.random.fork_rng(devices=[]), bar(total=n_views * len(x), desc="augment views",
                                                unit="image") as shown:
        torch.manual_seed(seed)
        for v in range(n_views):
            for i in range(len(x)):
                out[v, i] = transform(x[i]).permute(1, 2, 0).numpy()
                shown.update()
    return out


def extract_features(checkpoint_path, manifest_path, cache_path, out_path,
                     threads: int | None = None, device: str = "auto", batch_size: int = 512,
                     precision: str = "auto", channels_last: str = "auto",
                     train_views: int = 0, stage1_params: dict | None = None) -> None:
    """Write the features file of a checkpoint. ``stage1_params`` (the stage-1 variant's
    validated config, as the pipeline passes): the checkpoint's recorded config hash must be its
    hash (a checkpoint of another variant is an error); None: not checked. ``precision`` (auto: bf16 on CUDA, fp32 on the
    CPU) and ``channels_last`` (auto: on CUDA) are resolved by :mod:`lmdlt.runtime` and recorded
    in the file's provenance. ``train_views`` N > 0 adds N augmented passes over the training
    split (``/train_views``, see the module docstring)."""
    if int(train_views) < 0:
        raise ValueError(f"train_views must be >= 0, not {train_views}")
    train_views = int(train_views)
    setup_torch(0, threads)
    dev = select_device(device)
    prec = resolve_precision(dev, precision)
    cl = use_channels_last(dev, channels_last)
    net, meta = load_checkpoint(checkpoint_path, dev)
    if stage1_params is not None:
        check_config_hash(checkpoint_path, meta["provenance"], stage1_params, out_path, "stage-1")
    ckpt_hash = sha256_file(checkpoint_path)
    table, man_meta = read_manifest(manifest_path)
    if meta["provenance"]["parents"].get("split") != man_meta["content_hash"]:
        raise ValueError(f"{checkpoint_path} was trained on split "
                         f"{meta['provenance']['parents'].get('split')}, not on {manifest_path} "
                         f"({man_meta['content_hash']})")
    cache = ImageCache(cache_path)
    check_cache_matches(cache, manifest_path, man_meta, table["id"].tolist())  # same data, every id
    log.info("device %s, precision %s, channels_last %s", dev, prec, cl)
    seed = meta["provenance"]["seed"]
    config = {"batch_size": batch_size, "precision": prec, "channels_last": cl,
              "train_views": train_views}
    if train_views:
        s1_cfg = meta["provenance"]["config"]
        train_rows = table[table["split"] == "train"]
        counts = np.bincount(train_rows["label"].to_numpy(np.int64), minlength=meta["num_classes"])
        transform, described = view_transform(s1_cfg, counts, int(cache.shape[1]))  # as the trainer
        config.update({"view_transform": described, "view_augment": s1_cfg["augment"],
                       "view_seed": seed})
    # the encoder's stage-1 config hash travels on, so stage 2 and the report can check it
    prov = provenance("features", config, {"checkpoint": ckpt_hash, "split": man_meta["content_hash"],
                                           "stage1_config": meta["provenance"].get("config_hash")},
                      seed)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        for split in SPLITS:
            rows = table[table["split"] == split]
            t0 = time.perf_counter()
            feats, logits = encode(net, cache.load(rows["id"].tolist()), dev, batch_size, prec, cl,
                                   desc=f"features {split}")
            g = f.create_group(split)
            g["features"] = feats
            g["logits"] = logits
            g["labels"] = rows["label"].to_numpy(np.int64)
            g.create_dataset("ids", data=np.array(rows["id"].tolist(), dtype=object),
                             dtype=h5py.string_dtype())
            log.info("%s: %d images -> features %s in %.2fs", split, len(rows), feats.shape,
                     time.perf_counter() - t0)
        if train_views:
            t0 = time.perf_counter()
            rows = table[table["split"] == "train"]
            images = cache.load(rows["id"].tolist())
            views = augmented_views(images, transform, train_views, seed)
            encoded = [encode(net, v, dev, batch_size, prec, cl, desc=f"features view {i + 1}/{len(views)}")
                       for i, v in enumerate(views)]
            f["train_views/features"] = np.stack([e[0] for e in encoded])
            f["train_views/logits"] = np.stack([e[1] for e in encoded])
            log.info("train: %d augmented views of %d images (%s) in %.2fs", train_views, len(rows),
                     described, time.perf_counter() - t0)
        f.attrs["train_views"] = train_views
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
        with open_h5(path, "features/predictions file") as f:
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
            #: {"features": (N, n_train, C), "logits": (N, n_train, K)}, or None (no views)
            self.train_views = ({k: f["train_views"][k][:] for k in f["train_views"]}
                                if "train_views" in f else None)

    @property
    def num_train_views(self) -> int:
        """The N recorded at extraction (``features.train_views``); 0 for files without it."""
        return int(self.provenance.get("config", {}).get("train_views", 0) or 0)

    def __getitem__(self, split: str) -> dict:
        if split not in self.splits:
            from .errors import NotFoundError

            raise NotFoundError(f"{self.path} has no split {split!r}")
        return self.splits[split]
