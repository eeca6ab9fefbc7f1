"""Benchmark of one VFC M-step at the paper's size (not a test).

R = 50,000 virtual features per class, K = 23 classes (Hyper-Kvasir), C = 512 (ResNet-18):
1.15 M virtual features, which as one float32 matrix would take 2.4 GB. The M-step here is the
one ICC runs: class statistics of N real features (class-balanced resampling), Cholesky, then
one pass of SGD (batch 352) over the R*K virtual features drawn batch by batch; plus the
implicit variant (ISDA bound, no draws) for comparison. Reports wall time and the peak
resident memory (ru_maxrss) of each part, on CPU, and on CUDA when available.

    python benchmarks/vfc_mstep.py                      # the paper's size, CPU (+ CUDA if any)
    python benchmarks/vfc_mstep.py --r 5000 --threads 2 # smaller
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
from torch import nn

from lmdlt.stage2.vfc import MSTEP_PARAMS, MStep, classifier_optimizer


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(device: str, r: int, k: int, c: int, n_real: int, implicit_steps: int, seed: int) -> dict:
    dev = torch.device(device)
    p = {name: spec["default"] for name, spec in MSTEP_PARAMS.items()}
    p.update(virtual_per_class=r, implicit_steps=implicit_steps)
    rng = np.random.default_rng(seed)
    counts = np.maximum((n_real * 0.3 * 0.8 ** np.arange(k)).astype(int), 5)  # long-tailed
    labels = np.repeat(np.arange(k), counts)
    feats = (rng.normal(size=(len(labels), c)) + labels[:, None] * 0.1).astype(np.float32)
    gen = torch.Generator().manual_seed(seed)
    out = {"device": device, "R": r, "K": k, "C": c, "real_features": int(len(labels)),
           "virtual_features": r * k, "virtual_float32_gb_if_materialised": r * k * c * 4 / 1e9,
           "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = MStep(p, k)
    t0 = time.perf_counter()
    ms.estimate(feats, labels, gen)
    out["estimate_seconds"] = time.perf_counter() - t0
    layer = nn.Linear(c, k).to(dev)
    opt = classifier_optimizer(layer, p)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    res = ms.train(layer, opt, gen)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out["sampled_train_seconds"] = time.perf_counter() - t0
    out["sampled_steps"] = ms.total_steps()
    out["peak_rss_mb_before_train"] = rss0
    out["peak_rss_mb_after_sampled"] = peak_rss_mb()
    out["sampled_loss"] = res["m_loss"]
    ms.p = {**p, "mode": "implicit"}
    layer = nn.Linear(c, k).to(dev)
    opt = classifier_optimizer(layer, p)
    t0 = time.perf_counter()
    ms.train(layer, opt, gen)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["implicit_train_seconds"] = time.perf_counter() - t0
    out["implicit_steps"] = implicit_steps
    out["peak_rss_mb_end"] = peak_rss_mb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--r", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=23)
    ap.add_argument("--c", type=int, default=512)
    ap.add_argument("--n-real", type=int, default=8_500, help="real training features (long-tailed)")
    ap.add_argument("--implicit-steps", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", action="append", default=None, help="cpu, cuda (default: cpu + cuda if any)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = a.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = []
    for d in devices:
        out = run(d, a.r, a.k, a.c, a.n_real, a.implicit_steps, a.seed)
        results.append(out)
        print(json.dumps(out), flush=True)
    print()
    print("| device | part | time (s) | peak RSS (MB) | ratio |")
    print("|---|---|---|---|---|")
    for o in results:
        gb = o["virtual_float32_gb_if_materialised"] * 1e3
        print(f"| {o['device']} | statistics (resample, mean, covariance, Cholesky) | {o['estimate_seconds']:.1f} | | |")
        print(f"| {o['device']} | sampled M-step, {o['virtual_features']:,} virtual features, "
              f"{o['sampled_steps']:,} SGD steps | {o['sampled_train_seconds']:.1f} | "
              f"{o['peak_rss_mb_after_sampled']:.0f} (before: {o['peak_rss_mb_before_train']:.0f}) | "
              f"peak RSS / one materialised float32 matrix ({gb:,.0f} MB): "
              f"{o['peak_rss_mb_after_sampled'] / gb:.2f} |")
        print(f"| {o['device']} | implicit M-step, {o['implicit_steps']} ISDA steps | "
              f"{o['implicit_train_seconds']:.1f} | {o['peak_rss_mb_end']:.0f} | time / sampled: "
              f"{o['implicit_train_seconds'] / o['sampled_train_seconds']:.2f} |")


if __name__ == "__main__":
    main()
