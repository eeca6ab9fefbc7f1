"""The one stage-1 training loop shared by every method.

Reads the split manifest and the decoded-image cache, trains encoder + classifier with the
configured method, logs one line per epoch, keeps the checkpoint with the best validation
balanced accuracy (or the last one), and writes it atomically with its provenance. The
checkpoint holds only tensors and plain data, so it loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.image_cache import ImageCache, load_split_images
from ..data.samplers import make_sampler, set_sampler_epoch
from ..data.transforms import channel_stats
from ..io import atomic_path, provenance
from ..models import build_network
from ..runtime import setup_torch
from .base import get_method
from .distributed import SINGLE_PROCESS, setup as setup_distributed

log = logging.getLogger("lmdlt.stage1")


class _AugmentedImages(Dataset):
    """uint8 NHWC images -> augmented uint8 CHW tensors, one sample at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.array(labels))  # a writable copy
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


@torch.no_grad()
def predict_logits(net, images: np.ndarray, device, batch_size: int = 512) -> np.ndarray:
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).to(device)
        out.append(net(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, net.classifier.out_features), np.float32)


def _to(x, dev):
    return (tuple(v.to(dev, non_blocking=True) for v in x) if isinstance(x, (tuple, list))
            else x.to(dev, non_blocking=True))


def _cycle(loader):
    """Batches of ``loader`` for ever (a fresh pass, i.e. fresh draws, whenever one ends)."""
    while True:
        yield from loader


def train_sampler_spec(cfg: dict, method) -> dict:
    """The training sampler: the method's own (e.g. RS) or the variant's ``sampler`` setting."""
    gamma = cfg.get("sampler_gamma", 0.0)
    if cfg["sampler"] != "class_aware" and gamma:
        raise ValueError(f"stage1.sampler_gamma ({gamma}) applies only to sampler class_aware, "
                         f"not {cfg['sampler']!r}")
    spec = method.train_sampler()
    if spec is not None:
        if cfg["sampler"] != "instance":
            raise ValueError(f"stage-1 method {method.name!r} sets its own sampler ({spec}); "
                             f"remove the variant's sampler: {cfg['sampler']!r} (use the method's params)")
        return spec
    return {"name": cfg["sampler"], **({"gamma": gamma} if cfg["sampler"] == "class_aware" else {})}


def _loader(dataset, labels, spec: dict, cfg: dict, gen, ddp=SINGLE_PROCESS) -> DataLoader:
    opts = {k: v for k, v in spec.items() if k != "name"}
    # under torchrun: this rank's shard of the global draw, in batches of batch_size / processes
    sampler = ddp.shard(make_sampler(labels, spec["name"], gen, epochs=cfg["epochs"], **opts))
    return DataLoader(dataset, batch_size=ddp.local_batch_size(cfg["batch_size"]), sampler=sampler,
                      drop_last=len(labels) > cfg["batch_size"])


def train_stage1(manifest_path, cache_path, cfg: dict, seed: int, out_path,
                 threads: int | None = None, device: str = "auto") -> dict:
    """Train one stage-1 variant; returns the checkpoint's metadata."""
    from sklearn.metrics import balanced_accuracy_score  # here: sklearn costs ~2 s of import per job

    gen = setup_torch(seed, threads)
    ddp, dev = setup_distributed(device)  # a single process unless started by torchrun
    if not ddp.is_main:  # rank 0 logs for the run; the other ranks only warn
        log.setLevel(logging.WARNING)
    data = load_split_images(manifest_path, cache_path)
    class_names = data["meta"]["class_names"]
    k = len(class_names)
    x_tr, y_tr, _ = data["train"]
    x_val, y_val, _ = data["val"]
    counts = np.bincount(y_tr, minlength=k)
    log.info("device %s, threads %d; train %d images (per class %s), val %d",
             dev, torch.get_num_threads(), len(y_tr), counts.tolist(), len(y_val))
    if ddp.active:
        log.info("distributed: %d processes, backend %s, device %s per process, global batch %d = %d x %d",
                 ddp.world_size, ddp.backend, dev.type, cfg["batch_size"], ddp.world_size,
                 ddp.local_batch_size(cfg["batch_size"]))

    mean, std = channel_stats(x_tr)
    net = build_network(cfg["model"], x_tr.shape[-1], k, mean, std).to(dev)
    net = ddp.prepare(net, dev)  # SyncBatchNorm under torchrun, before any method hook sees net
    method = get_method(cfg["method"])(cfg["params"], counts)
    dataset = _AugmentedImages(x_tr, y_tr, method.train_transform(cfg["augment"], x_tr.shape[1]))
    loader = _loader(dataset, y_tr, train_sampler_spec(cfg, method), cfg, gen, ddp)
    paired_spec = method.paired_sampler()
    paired = _loader(dataset, y_tr, paired_spec, cfg, gen, ddp) if paired_spec else None
    if paired_spec:
        log.info("paired batches from sampler %s", paired_spec)
    method.on_train_start(net, cfg["epochs"], len(loader))  # before modules(): they may need net
    extra = ddp.prepare(method.modules().to(dev), dev)
    step_loss = ddp.wrap(method, net, extra, seed)  # method.loss, through DDP under torchrun
    params = list(net.parameters()) + list(extra.parameters())
    opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    steps = cfg["epochs"] * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))

    best = {"epoch": -1, "val_bacc": -1.0, "state": None}
    history = []
    for epoch in range(cfg["epochs"]):
        t0 = time.perf_counter()
        net.train()
        extra.train()
        sums: dict[str, float] = {}
        step_losses = []  # tensors: no host sync per step
        correct = seen = 0
        set_sampler_epoch(loader.sampler, epoch)
        paired_batches = None
        if paired is not None:
            set_sampler_epoch(paired.sampler, epoch)
            paired_batches = _cycle(paired)
        for x, y in loader:
            x, y = _to(x, dev), y.to(dev, non_blocking=True)
            if paired_batches is None:
                terms = step_loss(x, y, epoch)
            else:
                x2, y2 = next(paired_batches)
                terms = step_loss(x, y, epoch, paired=(_to(x2, dev), y2.to(dev, non_blocking=True)))
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            method.after_step(net)
            for name, v in terms.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach()) * len(y)
            seen += len(y)
            step_losses.append(loss.detach())
        sums, seen, step_losses = ddp.reduce_epoch(sums, seen, step_losses)  # over all ranks
        if not ddp.is_main:
            continue  # the weights are the same on every rank: rank 0 validates, selects, saves
        val_pred = predict_logits(net, x_val, dev).argmax(1)
        val_bacc = float(balanced_accuracy_score(y_val, val_pred))
        means = {n: s / max(seen, 1) for n, s in sums.items()}
        row = {"epoch": epoch + 1, "loss": sum(means.values()), **{f"loss_{n}": v for n, v in means.items()},
               "val_bacc": val_bacc, "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0,
               "step_losses": step_losses}
        history.append(row)
        terms_txt = " ".join(f"{n} {v:.4f}" for n, v in means.items())
        log.info("epoch %d/%d loss %.4f (%s) val_bacc %.4f lr %.4g %.1fs", epoch + 1, cfg["epochs"],
                 row["loss"], terms_txt, val_bacc, row["lr"], row["seconds"])
        if cfg["select"] == "last" or val_bacc > best["val_bacc"]:
            best = {"epoch": epoch + 1, "val_bacc": val_bacc,
                    "state": copy.deepcopy({k_: v.cpu() for k_, v in net.state_dict().items()})}
    if not ddp.is_main:
        ddp.close()
        return None  # only rank 0 writes the checkpoint
    log.info("kept epoch %d (select=%s, val_bacc %.4f)", best["epoch"], cfg["select"], best["val_bacc"])

    meta = {
        "provenance": provenance("stage1", cfg, {"split": data["meta"]["content_hash"],
                                                 "images": ImageCache(cache_path).provenance["config_hash"]}, seed),
        "model": cfg["model"], "in_channels": int(x_tr.shape[-1]), "num_classes": k,
        "class_names": class_names, "mean": mean, "std": std,
        "selected_epoch": best["epoch"], "selected_val_bacc": best["val_bacc"], "history": history,
    }
    with atomic_path(out_path) as tmp:
        torch.save({"state_dict": best["state"], "meta": meta}, tmp)
    ddp.close()
    return meta
