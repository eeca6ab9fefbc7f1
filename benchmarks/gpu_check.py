"""The GPU check: one command, one JSON file, for the first session with a CUDA machine.

    python benchmarks/gpu_check.py                       # CUDA: the sizes below, < 8 min on one GPU
    python benchmarks/gpu_check.py --device cpu --tiny   # a few seconds (the test suite runs it)

Sections (each timed on its own, each failure recorded in the JSON instead of stopping the run):

* ``train``: stage-1 training throughput (images/s, synthetic uint8 batches already on the
  device, SGD + CE) of torchvision's ResNet-18 at 224 px, batch 128: fp32, bf16 autocast,
  bf16 + channels-last (lmdlt's CUDA default), and the same with cuDNN's benchmark mode instead
  of deterministic kernels (what ``runtime.setup_torch`` gives up); RRL's step (student on two
  views, teacher on one, Gram terms) at lmdlt's default.
* ``data``: the data path per method (CE's weak view, RRL's strong + weak views, SupCon's two
  views): images/s of one CPU core (image cache -> per-sample augmentation -> batch, as a
  DataLoader worker does; from the thread's CPU time, so other load on the machine does not
  lower it) and of the batched path on the device (``lmdlt.data.augment``), and the CPU cores
  that would keep the measured training step busy.
* ``extract``: feature extraction throughput (``lmdlt.features.encode``, bf16 + channels-last).
* ``vfc``: one VFC M-step at R = 50,000, K = 23, C = 512 (statistics, 1.15 M virtual features,
  3,267 SGD steps of batch 352).
* ``icc``: one ICC iteration (features of the training images, M-step, E-step, validation)
  with a ResNet-18 at 224 px on 2,000 synthetic training images.
* peak memory: ``torch.cuda.max_memory_allocated`` per section on CUDA, peak RSS on the CPU.

Synthetic data throughout: the figures are of the code and the machine, not of a dataset.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SIZES = {  # full: a CUDA machine; tiny: the CPU test (seconds)
    "full": {"px": 224, "batch": 128, "steps": 20, "warmup": 5, "classes": 7, "data_images": 64,
             "aug_batches": 10, "extract_images": 4096, "r": 50_000, "k": 23, "c": 512, "n_real": 8_500,
             "icc_train": 2000, "icc_val": 500, "icc_r": 50_000},
    "tiny": {"px": 32, "batch": 8, "steps": 2, "warmup": 1, "classes": 3, "data_images": 4,
             "aug_batches": 1, "extract_images": 16, "r": 50, "k": 3, "c": 16, "n_real": 60,
             "icc_train": 24, "icc_val": 9, "icc_r": 20},
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def _network(size: dict, dev: torch.device, channels_last: bool, arch: str = "resnet18"):
    from lmdlt.models import build_network

    cfg = {"arch": arch, "stem": "imagenet"} if arch == "resnet18" else {"arch": arch}
    net = build_network(cfg, 3, size["classes"], [0.5] * 3, [0.25] * 3, image_size=size["px"])
    return net.to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def _images(n: int, px: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def _timed_steps(step, size: dict, dev: torch.device) -> float:
    for _ in range(size["warmup"]):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(size["steps"]):
        step()
    _sync(dev)
    return size["steps"] * size["batch"] / (time.perf_counter() - t0)


def section_train(size: dict, dev: torch.device) -> dict:
    from lmdlt.runtime import autocast

    out = {"arch": "resnet18 (torchvision, ImageNet stem)", "px": size["px"], "batch": size["batch"]}
    variants = [("fp32", "fp32", False, False), ("bf16", "bf16", False, False),
                ("bf16_channels_last", "bf16", True, False),
                ("bf16_channels_last_cudnn_benchmark", "bf16", True, True)]
    x = torch.randint(0, 256, (size["batch"], 3, size["px"], size["px"]), dtype=torch.uint8, device=dev)
    y = torch.randint(0, size["classes"], (size["batch"],), device=dev)
    for name, prec, cl, bench in variants:
        det = torch.are_deterministic_algorithms_enabled()
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = bench, not bench
        if bench:
            torch.use_deterministic_algorithms(False)
        try:
            _reset_peak(dev)
            net = _network(size, dev, cl)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            xb = x.contiguous(memory_format=torch.channels_last) if cl else x

            def step():
                with autocast(dev, prec):
                    loss = F.cross_entropy(net(xb), y)
                opt.zero_grad(set_to_none=True)
                loss.float().backward()
                opt.step()
            out[name] = {"images_per_s": round(_timed_steps(step, size, dev), 1),
                         "peak_memory_mb": round(_peak_mb(dev), 1)}
        finally:
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
            torch.use_deterministic_algorithms(det, warn_only=True)
    out["rrl_step_bf16_channels_last"] = _rrl_step(size, dev)
    return out


def _rrl_step(size: dict, dev: torch.device) -> dict:
    from lmdlt.config import validate_variant
    from lmdlt.runtime import autocast
    from lmdlt.stage1 import get_method

    _reset_peak(dev)
    prec = "bf16" if dev.type == "cuda" else "fp32"
    net = _network(size, dev, dev.type == "cuda")
    p = validate_variant("stage1", {"method": "rrl", "params": {"consistency_start_epoch": 0}})["params"]
    method = get_method("rrl")(p, np.full(size["classes"], 10))
    method.on_train_start(net, 2, 10)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    mf = torch.channels_last if dev.type == "cuda" else torch.preserve_format
    xs = torch.randint(0, 256, (size["batch"], 3, size["px"], size["px"]), dtype=torch.uint8,
                       device=dev).contiguous(memory_format=mf)
    xw = xs.flip(-1).contiguous(memory_format=mf)
    y = torch.randint(0, size["classes"], (size["batch"],), device=dev)

    def step():
        with autocast(dev, prec):
            terms = method.loss(net, (xs, xw), y, 1)
        opt.zero_grad(set_to_none=True)
        sum(v.float() for v in terms.values()).backward()
        opt.step()
        method.after_step(net)
    return {"precision": prec, "images_per_s": round(_timed_steps(step, size, dev), 1),
            "peak_memory_mb": round(_peak_mb(dev), 1)}


def section_data(size: dict, dev: torch.device, train: dict | None) -> dict:
    """Per-core loader path and batched device path, per method."""
    from lmdlt.config import validate_variant
    from lmdlt.data.augment import SeededDraws, batched
    from lmdlt.stage1 import get_method
    from lmdlt.stage1.trainer import _AugmentedImages
    from torch.utils.data import SequentialSampler, default_collate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker's share: one core
    px, n = size["px"], size["data_images"]
    images = _images(n, px, seed=1)
    labels = np.arange(n) % size["classes"]
    augment = {"crop_padding": 2, "hflip": True, "vflip": True}
    out = {"px": px, "augment": augment, "per_core_threads": 1}
    gpu_rates = {}
    if train:
        ce = train.get("bf16_channels_last") or train.get("fp32") or {}
        gpu_rates = {"ce": ce.get("images_per_s"), "supcon": ce.get("images_per_s"),
                     "rrl": (train.get("rrl_step_bf16_channels_last") or {}).get("images_per_s")}
    try:
        for name, params, aug in (("ce", {}, augment), ("rrl", {}, {"crop_padding": 2}), ("supcon", {}, augment)):
            p = validate_variant("stage1", {"method": name, "params": params})["params"]
            transform = get_method(name)(p, np.full(size["classes"], 10)).train_transform(aug, px)
            ds = _AugmentedImages(images, labels, transform)
            keys = list(SeededDraws(SequentialSampler(range(n)), seed=0))
            ds[keys[0]]  # warm-up (lazy imports)
            # CPU time of this one thread: what a core of its own gives, whatever else runs
            t0, c0 = time.perf_counter(), time.process_time()
            default_collate([ds[k] for k in keys])
            per_core = n / (time.process_time() - c0)
            row = {"loader_images_per_s_per_core": round(per_core, 1),
                   "loader_images_per_s_wall": round(n / (time.perf_counter() - t0), 1)}
            op = batched(transform)
            if op is not None:
                torch.set_num_threads(threads)
                xb = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev)
                reps = max(1, size["batch"] // n)
                xb = xb.repeat(reps, 1, 1, 1)
                op(xb, 0)
                _sync(dev)
                t0 = time.perf_counter()
                for i in range(size["aug_batches"]):
                    op(xb, i + 1)
                _sync(dev)
                row["batched_device_images_per_s"] = round(size["aug_batches"] * len(xb) / (time.perf_counter() - t0), 1)
                torch.set_num_threads(1)
            rate = gpu_rates.get(name)
            if rate:
                row["training_step_images_per_s"] = rate
                row["cpu_cores_to_feed_the_step"] = round(rate / per_core, 1)
            out[name] = row
    finally:
        torch.set_num_threads(threads)
    return out


def section_extract(size: dict, dev: torch.device) -> dict:
    from lmdlt.features import encode

    _reset_peak(dev)
    cl = dev.type == "cuda"
    prec = "bf16" if dev.type == "cuda" else "fp32"
    net = _network(size, dev, cl)
    images = _images(size["extract_images"], size["px"], seed=2)
    encode(net, images[:size["batch"]], dev, precision=prec, channels_last=cl)
    _sync(dev)
    t0 = time.perf_counter()
    encode(net, images, dev, precision=prec, channels_last=cl)
    _sync(dev)
    return {"precision": prec, "channels_last": cl, "images": len(images),
            "images_per_s": round(len(images) / (time.perf_counter() - t0), 1),
            "peak_memory_mb": round(_peak_mb(dev), 1)}


def section_vfc(size: dict, dev: torch.device) -> dict:
    from torch import nn

    from lmdlt.stage2.vfc import MSTEP_PARAMS, MStep, classifier_optimizer

    _reset_peak(dev)
    r, k, c = size["r"], size["k"], size["c"]
    p = {name: spec["default"] for name, spec in MSTEP_PARAMS.items()}
    p["virtual_per_class"] = r
    rng = np.random.default_rng(0)
    counts = np.maximum((size["n_real"] * 0.3 * 0.8 ** np.arange(k)).astype(int), 5)
    labels = np.repeat(np.arange(k), counts)
    feats = (rng.normal(size=(len(labels), c)) + labels[:, None] * 0.1).astype(np.float32)
    gen = torch.Generator().manual_seed(0)
    ms = MStep(p, k)
    t0 = time.perf_counter()
    ms.estimate(feats, labels, gen)
    t_est = time.perf_counter() - t0
    layer = nn.Linear(c, k).to(dev)
    opt = classifier_optimizer(layer, p)
    t0 = time.perf_counter()
    ms.train(layer, opt, gen)
    _sync(dev)
    t_train = time.perf_counter() - t0
    return {"R": r, "K": k, "C": c, "virtual_features": r * k, "sgd_steps": ms.total_steps(),
            "statistics_seconds": round(t_est, 3), "train_seconds": round(t_train, 3),
            "steps_per_s": round(ms.total_steps() / t_train, 1), "peak_memory_mb": round(_peak_mb(dev), 1)}


def section_icc(size: dict, dev: torch.device) -> dict:
    from lmdlt.config import validate_variant
    from lmdlt.stage2 import get_method

    _reset_peak(dev)
    p = validate_variant("stage2", {"method": "icc", "params": {
        "iterations": 1, "virtual_per_class": size["icc_r"], "e_batch_size": min(352, size["icc_train"])}})["params"]
    k = size["classes"]
    net = _network(size, dev, False)
    images = {"train": (_images(size["icc_train"], size["px"], 3), np.arange(size["icc_train"]) % k),
              "val": (_images(size["icc_val"], size["px"], 4), np.arange(size["icc_val"]) % k)}
    method = get_method("icc")(p, k)
    t0 = time.perf_counter()
    method.fit_encoder(net, images, torch.Generator().manual_seed(0), dev)
    _sync(dev)
    row = method.history[0]
    return {"train_images": size["icc_train"], "R": size["icc_r"], "K": k,
            "seconds": round(time.perf_counter() - t0, 2), "m_seconds": round(row["m_seconds"], 2),
            "e_seconds": round(row["e_seconds"], 2), "peak_memory_mb": round(_peak_mb(dev), 1)}


def environment(dev: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(dev),
           "machine": platform.machine(), "threads": torch.get_num_threads()}
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


SECTIONS = ("train", "data", "extract", "vfc", "icc")


def run(device: str = "auto", tiny: bool = False, sections=SECTIONS) -> dict:
    from lmdlt.runtime import select_device, setup_torch

    setup_torch(0)
    dev = select_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    size = SIZES["tiny" if tiny else "full"]
    report = {"size": "tiny" if tiny else "full", "environment": environment(dev), "sections": {}}
    t_all = time.perf_counter()
    for name in sections:
        t0 = time.perf_counter()
        try:
            if name == "data":
                result = section_data(size, dev, report["sections"].get("train"))
            else:
                result = globals()[f"section_{name}"](size, dev)
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        result["wall_seconds"] = round(time.perf_counter() - t0, 2)
        report["sections"][name] = result
        print(f"{name}: {json.dumps(result)[:400]}", file=sys.stderr, flush=True)
    report["wall_seconds"] = round(time.perf_counter() - t_all, 2)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA if visible), cpu, cuda, cuda:N")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (seconds; for tests and CPUs)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--out", default="gpu_check.json", help="the JSON file written")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    sections = [s for s in a.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    report = run(a.device, a.tiny, sections)
    out = Path(a.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)
    failed = [n for n, r in report["sections"].items() if "error" in r]
    print(f"wrote {out} ({report['wall_seconds']} s){'; failed: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
