"""Training-epoch data throughput on HAM10000: the HDF5 image cache vs decoding JPEGs every epoch.

Both paths feed the same training loop input: the training split of the HAM10000-LT manifest
(LMD scheme r = 100, lesion-grouped), shuffled, in batches, as uint8 (B, C, H, W) tensors with
the same augmentation (random crop with padding, flips). "cache" reads the decoded images from
the HDF5 cache (built once, its build time reported too); "jpeg" decodes and resizes every JPEG
with PIL in the Dataset's ``__getitem__``, which is what a loader without a cache does every
epoch. No model runs: this is the data side of an epoch only.

    python benchmarks/image_cache_throughput.py --root ../shared/data/ham10000 --size 28 --epochs 2

Prints one line per (mode, epoch), a Markdown table and a JSON summary. ``--limit N`` keeps N
training images; ``--workers`` lists the DataLoader worker counts to compare (0 = in the main
process; ``lmdlt.runtime.loader_options`` picks 0 for cached images on the CPU); cases are
interleaved every epoch and medians reported.

    python benchmarks/image_cache_throughput.py --limit 2000 --epochs 5 --workers 0 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lmdlt.data.image_cache import ImageCache, build_image_cache
from lmdlt.data.sources import get_source
from lmdlt.data.sources._files import load_image
from lmdlt.data.splits import build_split
from lmdlt.io import provenance


def augment(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 (C, H, W): random crop after zero padding, random horizontal and vertical flips."""
    if pad:
        h, w = x.shape[1:]
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        i, j = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
        x = x[:, i:i + h, j:j + w]
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(2)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(1)
    return x


class CachedImages(Dataset):
    """Images read once from the HDF5 cache into memory (what the stage-1 trainer does)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, pad: int) -> None:
        self.x = torch.from_numpy(images).permute(0, 3, 1, 2)
        self.y = torch.from_numpy(labels)
        self.pad, self.gen = pad, torch.Generator().manual_seed(0)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return augment(self.x[i], self.pad, self.gen), self.y[i]


class JpegImages(Dataset):
    """Every image decoded from its JPEG and resized at every access."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: int, pad: int) -> None:
        self.paths, self.y, self.size = paths, torch.from_numpy(labels), size
        self.pad, self.gen = pad, torch.Generator().manual_seed(0)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = torch.from_numpy(load_image(self.paths[i], self.size)).permute(2, 0, 1)
        return augment(x, self.pad, self.gen), self.y[i]


def epoch_rate(ds: Dataset, batch: int, workers: int, seed: int) -> float:
    """Images per second of one epoch, worker start-up included (a fresh loader per epoch)."""
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed))
    n = 0
    t0 = time.perf_counter()
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data/ham10000")
    p.add_argument("--image-dir", default="images_200x150")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, nargs="+", default=[0])
    p.add_argument("--limit", type=int, default=None, help="training images kept (first N)")
    p.add_argument("--pad", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    src = get_source("ham10000", a.root, {"image_dirs": [a.image_dir]})
    index = src.index()
    split = build_split(index, {"protocol": "lmd", "imbalance_ratio": 100, "val_fraction": 0.1,
                                "test_fraction": 0.2, "grouped": True}, 0)
    train = split[split["split"] == "train"]
    if a.limit:
        train = train.sample(n=min(a.limit, len(train)), random_state=0)
    labels = train["label"].to_numpy(np.int64)

    with tempfile.TemporaryDirectory() as tmp:
        cache_path = Path(tmp) / f"images_{a.size}px.h5"
        t0 = time.perf_counter()
        n_cached = build_image_cache(src, a.size, cache_path, provenance("image_cache", {"bench": True}))
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        images = ImageCache(cache_path).load(train["id"].tolist())
        load_s = time.perf_counter() - t0
        size_mb = cache_path.stat().st_size / 2**20

        dirs = src._dirs()
        paths = [src._find(dirs, p) for p in train["path"]]
        load0 = os.getloadavg()
        cases = [(mode, w) for mode in ("cache", "jpeg") for w in a.workers]
        rates = {c: [] for c in cases}
        for e in range(a.epochs):
            for mode, w in cases:
                ds = (CachedImages(images, labels, a.pad) if mode == "cache"
                      else JpegImages(paths, labels, a.size, a.pad))
                r = epoch_rate(ds, a.batch_size, w, e)
                rates[(mode, w)].append(r)
                print(f"epoch {e + 1} {mode:5s} workers {w} {r:9.0f} images/s", flush=True)
        load1 = os.getloadavg()

    med = {c: float(np.median(v)) for c, v in rates.items()}
    base = med[("jpeg", a.workers[0])]
    print(f"\n{len(train)} training images, {a.size} px, batch {a.batch_size}, {a.epochs} epochs per "
          f"case interleaved, load average {'/'.join(f'{v:.1f}' for v in load0)} -> "
          f"{'/'.join(f'{v:.1f}' for v in load1)}\n")
    print("| path | DataLoader workers | images/s (median) | ratio to JPEG decoding, workers "
          f"{a.workers[0]} |\n|---|---|---|---|")
    for (mode, w), v in med.items():
        name = "HDF5 image cache (in memory)" if mode == "cache" else "decode + resize each JPEG (PIL)"
        print(f"| {name} | {w} | {v:,.0f} | {v / base:.2f} |")
    print()
    summary = {
        "machine": f"{platform.node()} {platform.machine()} {torch.get_num_threads()} torch threads, "
                   f"{os.cpu_count()} CPUs",
        "train_images": len(train), "image_size": a.size, "workers": a.workers,
        "cache_build_s": round(build_s, 2), "cache_images": n_cached,
        "cache_build_images_per_s": round(n_cached / build_s, 1), "cache_mb": round(size_mb, 1),
        "cache_load_train_s": round(load_s, 3),
        "epoch_images_per_s": {f"{m} workers {w}": round(v, 1) for (m, w), v in med.items()},
        "speedup": round(med[("cache", a.workers[0])] / base, 2),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
