"""Figures, from the per-run metric files."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters
import matplotlib.pyplot as plt
import numpy as np

from ..io import atomic_path, read_json


def per_class_recall_figure(rows: list[dict], out_path, title: str = "") -> None:
    """Mean per-class test recall per method, classes ordered head to tail by training count."""
    first = read_json(next(iter(rows[0]["files"].values())))
    counts = np.array(first["train_counts"])
    names = first["class_names"]
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(order) + 3), 4))
    width = 0.8 / len(rows)
    for i, spec in enumerate(rows):
        recalls = np.array([read_json(p)["metrics"]["per_class_recall"]
                            for p in spec["files"].values()])
        mean, std = recalls.mean(0)[order], recalls.std(0)[order]
        ax.bar(np.arange(len(order)) + (i - (len(rows) - 1) / 2) * width, 100 * mean, width,
               yerr=100 * std, label=spec["row"], capsize=2)
    ax.set_xticks(np.arange(len(order)))
    ax.set_xticklabels([f"{names[c]}\n(n={counts[c]})" for c in order], fontsize=8)
    ax.set_ylabel("test recall (%)")
    ax.set_xlabel("class (training images), head to tail")
    ax.set_ylim(0, 105)
    ax.set_title(title or "Per-class recall, mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    suffix = str(out_path).rsplit(".", 1)[-1]
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=120, format=suffix)
    plt.close(fig)
