"""Figures, from the per-run metric files."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters
import matplotlib.pyplot as plt
import numpy as np

from ..io import atomic_path, read_json


def per_class_recall_figure(rows: list[dict], out_path, title: str = "", out_pdf=None) -> None:
    """Mean per-class test recall per method (over seeds), as a heatmap:
    one row per method, classes ordered head to tail by training count, every cell annotated.
    A heatmap stays readable with dozens of methods, where grouped bars do not."""
    first = read_json(next(iter(rows[0]["files"].values())))
    counts = np.array(first["train_counts"])
    names = first["class_names"]
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    mean = np.empty((len(rows), len(order)))
    for i, spec in enumerate(rows):
        recalls = np.array([read_json(p)["metrics"]["per_class_recall"] for p in spec["files"].values()])
        mean[i] = recalls.mean(0)[order]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(order) + 3.5), 0.32 * len(rows) + 1.8))
    im = ax.imshow(100 * mean, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(order)):
            ax.text(j, i, f"{100 * mean[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if mean[i, j] < 0.6 else "black")
    ax.set_xticks(np.arange(len(order)))
    ax.set_xticklabels([f"{names[c]}\n(n={counts[c]})" for c in order], fontsize=8)
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels([spec["row"] for spec in rows], fontsize=8)
    ax.set_xlabel("class (training images), head to tail")
    n_seeds = len(rows[0]["files"])
    ax.set_title((title + "\n" if title else "") +
                 f"Per-class test recall (%), mean over {n_seeds} seeds", fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("test recall (%)")
    fig.tight_layout()
    save_figure(fig, out_path, out_pdf)


# ------------------------------------------------------------------ the paper's figures
# Every figure is written as PNG and PDF; values come from the per-run metric files (the same
# reader as the tables: paper_tables.metric_values), times from Snakemake benchmark files.

METRIC_LABELS = {"bacc": "BACC", "auc": "AUC", "f1": "F1", "precision": "Precision",
                 "recall": "Recall", "kappa_quadratic": "Kappa (QW)", "kappa": "Kappa",
                 "head_bacc": "head BACC", "medium_bacc": "medium BACC", "tail_bacc": "tail BACC",
                 "ece": "ECE", "accuracy": "Accuracy"}


def save_figure(fig, out_png, out_pdf=None) -> None:
    """Both formats, each written atomically."""
    for path in [p for p in (out_png, out_pdf) if p]:
        suffix = str(path).rsplit(".", 1)[-1]
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, format=suffix, bbox_inches="tight")
    plt.close(fig)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8,
            wrap=True, bbox={"boxstyle": "round", "fc": "lightyellow", "ec": "0.6"})


def benchmark_seconds(path) -> float:
    """Wall-clock seconds of a Snakemake benchmark file (first repeat)."""
    import pandas as pd

    return float(pd.read_csv(path, sep="\t")["s"].iloc[0])


def sweep_points(series: dict, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, mean and sample std over seeds of one metric along a sweep series."""
    from .paper_tables import mean_std, metric_values

    xs, means, stds = [], [], []
    for p in series["points"]:
        m, s = mean_std(list(metric_values(p, metric).values()))
        xs.append(float(p["x"]))
        means.append(m)
        stds.append(s)
    return np.array(xs), np.array(means), np.array(stds)


def sweep_figure(spec: dict, out_png, out_pdf=None) -> None:
    """Figs. 3, 6, 7: metrics (mean ± std over seeds) against a swept setting, one line per
    reference run; Fig. 6 adds the stage-2 compute time from the benchmark files. A sweep with
    fewer than two values in this config is drawn with a note saying so."""
    from .paper_tables import mean_std, metric_values

    metrics = spec["metrics"]
    panels = len(metrics) + (1 if spec.get("time") else 0)
    ncols = min(3, panels)
    nrows = int(np.ceil(panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
    axes = axes.ravel()
    n_values = max((len({p["x"] for p in s["points"]}) for s in spec["series"]), default=0)
    all_x = sorted({float(p["x"]) for s in spec["series"] for p in s["points"]})
    logx = len(all_x) > 1 and all_x[0] > 0 and all_x[-1] / all_x[0] >= 20
    for ax, metric in zip(axes, metrics):
        for s in spec["series"]:
            x, mean, std = sweep_points(s, metric)
            ax.errorbar(x, 100 * mean, yerr=100 * std, marker="o", capsize=3, label=s["label"])
        if spec.get("baseline"):
            b = spec["baseline"]
            m, sd = mean_std(list(metric_values(b, metric).values()))
            ax.axhline(100 * m, ls="--", color="0.4", label=f"{b['row']} (baseline)")
            ax.axhspan(100 * (m - sd), 100 * (m + sd), color="0.85", zorder=0)
        ax.set_xlabel(spec["xlabel"])
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (%)")
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    if spec.get("time"):
        ax = axes[len(metrics)]
        for s in spec["series"]:
            pts = [p for p in s["points"] if p.get("benchmarks")]
            x = [float(p["x"]) for p in pts]
            t = [[benchmark_seconds(f) for f in p["benchmarks"].values()] for p in pts]
            if pts:
                ax.errorbar(x, [np.mean(v) for v in t], yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in t],
                            marker="s", capsize=3, label=s["label"])
        ax.set_xlabel(spec["xlabel"])
        ax.set_ylabel("stage-2 wall time per run (s)")
        ax.set_ylim(bottom=0)
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[panels:]:
        ax.set_visible(False)
    title = spec.get("title") or (f"{spec['figure'].replace('fig', 'Fig. ')}: test metrics vs "
                                  f"{spec['xlabel']} — {spec['experiment']}, mean ± std over seeds")
    if len(all_x) < 4 and not logx:
        for ax in axes[:panels]:
            ax.set_xticks(all_x)
    elif all_x and all(float(x).is_integer() for x in all_x) and not logx:
        from matplotlib.ticker import MaxNLocator

        for ax in axes[:panels]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # settings besides x that differ between a series' points (declared in `vary`): said so
    differ = []
    for s in spec["series"]:
        for key in sorted({k for p in s["points"] for k in (p.get("also") or {})}):
            vals = [json.dumps((p.get("also") or {}).get(key)) for p in s["points"]]
            if len(set(vals)) > 1:
                differ.append(f"{s['label']}: {key} " + ", ".join(
                    f"{p['x']:g}: {v}" for p, v in zip(s["points"], vals)))
    bottom = 0.06
    if differ:  # the note sits under the legend, never behind it
        fig.text(0.01, -0.06 - 0.03 * (len(axes[0].get_legend_handles_labels()[1]) > 4),
                 "Points also differ in " + "; ".join(differ), fontsize=7, ha="left", va="bottom",
                 wrap=True)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(labels) > 4)))
    top = 1.0
    if n_values < 2:
        values = ", ".join(f"{x:g}" for x in all_x) or "none"
        fig.text(0.5, 0.925, f"Sweep not in this config: a single value of {spec['x']} ({values}). Add "
                 f"variants that differ only in {spec['x']}, e.g. with workflow/experiments/overlays/"
                 "lmd-sweeps-digits.yaml.", ha="center", va="center", fontsize=9,
                 bbox={"boxstyle": "round", "fc": "lightyellow", "ec": "0.6"})
        title += " [sweep not in this config]"
        top = 0.9
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, bottom, 1, top))
    save_figure(fig, out_png, out_pdf)


def pick_classes(train_counts, groups: dict[str, list[int]]) -> dict[str, list[int]]:
    """Fig. 4's three classes (the most frequent head class, the middle medium class, the least
    frequent tail class) and Fig. 5's tail classes, by training count."""
    counts = np.asarray(train_counts)

    def by_count(ids):
        return sorted(ids, key=lambda c: (-counts[c], c))

    out = {"hmt": [], "tail": by_count(groups.get("tail", []))}
    for g, pick in (("head", 0), ("medium", None), ("tail", -1)):
        ids = by_count(groups.get(g, []))
        if ids:
            out["hmt"].append(ids[len(ids) // 2] if pick is None else ids[pick])
    return out


def tsne_embed(features: np.ndarray, seed: int, perplexity: float) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(features)
    perp = float(min(perplexity, max(2.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(features.astype(np.float64))


def tsne_figures(spec: dict, group_rule: dict, out: dict) -> None:
    """Figs. 4-5: t-SNE of features for a head, a medium and a tail class (Fig. 4) and for the
    tail classes (Fig. 5), one panel per declared run, at most ``max_per_class`` points per class
    (a fixed-seed subsample). ``out``: {"fig4_png", "fig4_pdf", "fig5_png", "fig5_pdf"}."""
    from ..io import open_h5
    from ..metrics import class_groups

    rng = np.random.default_rng(spec["seed"])
    # runs sharing a features file (feature-only stage-2 methods keep the stage-1 encoder) share
    # a panel: the panel title says which runs it stands for. ICC's panels draw the fine-tuned
    # encoder's features, stored in its predictions file.
    panels: dict[str, list[str]] = {}
    for r in spec["runs"]:
        panels.setdefault(r["features"], []).append(r)
    data = {}
    for path in panels:
        with open_h5(path, "features file") as f:
            names = [str(c) for c in f.attrs["class_names"]]
            counts = np.bincount(f["train/labels"][:], minlength=len(names))
            if f"{spec['split']}/features" not in f:  # ICC predictions written before they kept features
                raise ValueError(f"{path} holds no {spec['split']}/features (written by an older lmdlt): "
                                 "re-run it with `snakemake --forcerun train_stage2_encoder`")
            data[path] = (f[f"{spec['split']}/features"][:], f[f"{spec['split']}/labels"][:])
    groups = class_groups(counts, group_rule)
    picks = pick_classes(counts, groups)
    for key, classes, fig_name in (("hmt", picks["hmt"], "fig4"), ("tail", picks["tail"], "fig5")):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.9), squeeze=False)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for ax, (path, runs) in zip(axes[0], panels.items()):
            feats, labels = data[path]
            idx = []
            for c in classes:
                ids = np.flatnonzero(labels == c)
                if len(ids) > spec["max_per_class"]:
                    ids = np.sort(rng.choice(ids, spec["max_per_class"], replace=False))
                idx.append(ids)
            idx = np.concatenate(idx) if idx else np.array([], dtype=int)
            if len(idx) < 5:
                _note(ax, f"too few {spec['split']} images in these classes ({len(idx)}) for t-SNE")
            else:
                emb = tsne_embed(feats[idx], spec["seed"], spec["perplexity"])
                for i, c in enumerate(classes):
                    sel = labels[idx] == c
                    group = next((g for g, ids in groups.items() if c in ids), "")
                    ax.scatter(emb[sel, 0], emb[sel, 1], s=10, color=cmap(i % cmap.N),
                               label=f"{names[c]} ({group}, n_train={counts[c]})")
            encoder = runs[0]["stage1"]
            what_features = ("fine-tuned " if runs[0].get("encoder_fine_tuned") else "") + f"{encoder} encoder"
            title = "\n".join(r["row"] for r in runs) + f"\n[{what_features} features]"
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("t-SNE 1", fontsize=8)
            ax.set_ylabel("t-SNE 2", fontsize=8)
        handles, labels_ = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels_, loc="lower center", ncol=min(3, len(labels_)), fontsize=8)
        what = "a head, a medium and a tail class" if key == "hmt" else "the tail classes"
        fig.suptitle(f"{'Fig. 4' if key == 'hmt' else 'Fig. 5'}: t-SNE of {spec['split']} features, {what} "
                     f"— {spec['experiment']}, seed {spec['seed']}", fontsize=10)
        n_leg = int(np.ceil(len(classes) / 3))
        fig.tight_layout(rect=(0, 0.06 * n_leg + 0.02, 1, 1))
        save_figure(fig, out[f"{fig_name}_png"], out.get(f"{fig_name}_pdf"))


def class_distribution_figure(spec: dict, out_png, out_pdf=None) -> None:
    """Images per class in each split (train / val / test), one panel per seed, classes ordered
    head to tail by training count; log scale."""
    from ..data.splits import read_manifest

    seeds = list(spec["splits"])
    fig, axes = plt.subplots(len(seeds), 1, figsize=(8, 2.6 * len(seeds) + 0.6), squeeze=False)
    for ax, seed in zip(axes[:, 0], seeds):
        table, meta = read_manifest(spec["splits"][seed])
        names = meta["class_names"]
        k = len(names)
        counts = {s: np.bincount(table.loc[table["split"] == s, "label"], minlength=k)
                  for s in ("train", "val", "test")}
        order = sorted(range(k), key=lambda c: (-counts["train"][c], c))
        x = np.arange(k)
        for i, s in enumerate(("train", "val", "test")):
            ax.bar(x + (i - 1) * 0.27, counts[s][order], 0.27, label=f"{s} ({counts[s].sum()})")
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([names[c] for c in order], rotation=45 if k > 10 else 0, ha="right" if k > 10 else "center",
                           fontsize=8)
        ax.set_ylabel("images (log)")
        tr = counts["train"][counts["train"] > 0]
        ax.set_title(f"seed {seed}: train imbalance {tr.max() / tr.min():.0f} "
                     f"({tr.max()} / {tr.min()})", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("class, head to tail by training count")
    fig.suptitle(f"Class distribution of every split — {spec['experiment']}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png, out_pdf)
