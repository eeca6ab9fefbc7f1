"""Feature-extraction throughput: ``lmdlt.features.encode`` versus a plain inference_mode loop.

Same network, same images (a HAM10000 subsample from the decoded-image cache), same batch
size (512). Each case is one full pass over the images, timed with
``torch.utils.benchmark.Timer``; cases interleaved, ``--reps`` repetitions, medians.

Cases on the CPU: the plain loop; ``encode`` at fp32 (the default on the CPU); ``encode`` with
channels-last; ``encode`` with bf16 autocast forced (on CUDA ``auto`` selects bf16 and
channels-last: run the script on a GPU machine to get those rows; without one they are
reported as not measured).

    python benchmarks/extraction.py                  # small ResNet w16 at 28 px (1,000 images) + resnet18 at 64 px (200)
    python benchmarks/extraction.py --n 2000 --n-resnet 500 --reps 5
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ham_subsample, loadavg, machine, markdown, median  # noqa: E402

from lmdlt.data.image_cache import ImageCache  # noqa: E402
from lmdlt.data.transforms import channel_stats  # noqa: E402
from lmdlt.features import encode  # noqa: E402
from lmdlt.models import build_network  # noqa: E402

MODELS = {
    "small_resnet w16, 28 px (ham10000-lt.yaml)": (
        {"arch": "small_resnet", "width": 16, "blocks_per_stage": 1, "stem": "imagenet", "pretrained": None}, 28),
    "resnet18 (imagenet stem), 64 px": ({"arch": "resnet18", "stem": "imagenet", "pretrained": None}, 64),
}


def plain(net, images: np.ndarray, device, batch_size: int = 512, contiguous: bool = False):
    """What one writes without the package: eval, inference_mode, batches, outputs to NumPy.
    ``contiguous``: copy each batch to contiguous NCHW (the permuted NHWC batch is
    channels-last in memory)."""
    net.eval()
    feats, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).to(device)
            if contiguous:
                x = x.contiguous()
            f = net.features(x)
            feats.append(f.cpu())
            logits.append(net.classifier(f).cpu())
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-resnet", type=int, default=200, help="images for the resnet18 case")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", action="append", choices=list(MODELS), default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine()}\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.model or list(MODELS):
            model_cfg, size = MODELS[name]
            n = a.n_resnet if model_cfg["arch"] == "resnet18" else a.n
            d = ham_subsample(Path(tmp) / str(size), a.n, size)
            cache = ImageCache(d["cache"])
            images = cache.load(d["table"]["id"].tolist()[:n])
            mean, std = channel_stats(images)
            net = build_network(model_cfg, 3, 7, mean, std).to(dev).eval()
            net_cl = build_network(model_cfg, 3, 7, mean, std).to(dev).eval()
            net_cl.load_state_dict(net.state_dict())
            cases = [
                ("plain inference_mode loop", lambda: plain(net, images, dev)),
                ("plain loop, batches copied to contiguous NCHW", lambda: plain(net, images, dev, contiguous=True)),
                ("lmdlt encode, fp32", lambda: encode(net, images, dev, 512, "fp32", False)),
                ("lmdlt encode, fp32, channels-last", lambda: encode(net_cl, images, dev, 512, "fp32", True)),
                ("lmdlt encode, bf16 autocast (forced)", lambda: encode(net, images, dev, 512, "bf16", False)),
            ]
            if dev.type == "cuda":
                cases.append(("lmdlt encode, bf16 + channels-last (auto on CUDA)",
                              lambda: encode(net_cl, images, dev, 512, "bf16", True)))
            times = {c: [] for c, _ in cases}
            load0 = loadavg()
            for rep in range(a.reps):
                for c, fn in cases:
                    if rep == 0:
                        fn()  # warm-up of this case (allocator, oneDNN primitives)
                    t = Timer("fn()", globals={"fn": fn}, num_threads=a.threads).timeit(1).median
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    times[c].append(t)
                    print(f"  {c}: {t:.2f} s (load {loadavg()})", flush=True)
            base = median(times[cases[0][0]])
            for c, _ in cases:
                t = median(times[c])
                rows.append([name, c, f"{len(images) / t:,.0f}", f"{t:.3f}", f"{base / t:.2f}",
                             f"{load0} -> {loadavg()}"])
            print(f"{name}: done ({a.reps} reps, load {loadavg()})", flush=True)
    print()
    print(markdown(["model", "path", "images/s", "s per pass", "speed vs plain", "load avg"], rows))
    if dev.type != "cuda":
        print("\nbf16 + channels-last on CUDA (the auto setting there): not measured: no GPU available")


if __name__ == "__main__":
    main()
