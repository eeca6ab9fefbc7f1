"""The one stage-1 training loop shared by every method.

Reads the split manifest and the decoded-image cache, trains encoder + classifier with the
configured method, logs one line per epoch, keeps the checkpoint with the best validation
balanced accuracy (or the last one), and writes it atomically with its provenance. The
checkpoint holds only tensors and plain data, so it loads with ``torch.load(weights_only=True)``.

Resuming: after every epoch the full training state (weights, the method's modules and state,
optimiser, schedule, sampler generator, every RNG, best-so-far and history) is written
atomically beside the output (``model.pt.resume.pt``, ``lmdlt.resume``). A re-run of the same
run (same config, split, image cache, seed, precision) continues from it and ends with the same
weights as an uninterrupted run; a resume file of any other run is ignored and deleted. It is
removed once the checkpoint is written.

Non-finite and divergence guards: a non-finite loss term or gradient (checked every step), or
an epoch whose mean loss runs off (``lmdlt.divergence``: above 1000 x the first step's loss and
100), stops training with ``DivergenceError`` (a ``FloatingPointError``) naming the stage, the
variant, the learning rate, the epoch and the step, term or parameter, and leaves neither a
checkpoint nor a resume file; so the kept epoch is never a diverged one.
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.augment import SeededDraws, resolve_augment_device, seeded_call, stream_seed
from ..data.image_cache import ImageCache, load_split_images
from ..data.samplers import make_sampler, set_sampler_epoch
from ..data.transforms import Identity, channel_stats
from ..divergence import DivergenceError, DivergenceGuard, run_context, with_run
from ..io import atomic_path, provenance
from ..models import build_network
from ..models.finetune import apply_finetune, param_groups
from ..progress import Pace, bar
from ..resume import ResumeState, rng_state, run_identity
from ..runtime import autocast, loader_options, resolve_precision, setup_torch, use_channels_last
from ..tracking import NO_TRACKING
from .base import get_method
from .distributed import SINGLE_PROCESS, Distributed, setup as setup_distributed

log = logging.getLogger("lmdlt.stage1")


class _AugmentedImages(Dataset):
    """uint8 NHWC images -> augmented uint8 CHW tensors, one sample at a time. Keys are
    ``(index, seed)`` pairs (``augment.SeededDraws``): each image is augmented under its own
    seed, whichever process or worker makes it; a plain index draws from the global stream."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.array(labels))  # a writable copy
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = self.images[i]
        if isinstance(self.transform, Identity):
            return img, self.labels[i]
        return (self.transform(img) if seed is None else seeded_call(self.transform, img, seed)), self.labels[i]


@torch.no_grad()
def predict_logits(net, images: np.ndarray, device, batch_size: int = 512) -> np.ndarray:
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).to(device)
        out.append(net(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, net.classifier.out_features), np.float32)


def _to(x, dev, memory_format=torch.preserve_format):
    if isinstance(x, (tuple, list)):
        return tuple(_to(v, dev, memory_format) for v in x)
    return x.to(dev, non_blocking=True, memory_format=memory_format if x.dim() == 4 else torch.preserve_format)


def _sampler_generators(*loaders) -> list[torch.Generator]:
    """The distinct generators the loaders' samplers draw from (the paired one may share it)."""
    gens: list[torch.Generator] = []
    for loader in loaders:
        g = getattr(getattr(loader, "sampler", None), "generator", None) if loader is not None else None
        if g is not None and all(g is not h for h in gens):
            gens.append(g)
    return gens


def _non_finite(message: str, resume: ResumeState):
    """Stop the run; its resume state goes too, so a re-run starts from scratch."""
    resume.clear()
    return DivergenceError(with_run(message))


def _named_run(train):
    """Errors raised while training name the run: stage, variant, method, learning rate."""
    @functools.wraps(train)
    def run(manifest_path, cache_path, cfg, seed, out_path, *args, **kwargs):
        with run_context("stage 1", cfg["method"], out_path, {"lr": cfg["lr"]}):
            return train(manifest_path, cache_path, cfg, seed, out_path, *args, **kwargs)
    return run


def _check_finite(loss: torch.Tensor, terms: dict, named_params: list, epoch: int, step: int,
                  resume: ResumeState) -> None:
    """After backward: one fused test of the loss and the total gradient norm (a single host
    sync per step), the culprit only looked for on failure. After backward, not before it, so
    that under DDP a NaN on one rank reaches every rank through the averaged gradients and all
    ranks stop at the same step instead of waiting for the one that stopped."""
    loss = loss.detach()
    grads = [p.grad for _, p in named_params if p.grad is not None]
    finite = torch.isfinite(loss)
    if grads:
        finite = finite & torch.isfinite(torch.nn.utils.get_total_norm(grads))
    if bool(finite):
        return
    where = f"at epoch {epoch + 1} step {step}"
    if not bool(torch.isfinite(loss)):
        bad = [f"{n}={float(v.detach()):g}" for n, v in terms.items() if not bool(torch.isfinite(v.detach()).all())]
        raise _non_finite(f"non-finite stage-1 loss {where}: term(s) "
                          f"{', '.join(bad) or 'their sum overflows'}", resume)
    bad = next((n for n, p in named_params if p.grad is not None and not bool(torch.isfinite(p.grad).all())),
               "none (the total gradient norm overflows)")
    raise _non_finite(f"non-finite stage-1 gradient {where}: parameter {bad}", resume)


def _bn_buffers(*modules) -> list[torch.Tensor]:
    return [b for m in modules for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
            for b in mod.buffers()]


def _sharpness_pass(sharp, net, extra, opt, second_loss, named_params, epoch: int, step: int,
                    resume: ResumeState) -> None:
    """``base.SharpnessStep``'s second pass, after the first pass's backward: perturb the weights
    to w + e(w), zero the gradients, ``second_loss()`` (the same batch) and backward at w + e,
    copy w back, and leave in ``.grad`` the mix of both passes' gradients the step asks for."""
    perturbed = sharp.params(net, extra)
    eps = sharp.perturbation(perturbed, [q.grad for q in perturbed])
    a = sharp.first_pass_weight
    first = [None if q.grad is None else q.grad.detach().clone() for _, q in named_params] if a else None
    bn = _bn_buffers(net, extra)
    with torch.no_grad():
        saved = [q.detach().clone() for q in perturbed]
        bn_saved = [b.detach().clone() for b in bn]
        for q, e in zip(perturbed, eps):
            if e is not None:
                q.add_(e)
    opt.zero_grad(set_to_none=True)
    terms = second_loss()
    loss = sum(v.float() for v in terms.values())
    loss.backward()
    with torch.no_grad():
        for q, w in zip(perturbed, saved):
            q.copy_(w)
        for b, v in zip(bn, bn_saved):
            b.copy_(v)
        if a:
            for (_, q), g1 in zip(named_params, first):
                if g1 is None:
                    continue
                q.grad = g1 * a if q.grad is None else q.grad.mul_(1 - a).add_(g1, alpha=a)
    _check_finite(loss, terms, named_params, epoch, step, resume)


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


def _loader(dataset, labels, spec: dict, cfg: dict, gen, ddp=SINGLE_PROCESS,
            workers: dict | None = None, seed: int = 0, stream: int = 0) -> DataLoader:
    """``workers``: ``runtime.loader_options`` (workers and pinned memory chosen by the code);
    ``seed``, ``stream``: the per-sample augmentation seeds' source (``augment.SeededDraws``)."""
    opts = {k: v for k, v in spec.items() if k != "name"}
    # seeds per position of the global draw; under torchrun: this rank's shard of it, in
    # batches of batch_size / processes (each image keeps the seed it has in one process)
    sampler = ddp.shard(SeededDraws(make_sampler(labels, spec["name"], gen, epochs=cfg["epochs"], **opts),
                                    seed, stream))
    return DataLoader(dataset, batch_size=ddp.local_batch_size(cfg["batch_size"]), sampler=sampler,
                      drop_last=len(labels) > cfg["batch_size"], **(workers or {}))


def lr_scheduler(opt, schedule: str, steps: int, method) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule: ``cosine`` (to 0 over the run), ``constant`` (the LMD
    reference's stage 1: SGD at a fixed lr, stage1.py / utils/train.py), or the method's own
    (``method.lr_lambda``, e.g. LDAM-DRW's warm-up and step decay) when it defines one."""
    own = method.lr_lambda(steps)
    if own is not None:
        return torch.optim.lr_scheduler.LambdaLR(opt, own)
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    raise ValueError(f"stage1.lr_schedule: unknown schedule {schedule!r} (cosine, constant)")


@dataclass
class _Stage1Run:
    """What one stage-1 run trains with. :func:`_set_up` builds it in a fixed order: the order of
    the random draws (weights, method state, samplers) is part of what a seed gives."""

    cfg: dict
    seed: int
    ddp: Distributed
    dev: torch.device
    prec: str
    memory_format: torch.memory_format
    class_names: list
    x_tr: np.ndarray
    y_tr: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    parents: dict          # the split's and the image cache's hashes
    net: torch.nn.Module
    mean: list             # the input normalisation the checkpoint records
    std: list
    finetune: dict
    method: object         # the stage-1 method (base.Stage1Method)
    extra: torch.nn.Module  # the method's own modules (e.g. RRL's teacher)
    step_loss: object      # method.loss, through DDP under torchrun
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    paired: DataLoader | None
    batch_aug: object      # the augmentation batched on the device, or None (per sample)
    augment: str           # where it runs: "device" or "loader"
    resume: ResumeState
    named_params: list
    sampler_gens: list
    sharp: object          # the method's sharpness step, or None (a single pass)


@dataclass
class _Progress:
    """What the epochs so far leave: the kept epoch, one row per epoch, where to start."""

    best: dict = field(default_factory=lambda: {"epoch": -1, "val_bacc": -1.0, "state": None})
    history: list = field(default_factory=list)
    start_epoch: int = 0
    divergence: DivergenceGuard = field(default_factory=lambda: DivergenceGuard("training"))


def _set_up(manifest_path, cache_path, cfg: dict, seed: int, out_path, threads, device: str,
            precision: str, channels_last: str, augment_device: str) -> _Stage1Run:
    """Seeds, device, the split's images, the network, the method, the loaders, the optimiser and
    the run's resume state."""
    gen = setup_torch(seed, threads)
    ddp, dev = setup_distributed(device)  # a single process unless started by torchrun
    if not ddp.is_main:  # rank 0 logs for the run; the other ranks only warn
        log.setLevel(logging.WARNING)
    prec = resolve_precision(dev, precision)
    memory_format = torch.channels_last if use_channels_last(dev, channels_last) else torch.preserve_format
    data = load_split_images(manifest_path, cache_path)
    class_names = data["meta"]["class_names"]
    k = len(class_names)
    x_tr, y_tr, _ = data["train"]
    x_val, y_val, _ = data["val"]
    counts = np.bincount(y_tr, minlength=k)
    log.info("device %s, precision %s, channels-last %s, threads %d; train %d images (per class %s), val %d",
             dev, prec, memory_format == torch.channels_last, torch.get_num_threads(), len(y_tr),
             counts.tolist(), len(y_val))
    parents = {"split": data["meta"]["content_hash"], "images": ImageCache(cache_path).provenance["config_hash"]}
    if ddp.active:
        log.info("distributed: %d processes, backend %s, device %s per process, global batch %d = %d x %d",
                 ddp.world_size, ddp.backend, dev.type, cfg["batch_size"], ddp.world_size,
                 ddp.local_batch_size(cfg["batch_size"]))
    net, mean, std, finetune = _build_network(cfg, x_tr, k, dev, memory_format, ddp)
    method = get_method(cfg["method"])(cfg["params"], counts)
    method_transform = method.train_transform(cfg["augment"], x_tr.shape[1])
    # batched on the device (a GPU: RRL's strong view is ~6 ms per 224 px image on a CPU core) or
    # per sample in the loader (lmdlt.data.augment); another random stream, so part of the identity
    batch_aug = resolve_augment_device(augment_device, dev, method_transform)
    log.info("augmentation: %s", "batched on the device" if batch_aug is not None else "per sample in the loader")
    augment = "device" if batch_aug is not None else "loader"
    # precision is part of the identity: half fp32, half bf16 would match neither kind of run
    resume_key = {"variant": cfg, "precision": prec, "augment": augment}
    resume = ResumeState(out_path, run_identity("stage1", resume_key, parents, seed))
    dataset = _AugmentedImages(x_tr, y_tr, Identity() if batch_aug is not None else method_transform)
    # the images are decoded in memory (the cache): no worker on the CPU, workers + pinned
    # memory on CUDA (lmdlt.runtime.loader_options)
    workers = loader_options(dev, threads, in_memory=True)
    loader = _loader(dataset, y_tr, train_sampler_spec(cfg, method), cfg, gen, ddp, workers, seed, 0)
    paired_spec = method.paired_sampler()
    paired = _loader(dataset, y_tr, paired_spec, cfg, gen, ddp, workers, seed, 1) if paired_spec else None
    if paired_spec:
        log.info("paired batches from sampler %s", paired_spec)
    method.on_train_start(net, cfg["epochs"], len(loader))  # before modules(): they may need net
    extra = ddp.prepare(method.modules().to(dev), dev)
    step_loss = ddp.wrap(method, net, extra, seed)
    params = param_groups(net, extra, cfg["lr"], cfg.get("finetune"))  # encoder_lr: its own group
    opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    sched = lr_scheduler(opt, cfg.get("lr_schedule", "cosine"), cfg["epochs"] * len(loader), method)
    named_params = ([(n, q) for n, q in net.named_parameters()]
                    + [(f"method.{n}", q) for n, q in extra.named_parameters()])
    sharp = method.sharpness_step()  # None: the single pass
    if sharp is not None:
        log.info("two-pass sharpness-aware step (%s, first-pass weight %g)", type(sharp).__name__,
                 sharp.first_pass_weight)
    return _Stage1Run(cfg, seed, ddp, dev, prec, memory_format, class_names, x_tr, y_tr, x_val, y_val,
                      parents, net, mean, std, finetune, method, extra, step_loss, opt, sched, loader,
                      paired, batch_aug, augment, resume, named_params, _sampler_generators(loader, paired),
                      sharp)


def _build_network(cfg: dict, x_tr: np.ndarray, k: int, dev, memory_format, ddp) -> tuple:
    """(the network on ``dev``, the input normalisation's mean and std, the fine-tuning applied)."""
    mean, std = channel_stats(x_tr)
    net = build_network(cfg["model"], x_tr.shape[-1], k, mean, std, image_size=int(x_tr.shape[1]))
    mean, std = net.input_normalisation  # pretrained weights: their own (mean, std)
    finetune = apply_finetune(net, cfg.get("finetune"))  # frozen stages / BatchNorm statistics
    if net.weights_info or cfg.get("finetune"):
        log.info("pretrained weights: %s; input normalisation mean %s std %s; fine-tuning %s",
                 (net.weights_info or {}).get("source"), [round(v, 4) for v in mean],
                 [round(v, 4) for v in std], {**(cfg.get("finetune") or {}), **finetune})
    net = net.to(dev, memory_format=memory_format)
    net = ddp.prepare(net, dev)  # SyncBatchNorm under torchrun, before any method hook sees net
    return net, mean, std, finetune


def _start_or_resume(run: _Stage1Run, tracker) -> _Progress:
    """A fresh start, or the state of the epochs a previous attempt of this run finished."""
    progress = _Progress()
    resumed = run.resume.load()
    if resumed is None:
        run.resume.clear()  # a foreign or unreadable file (already warned about)
        return progress
    run.net.load_state_dict(resumed["net"])
    run.extra.load_state_dict(resumed["extra"])
    run.method.load_state_dict(resumed["method"])
    run.opt.load_state_dict(resumed["optimizer"])
    run.sched.load_state_dict(resumed["scheduler"])
    run.ddp.restore_rng(resumed, run.sampler_gens, run.seed)  # each rank its own stream
    progress.best, progress.history = resumed["best"], resumed["history"]
    progress.start_epoch = resumed["epoch"]
    if progress.history and progress.history[0].get("step_losses"):
        progress.divergence.reference = progress.history[0]["step_losses"][0]
    for row in progress.history:  # the tracked run shows the whole curve
        tracker.log_step(row["epoch"], row)
    log.info("resumed from epoch %d/%d (%s)", progress.start_epoch, run.cfg["epochs"], run.resume.path)
    return progress


def _train_epoch(run: _Stage1Run, epoch: int) -> tuple[dict, int, list]:
    """One pass over the training split: (loss sums per term, images seen, each step's loss),
    over every rank."""
    net, extra, method, dev, seed, ddp = run.net, run.extra, run.method, run.dev, run.seed, run.ddp
    net.train()
    extra.train()
    sums: dict[str, torch.Tensor] = {}  # on the device: no host sync per step
    step_losses = []
    seen = 0
    set_sampler_epoch(run.loader.sampler, epoch)
    paired_batches = None
    if run.paired is not None:
        set_sampler_epoch(run.paired.sampler, epoch)
        paired_batches = _cycle(run.paired)
    for step, (x, y) in enumerate(bar(run.loader, desc=f"epoch {epoch + 1}", unit="batch",
                                      enable=ddp.is_main), 1):
        x, y = _to(x, dev), y.to(dev, non_blocking=True)
        if run.batch_aug is not None:
            x = run.batch_aug(x, stream_seed(seed, 0, epoch, step, ddp.rank))
        x = _to(x, dev, run.memory_format)
        kw = {}
        if paired_batches is not None:
            x2, y2 = next(paired_batches)
            x2 = _to(x2, dev)
            if run.batch_aug is not None:
                x2 = run.batch_aug(x2, stream_seed(seed, 1, epoch, step, ddp.rank))
            kw["paired"] = (_to(x2, dev, run.memory_format), y2.to(dev, non_blocking=True))
        with autocast(dev, run.prec):
            terms = run.step_loss(x, y, epoch, **kw)
        loss = sum(v.float() for v in terms.values())
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        _check_finite(loss, terms, run.named_params, epoch, step, run.resume)
        if run.sharp is not None:  # SAM-style: the step's gradient is (mostly) the one at w + e(w)
            def second_loss():
                with autocast(dev, run.prec):
                    return run.step_loss(x, y, epoch, **kw)
            _sharpness_pass(run.sharp, net, extra, run.opt, second_loss, run.named_params, epoch, step,
                            run.resume)
        run.opt.step()
        run.sched.step()
        method.after_step(net)
        for name, v in terms.items():
            term = v.detach().double() * len(y)
            sums[name] = term if name not in sums else sums[name] + term
        seen += len(y)
        step_losses.append(loss.detach())
    if sums:  # the epoch's one host sync of the loss sums
        sums = dict(zip(sums, torch.stack(list(sums.values())).tolist()))
    return ddp.reduce_epoch(sums, seen, step_losses)  # over all ranks


def _check_divergence(run: _Stage1Run, progress: _Progress, epoch: int, sums: dict, seen: int,
                      step_losses: list) -> None:
    """Stop the run (and drop its resume state) when the epoch's mean loss ran off. On every rank
    (the sums are reduced), so that all ranks stop together."""
    try:
        progress.divergence.check(sum(sums.values()) / max(seen, 1), epoch + 1, run.cfg["epochs"],
                                  first_step=step_losses[0] if step_losses else None)
    except DivergenceError:
        run.resume.clear()
        raise


def _validate_and_select(run: _Stage1Run, progress: _Progress, epoch: int, sums: dict, seen: int,
                         step_losses: list, t0: float, tracker, pace: Pace, epochs) -> None:
    """Rank 0's end of an epoch: validation BACC, the epoch's row (log, tracker, bar; its time
    from ``t0``, validation included) and the kept epoch."""
    from sklearn.metrics import balanced_accuracy_score

    cfg, method, net, best = run.cfg, run.method, run.net, progress.best
    with autocast(run.dev, run.prec):
        val_pred = predict_logits(net, run.x_val, run.dev).argmax(1)
    val_bacc = float(balanced_accuracy_score(run.y_val, val_pred))
    means = {n: s / max(seen, 1) for n, s in sums.items()}
    row = {"epoch": epoch + 1, "loss": sum(means.values()), **{f"loss_{n}": v for n, v in means.items()},
           "val_bacc": val_bacc, "lr": run.sched.get_last_lr()[0], "seconds": time.perf_counter() - t0,
           "step_losses": step_losses}
    progress.history.append(row)
    tracker.log_step(epoch + 1, row)
    terms_txt = " ".join(f"{n} {v:.4f}" for n, v in means.items())
    log.info("epoch %d/%d loss %.4f (%s) val_bacc %.4f lr %.4g %.1fs %s", epoch + 1, cfg["epochs"],
             row["loss"], terms_txt, val_bacc, row["lr"], row["seconds"], pace.text(epoch + 1))
    epochs.set_postfix(loss=f"{row['loss']:.4f}", val_bacc=f"{val_bacc:.4f}", refresh=False)
    # best_val only among the epochs the method counts as itself (e.g. RRL after its warm-up)
    if cfg["select"] == "last" or (method.selectable(epoch) and val_bacc > best["val_bacc"]):
        progress.best = {"epoch": epoch + 1, "val_bacc": val_bacc,
                         "state": copy.deepcopy({k_: v.cpu() for k_, v in net.state_dict().items()})}


def _save_resume_state(run: _Stage1Run, progress: _Progress, epoch: int, rng_ranks: list) -> None:
    """Everything the next epoch needs, after every epoch (``lmdlt.resume``)."""
    run.resume.save({"epoch": epoch + 1, "net": run.net.state_dict(), "extra": run.extra.state_dict(),
                     "method": run.method.state_dict(), "optimizer": run.opt.state_dict(),
                     "scheduler": run.sched.state_dict(), "rng": rng_ranks[0], "rng_ranks": rng_ranks,
                     "best": progress.best, "history": progress.history})


def _save_checkpoint(run: _Stage1Run, progress: _Progress, out_path, tracker) -> dict:
    """The kept epoch's weights and the checkpoint's metadata, written atomically; the resume
    state goes."""
    cfg, best = run.cfg, progress.best
    log.info("kept epoch %d (select=%s, val_bacc %.4f)", best["epoch"], cfg["select"], best["val_bacc"])
    tracker.log_final({"selected_epoch": best["epoch"], "selected_val_bacc": best["val_bacc"]})
    meta = {
        "provenance": provenance("stage1", cfg, run.parents, run.seed),
        "model": cfg["model"], "in_channels": int(run.x_tr.shape[-1]), "num_classes": len(run.class_names),
        "class_names": run.class_names, "mean": run.mean, "std": run.std,
        "image_size": int(run.x_tr.shape[1]),
        "weights": run.net.weights_info, "finetune": run.finetune,
        "selected_epoch": best["epoch"], "selected_val_bacc": best["val_bacc"], "history": progress.history,
        "compute": {"device": str(run.dev), "precision": run.prec,
                    "channels_last": run.memory_format == torch.channels_last, "augment": run.augment},
    }
    with atomic_path(out_path) as tmp:
        torch.save({"state_dict": best["state"], "meta": meta}, tmp)
    run.resume.clear()
    return meta


@_named_run
def train_stage1(manifest_path, cache_path, cfg: dict, seed: int, out_path,
                 threads: int | None = None, device: str = "auto", precision: str = "auto",
                 channels_last: str = "auto", tracker=None, augment_device: str = "auto") -> dict:
    """Train one stage-1 variant; returns the checkpoint's metadata. ``precision``: auto (bf16
    autocast on CUDA), fp32 or bf16; ``channels_last``: auto (on CUDA), on or off.
    ``tracker``: a ``lmdlt.tracking.Tracker`` given every epoch's row and the kept epoch.

    The steps: :func:`_set_up` (seeds, data, network, method, loaders, optimiser),
    :func:`_start_or_resume`, then per epoch :func:`_train_epoch`, :func:`_check_divergence`, the
    method's epoch end, and on rank 0 :func:`_validate_and_select` and :func:`_save_resume_state`;
    last :func:`_save_checkpoint`."""
    import sklearn.metrics  # noqa: F401 - its ~2 s of import per job before the first epoch's clock

    tracker = NO_TRACKING if tracker is None else tracker
    run = _set_up(manifest_path, cache_path, cfg, seed, out_path, threads, device, precision,
                  channels_last, augment_device)
    progress = _start_or_resume(run, tracker)
    pace = Pace(cfg["epochs"], progress.start_epoch)
    # a bar on a terminal only (rank 0); a log file gets the one line per epoch
    epochs = bar(range(progress.start_epoch, cfg["epochs"]), total=cfg["epochs"],
                 initial=progress.start_epoch, desc=f"stage1 {cfg['method']}", unit="epoch",
                 enable=run.ddp.is_main)
    for epoch in epochs:
        t0 = time.perf_counter()
        sums, seen, step_losses = _train_epoch(run, epoch)
        _check_divergence(run, progress, epoch, sums, seen, step_losses)
        # e.g. RRL re-estimating BatchNorm on clean images
        run.method.on_epoch_end(run.net, run.x_tr, run.dev)
        rng_ranks = run.ddp.rng_states(rng_state(*run.sampler_gens))  # every rank's own (a collective)
        if not run.ddp.is_main:
            continue  # the weights are the same on every rank: rank 0 validates, selects, saves
        _validate_and_select(run, progress, epoch, sums, seen, step_losses, t0, tracker, pace, epochs)
        _save_resume_state(run, progress, epoch, rng_ranks)
    epochs.close()
    if not run.ddp.is_main:
        run.ddp.close()
        return None  # only rank 0 writes the checkpoint
    meta = _save_checkpoint(run, progress, out_path, tracker)
    run.ddp.close()
    return meta
