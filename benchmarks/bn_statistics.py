"""How far a checkpoint's BatchNorm running statistics are from those of clean training images.

For each checkpoint: the stem BatchNorm's running variance divided by the variance of its
input on the clean (un-augmented) training images, per channel, then the median over channels
(1.0 = the statistics the saved model normalises with are those of the images it will see);
the same for the running mean's offset in units of the clean standard deviation; and the share
of validation images predicted as the largest training class (a collapse to the head class
shows as a share near 1).

    python benchmarks/bn_statistics.py --split results/ham10000-lt/seed0/split.parquet \
        --images results/image_cache/<source>/images_28px.h5 results/.../stage1/*/model.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmdlt.data.image_cache import load_split_images
from lmdlt.models.checkpoint import load_checkpoint


@torch.no_grad()
def stem_bn_ratio(net: nn.Module, images: np.ndarray, batch_size: int = 512) -> tuple[float, float]:
    bn = next(m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    inputs = []
    hook = bn.register_forward_hook(lambda mod, i, o: inputs.append(i[0].double()))
    net.eval()
    for s in range(0, len(images), batch_size):
        net(torch.from_numpy(images[s:s + batch_size]).permute(0, 3, 1, 2))
    hook.remove()
    acts = torch.cat(inputs)
    var = acts.var((0, 2, 3))
    mean = acts.mean((0, 2, 3))
    ratio = (bn.running_var.double() / var).median()
    offset = ((bn.running_mean.double() - mean).abs() / var.sqrt()).median()
    return float(ratio), float(offset)


@torch.no_grad()
def head_share(net: nn.Module, x_val: np.ndarray, head: int) -> float:
    net.eval()
    pred = torch.cat([net(torch.from_numpy(x_val[s:s + 512]).permute(0, 3, 1, 2)).argmax(1)
                      for s in range(0, len(x_val), 512)])
    return float((pred == head).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("checkpoints", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_split_images(args.split, args.images)
    x_tr, y_tr, _ = data["train"]
    x_val, _, _ = data["val"]
    head = int(np.bincount(y_tr).argmax())
    print("| checkpoint | stem BN running var / clean var (median) | mean offset (clean std) | "
          "val predicted as head | selected epoch | val BACC |")
    print("|---|---|---|---|---|---|")
    for path in args.checkpoints:
        net, meta = load_checkpoint(path)
        ratio, offset = stem_bn_ratio(net, x_tr)
        print(f"| {Path(path).parent.name} | {ratio:.2f} | {offset:.2f} | {head_share(net, x_val, head):.3f} | "
              f"{meta['selected_epoch']} | {meta['selected_val_bacc']:.4f} |")


if __name__ == "__main__":
    main()
