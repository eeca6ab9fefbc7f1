"""Runs one stage-2 variant and writes its predictions.

``run_stage2``: methods on cached features (a features file). ``run_stage2_encoder``: methods
that fine-tune the encoder (``needs_encoder``, LMD's ICC) from the stage-1 checkpoint, the split
manifest and the image cache; the predictions are the fine-tuned network's on every split.

Output (HDF5), the same for both: ``/<split>/logits``, ``labels``, ``ids`` for every split, the
method's fitted state under ``/state``, and the provenance naming the parents' hashes.
"""
from __future__ import annotations

import contextlib
import logging

import h5py
import numpy as np

from ..divergence import DivergenceError, learning_rates, run_context
from ..features import FeatureSet
from ..io import atomic_path, check_config_hash, h5_write_provenance, provenance, sha256_file
from ..resume import ResumeState, run_identity
from ..runtime import setup_torch
from .base import get_method
from .linear import with_train_views

log = logging.getLogger("lmdlt.stage2")


def check_train_views(fs: FeatureSet, expected: int | None = None) -> int:
    """The number N of augmented training views a features file holds, checked against its
    provenance (``train_views`` recorded at extraction; files without it: 0) and the arrays
    (``/train_views`` present exactly when N > 0, shaped (N, n_train, C) and (N, n_train, K)),
    and, when given, against ``expected`` (the config's ``features.train_views``)."""
    n = fs.num_train_views
    attr = fs.attrs.get("train_views")
    if attr is not None and int(attr) != n:
        raise ValueError(f"{fs.path}: inconsistent provenance, train_views {int(attr)} in its "
                         f"attributes but {n} in its provenance record")
    tv = fs.train_views
    if n == 0 and tv is not None:
        raise ValueError(f"{fs.path}: holds /train_views but records train_views 0")
    if n > 0:
        train = fs["train"]
        want = {"features": (n, *train["features"].shape), "logits": (n, *train["logits"].shape)}
        got = {k: tuple(v.shape) for k, v in (tv or {}).items()}
        if got != want:
            raise ValueError(f"{fs.path}: records train_views {n} but /train_views holds {got or 'nothing'}"
                             f" (expected {want}); re-run feature extraction")
    if expected is not None and int(expected) != n:
        raise ValueError(f"{fs.path} holds {n} augmented training views, but the config asks for "
                         f"features.train_views {expected}; re-run feature extraction")
    return n


def check_features(fs: FeatureSet, checkpoint_path=None, manifest_path=None,
                   train_views: int | None = None) -> None:
    """Provenance guard of a features file: its recorded checkpoint and split hashes agree with
    its own provenance record and, when given, with the checkpoint file and split manifest; its
    augmented training views agree with its record and, when given, with ``train_views``
    (``check_train_views``)."""
    recorded = {"checkpoint": fs.attrs.get("checkpoint_sha256"), "split": fs.attrs.get("split_hash")}
    parents = fs.provenance.get("parents", {})
    for key, value in recorded.items():
        if value is None:
            raise ValueError(f"{fs.path}: no recorded {key} hash; not an lmdlt features file")
        if parents.get(key) not in (None, value):
            raise ValueError(f"{fs.path}: inconsistent provenance, {key} hash {value} in its "
                             f"attributes but {parents[key]} in its provenance record")
    if checkpoint_path is not None:
        actual = sha256_file(checkpoint_path)
        if actual != recorded["checkpoint"]:
            raise ValueError(f"{fs.path} was extracted with checkpoint {recorded['checkpoint']}, "
                             f"not with {checkpoint_path} ({actual}); re-run feature extraction")
    if manifest_path is not None:
        from ..data.splits import read_manifest

        expected = read_manifest(manifest_path)[1]["content_hash"]
        if expected != recorded["split"]:
            raise ValueError(f"{fs.path} was extracted on split {recorded['split']}, not on "
                             f"{manifest_path} ({expected}); re-run feature extraction")
    check_train_views(fs, train_views)


def check_stage1_config(artefact, recorded_hash: str | None, stage1_params: dict | None, out_path) -> None:
    """``artefact`` (a features file or checkpoint) must come from the stage-1 variant config
    ``stage1_params`` (None: not checked), compared by config hash (``io.check_config_hash``)."""
    if stage1_params is not None:
        check_config_hash(artefact, {"config_hash": recorded_hash}, stage1_params, out_path, "stage-1")


@contextlib.contextmanager
def _training(cfg: dict, out_path, method):
    """Around a method's fit: its errors name the run (stage, variant, method, learning rates);
    a diverged fit (``lmdlt.divergence``) leaves no resume state, as stage 1."""
    with run_context("stage 2", cfg["method"], out_path, learning_rates(cfg["params"])):
        try:
            yield
        except DivergenceError:
            method.resume.clear()
            raise


def run_stage2(features_path, cfg: dict, seed: int, out_path, threads: int | None = None,
               checkpoint_path=None, manifest_path=None, train_views: int | None = None,
               stage1_params: dict | None = None, tracker=None) -> dict:
    """Fit a features-based stage-2 method and write its predictions. With ``checkpoint_path``
    / ``manifest_path`` the features must have been extracted with that checkpoint on that
    split, with ``train_views`` holding that many augmented training views
    (``check_features``). With views, the linear methods draw one per image per epoch
    (``linear.with_train_views``); every other method and the predictions use the clean
    features. A killed run resumes from ``<out_path>.resume.pt``."""
    gen = setup_torch(seed, threads)
    fs = FeatureSet(features_path)
    check_features(fs, checkpoint_path, manifest_path, train_views)
    stage1_hash = fs.provenance.get("parents", {}).get("stage1_config")
    check_stage1_config(features_path, stage1_hash, stage1_params, out_path)
    k = len(fs.class_names)
    method = get_method(cfg["method"])(cfg["params"], k)
    if method.needs_encoder:
        raise ValueError(f"stage-2 method {cfg['method']!r} fine-tunes the encoder: run it with "
                         "`lmdlt train-stage2-encoder` (checkpoint, split, images), not on features")
    train, val = fs["train"], fs["val"]
    log.info("%s on %s: train %d features (per class %s), dim %d, %d augmented views", cfg["method"],
             features_path, len(train["labels"]), np.bincount(train["labels"], minlength=k).tolist(),
             train["features"].shape[1], fs.num_train_views)
    if fs.num_train_views:
        train = with_train_views(train, fs.train_views)
    parents = {"features": sha256_file(features_path), "checkpoint": fs.attrs["checkpoint_sha256"],
               "split": fs.attrs["split_hash"], "stage1_config": stage1_hash}
    method.resume = ResumeState(out_path, run_identity("stage2", cfg, parents, seed))
    if tracker is not None:
        method.tracker = tracker
    with _training(cfg, out_path, method):
        method.fit(train, val, fs.classifier, gen)  # the test split is never handed to fit
    summary = method.summary()
    method.tracker.log_final(summary)
    if summary:
        log.info("fitted: %s", summary)
    prov = provenance("stage2", cfg, parents, seed)
    prov["summary"] = summary
    outputs = {split: {"logits": method.logits(d["features"]), "labels": d["labels"], "ids": d["ids"]}
               for split, d in fs.splits.items()}
    write_predictions(out_path, outputs, method.state(), fs.class_names,
                      fs.attrs["checkpoint_sha256"], fs.attrs["split_hash"], prov)
    method.resume.clear()  # the predictions exist: nothing left to resume
    return summary


def write_predictions(out_path, outputs: dict, state: dict, class_names, checkpoint_sha256: str,
                      split_hash: str, prov: dict) -> None:
    """The predictions layout every stage-2 producer writes (atomically): per split logits,
    labels, ids, and the features when the method fine-tuned the encoder."""
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        for split, d in outputs.items():
            g = f.create_group(split)
            g["logits"] = np.asarray(d["logits"], dtype=np.float32)
            if "features" in d:  # a method that fine-tunes the encoder: its own features
                g["features"] = np.asarray(d["features"], dtype=np.float32)
            g["labels"] = np.asarray(d["labels"])
            g.create_dataset("ids", data=np.array(list(d["ids"]), dtype=object),
                             dtype=h5py.string_dtype())
        for name, arr in state.items():
            f[f"state/{name}"] = arr
        f.attrs["class_names"] = list(class_names)
        f.attrs["checkpoint_sha256"] = checkpoint_sha256
        f.attrs["split_hash"] = split_hash
        h5_write_provenance(f, prov)


def run_stage2_encoder(checkpoint_path, manifest_path, cache_path, cfg: dict, seed: int, out_path,
                       threads: int | None = None, device: str = "auto",
                       stage1_params: dict | None = None, tracker=None) -> dict:
    """Run a stage-2 method that fine-tunes the encoder; write predictions of every split. With
    ``stage1_params`` the checkpoint must come from that stage-1 variant config. ``tracker``
    (both runners): a ``lmdlt.tracking.Tracker`` for the method's curves and summary."""
    from ..data.image_cache import ImageCache, check_checkpoint_inputs, load_split_images
    from ..data.splits import read_manifest
    from ..runtime import select_device
    from ..models.checkpoint import load_checkpoint
    from .icc import encode_images

    gen = setup_torch(seed, threads)
    dev = select_device(device)
    method_cls = get_method(cfg["method"])
    if not method_cls.needs_encoder:
        raise ValueError(f"stage-2 method {cfg['method']!r} works on cached features: run it with "
                         "`lmdlt train-stage2 --features ...`")
    net, meta = load_checkpoint(checkpoint_path, dev)
    stage1_hash = meta["provenance"].get("config_hash")
    check_stage1_config(checkpoint_path, stage1_hash, stage1_params, out_path)
    cache = ImageCache(cache_path)
    check_checkpoint_inputs(checkpoint_path, meta, manifest_path, read_manifest(manifest_path)[1], cache)
    data = load_split_images(manifest_path, cache_path)
    split_hash = data["meta"]["content_hash"]
    images_hash = cache.provenance["config_hash"]
    k = meta["num_classes"]
    method = method_cls(cfg["params"], k)
    ckpt_hash = sha256_file(checkpoint_path)
    parents = {"checkpoint": ckpt_hash, "split": split_hash, "images": images_hash,
               "stage1_config": stage1_hash}
    method.resume = ResumeState(out_path, run_identity("stage2", cfg, parents, seed))
    if tracker is not None:
        method.tracker = tracker
    (x_tr, y_tr, _), (x_val, y_val, _) = data["train"], data["val"]
    log.info("%s on %s (device %s): train %d images (per class %s), val %d", cfg["method"],
             checkpoint_path, dev, len(y_tr), np.bincount(y_tr, minlength=k).tolist(), len(y_val))
    with _training(cfg, out_path, method):
        method.fit_encoder(net, {"train": (x_tr, y_tr), "val": (x_val, y_val)}, gen, dev)  # no test
    summary = method.summary()
    method.tracker.log_final(summary)
    if summary:
        log.info("fitted: %s", summary)
    prov = provenance("stage2", cfg, parents, seed)
    prov["summary"] = summary
    outputs = {}
    for split in ("train", "val", "test"):
        x, y, ids = data[split]
        feats = encode_images(method.net, x, dev)
        # the fine-tuned encoder's features are kept (Figs. 4-5 draw them); the stage-1 features
        # file holds the encoder before the E-steps
        outputs[split] = {"logits": method.logits(feats), "labels": y, "ids": ids, "features": feats}
    write_predictions(out_path, outputs, method.state(), meta["class_names"], ckpt_hash, split_hash, prov)
    method.resume.clear()  # the predictions exist: nothing left to resume
    return summary
