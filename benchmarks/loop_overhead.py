"""Stage-1 training-loop overhead: lmdlt's trainer versus a minimal plain PyTorch loop.

Same model (small ResNet, width 16, as ham10000-lt.yaml), same data (a HAM10000 subsample,
28 px, from the decoded-image cache), same batches (128, shuffled, padded crop + flips with
lmdlt's transform), same optimiser (SGD momentum, cosine schedule), same per-epoch validation
(predictions on the validation split + balanced accuracy). Two figures:

1. epoch time: ``lmdlt.stage1.trainer.train_stage1`` (the real trainer, CE method; its per-epoch
   ``seconds`` from the checkpoint's history) versus the plain loop written here, repetitions
   interleaved, first epoch of every run dropped as warm-up, medians;
2. step time (``torch.utils.benchmark.Timer``) of one training step on a fixed batch: the plain
   step, then each piece the trainer adds on top of it, to attribute any difference.

    python benchmarks/loop_overhead.py                 # 2,000 images, 3 epochs x 5 paired runs
    python benchmarks/loop_overhead.py --n 4000 --reps 5
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ham_subsample, loadavg, machine, markdown, median  # noqa: E402

from lmdlt.config import validate_variant  # noqa: E402
from lmdlt.data.image_cache import load_split_images  # noqa: E402
from lmdlt.data.transforms import channel_stats, train_transform  # noqa: E402
from lmdlt.models import build_network  # noqa: E402
from lmdlt.stage1 import trainer  # noqa: E402
from lmdlt.stage1.base import get_method  # noqa: E402

CFG = {"method": "ce", "label": "CE",
       "model": {"arch": "small_resnet", "width": 16, "blocks_per_stage": 1, "stem": "imagenet",
                 "pretrained": None},
       "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005, "sampler": "instance",
       "augment": {"crop_padding": 2, "hflip": True, "vflip": True}, "select": "best_val"}


class Images(Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2), torch.from_numpy(y), transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.t(self.x[i]), self.y[i]


def plain_run(data, epochs: int, seed: int) -> list[float]:
    """The minimal loop: DataLoader, forward, CE, backward, SGD, cosine LR, validation."""
    import time

    from sklearn.metrics import balanced_accuracy_score

    torch.manual_seed(seed)
    x_tr, y_tr, _ = data["train"]
    x_val, y_val, _ = data["val"]
    mean, std = channel_stats(x_tr)
    net = build_network(CFG["model"], x_tr.shape[-1], 7, mean, std)
    loader = DataLoader(Images(x_tr, y_tr, train_transform(CFG["augment"], x_tr.shape[1])),
                        batch_size=CFG["batch_size"], shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(net.parameters(), lr=CFG["lr"], momentum=CFG["momentum"],
                          weight_decay=CFG["weight_decay"])
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    xv = torch.from_numpy(x_val).permute(0, 3, 1, 2)
    seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.train()
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.inference_mode():
            pred = torch.cat([net(xv[i:i + 512]) for i in range(0, len(xv), 512)]).argmax(1)
        balanced_accuracy_score(y_val, pred.numpy())
        seconds.append(time.perf_counter() - t0)
    return seconds


def lmdlt_run(d, epochs: int, seed: int, out: Path) -> list[float]:
    cfg = validate_variant("stage1", {**CFG, "epochs": epochs})
    meta = trainer.train_stage1(d["manifest"], d["cache"], cfg, seed, out, threads=1, device="cpu")
    out.unlink()
    return [h["seconds"] for h in meta["history"]]


def step_breakdown(data, min_run_time: float, reps: int) -> list[tuple[str, float]]:
    """Median step time (ms) of the plain step and of the trainer's additions, interleaved."""
    x_tr, y_tr, _ = data["train"]
    mean, std = channel_stats(x_tr)
    net = build_network(CFG["model"], x_tr.shape[-1], 7, mean, std).train()
    ds = Images(x_tr, y_tr, train_transform(CFG["augment"], x_tr.shape[1]))
    x, y = next(iter(DataLoader(ds, batch_size=CFG["batch_size"], shuffle=True)))
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    method = get_method("ce")(validate_variant("stage1", CFG)["params"], np.bincount(y_tr, minlength=7))
    named = list(net.named_parameters())

    def plain():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def with_method():  # the registry's loss: dict of terms, summed
        terms = method.loss(net, x, y, 0)
        loss = sum(v.float() for v in terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        method.after_step(net)
        for v in terms.values():
            float(v.detach())

    def with_guards():  # + the trainer's per-step non-finite check
        terms = method.loss(net, x, y, 0)
        loss = sum(v.float() for v in terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        trainer._check_finite(loss, terms, named, 0, 1, None)  # loss and gradient norm, one sync
        opt.step()
        sched.step()
        method.after_step(net)
        for v in terms.values():
            float(v.detach())

    def deterministic(fn, fill: bool = True):
        """``fill``: torch.utils.deterministic.fill_uninitialized_memory (on by default with
        deterministic algorithms: every new uninitialised tensor is filled with NaN)."""
        import torch.utils.deterministic as det

        def run():
            torch.use_deterministic_algorithms(True, warn_only=True)
            before = det.fill_uninitialized_memory
            det.fill_uninitialized_memory = fill
            try:
                fn()
            finally:
                det.fill_uninitialized_memory = before
                torch.use_deterministic_algorithms(False)
        return run

    cases = [("plain step (forward, CE, backward, SGD)", plain),
             ("+ method registry, LR schedule, after_step, loss read-back", with_method),
             ("+ non-finite guards (loss and gradient norm)", with_guards),
             ("+ use_deterministic_algorithms(True), NaN fill on (torch's default)", deterministic(with_guards)),
             ("+ the same with fill_uninitialized_memory = False (what setup_torch sets)",
              deterministic(with_guards, fill=False))]
    ratios = {name: [] for name, _ in cases}
    times = {name: [] for name, _ in cases}
    for r in range(reps):
        order = cases[r % len(cases):] + cases[:r % len(cases)]  # rotate the order every repetition
        this = {}
        for name, fn in order:
            fn()
            m = Timer("fn()", globals={"fn": fn}, num_threads=1).blocked_autorange(min_run_time=min_run_time)
            this[name] = m.median * 1e3
        for name in this:
            times[name].append(this[name])
            ratios[name].append(this[name] / this[cases[0][0]])
    return [(name, median(times[name]), median(ratios[name]), min(ratios[name]), max(ratios[name]))
            for name, _ in cases]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="HAM10000 images in the subsample")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5, help="paired trainer/plain runs")
    ap.add_argument("--step-reps", type=int, default=12)
    ap.add_argument("--step-time", type=float, default=0.5, help="Timer min_run_time per case (s)")
    ap.add_argument("--skip-epochs", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        d = ham_subsample(Path(tmp), a.n, 28)
        data = load_split_images(d["manifest"], d["cache"])
        print(f"machine: {machine()}")
        print(f"train {len(data['train'][1])} images, val {len(data['val'][1])}, batch 128, 28 px\n")
        load0 = loadavg()
        if not a.skip_epochs:
            lm, pl, ratio = [], [], []
            for r in range(a.reps):
                runs = {}
                for which in (("lmdlt", "plain") if r % 2 == 0 else ("plain", "lmdlt")):  # ABBA
                    if which == "lmdlt":
                        runs[which] = lmdlt_run(d, a.epochs, r, Path(tmp) / "m.pt")[1:]
                        torch.use_deterministic_algorithms(False)
                    else:
                        runs[which] = plain_run(data, a.epochs, r)[1:]
                lm += runs["lmdlt"]
                pl += runs["plain"]
                ratio.append(median(runs["lmdlt"]) / median(runs["plain"]))
                print(f"rep {r + 1}: lmdlt {median(runs['lmdlt']):.3f} s/epoch, plain "
                      f"{median(runs['plain']):.3f} s/epoch, ratio {ratio[-1]:.3f} (load {loadavg()})", flush=True)
            steps = len(data["train"][1]) // 128
            print()
            print(markdown(["loop", "s/epoch (median)", "ms/step incl. data + validation",
                            "ratio to plain (median of paired reps [min, max])", "load avg"], [
                ["plain PyTorch loop", f"{median(pl):.3f}", f"{median(pl) / steps * 1e3:.1f}", "1.00", load0],
                ["lmdlt train_stage1 (CE)", f"{median(lm):.3f}", f"{median(lm) / steps * 1e3:.1f}",
                 f"{median(ratio):.3f} [{min(ratio):.3f}, {max(ratio):.3f}]", loadavg()]]))
            print(f"\n{a.reps} paired runs x {a.epochs - 1} epochs each (first epoch dropped), order "
                  f"alternated, {steps} steps/epoch + validation\n")
        load0 = loadavg()
        rows = step_breakdown(data, a.step_time, a.step_reps)
        print(markdown(["step (fixed batch of 128, Timer)", "ms (median)",
                        "ratio to plain (median of paired reps [min, max])", "load avg"],
                       [[n, f"{t:.2f}", f"{r:.3f} [{lo:.3f}, {hi:.3f}]", f"{load0} -> {loadavg()}"]
                        for n, t, r, lo, hi in rows]))
        print(f"\n{a.step_reps} repetitions, case order rotated, Timer.blocked_autorange(min_run_time={a.step_time})")


if __name__ == "__main__":
    main()
