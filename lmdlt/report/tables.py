"""The results table: one row per (stage-1, stage-2) variant, mean +- std over seeds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path, read_json

METRIC_NAMES = {
    "bacc": "BACC", "accuracy": "Acc", "auc": "AUC", "f1": "F1", "precision": "Precision",
    "recall": "Recall", "kappa_quadratic": "Kappa (QW)", "kappa": "Kappa",
    "head_bacc": "Head", "medium_bacc": "Medium", "tail_bacc": "Tail", "ece": "ECE",
}


def load_runs(rows: list[dict]) -> pd.DataFrame:
    """Long table (row, stage1, stage2, seed, metric, value) from the metric files of ``rows``.

    Each row spec: ``{"row": label, "stage1": s1, "stage2": s2 or None, "files": {seed: path}}``.
    """
    records = []
    for spec in rows:
        for seed, path in spec["files"].items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"row {spec['row']!r}, seed {seed}: metric file {path} is missing")
            m = read_json(path)["metrics"]
            for name, value in m.items():
                if not isinstance(value, list):
                    records.append({"row": spec["row"], "stage1": spec["stage1"],
                                    "stage2": spec["stage2"] or "", "seed": int(seed),
                                    "metric": name, "value": value})
    return pd.DataFrame.from_records(records)


def aggregate(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1; 0 for one seed) and seed count per row and metric."""
    runs = runs[runs["metric"].isin(metrics)]
    order = list(dict.fromkeys(runs["row"]))
    g = runs.groupby(["row", "stage1", "stage2", "metric"], sort=False)["value"]
    agg = g.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                n_seeds="count").reset_index()
    wide = agg.pivot_table(index=["row", "stage1", "stage2"], columns="metric",
                           values=["mean", "std", "n_seeds"], sort=False)
    out = pd.DataFrame(index=wide.index)
    for m in metrics:
        if ("mean", m) in wide.columns:
            out[f"{m}_mean"] = wide[("mean", m)]
            out[f"{m}_std"] = wide[("std", m)]
    out["n_seeds"] = wide["n_seeds"].max(axis=1).astype(int)
    out = out.reset_index()
    out["row"] = pd.Categorical(out["row"], order, ordered=True)
    return out.sort_values("row").reset_index(drop=True).astype({"row": str})


def to_markdown(table: pd.DataFrame, metrics: list[str], title: str, caption: str) -> str:
    """Percentages, mean +- std; the best mean of each column in bold."""
    cols = [m for m in metrics if f"{m}_mean" in table.columns]
    header = "| Method | " + " | ".join(METRIC_NAMES.get(m, m) for m in cols) + " |"
    lines = [f"# {title}", "", header, "|" + "---|" * (len(cols) + 1)]
    # best mean per column: the largest, except for ECE (lower is better)
    best = {m: table[f"{m}_mean"].min() if m == "ece" else table[f"{m}_mean"].max() for m in cols}
    for _, r in table.iterrows():
        cells = []
        for m in cols:
            mean, std = r[f"{m}_mean"], r[f"{m}_std"]
            if np.isnan(mean):
                cells.append("–")
                continue
            txt = f"{100 * mean:.2f} ± {100 * std:.2f}"
            cells.append(f"**{txt}**" if np.isclose(mean, best[m]) else txt)
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    lines += ["", caption, ""]
    return "\n".join(lines)


def group_caption(rule: dict) -> str:
    if rule["rule"] == "shots":
        return (f"Head / medium / tail by Kang et al.'s shot rule: head > {rule.get('many', 100)} "
                f"training images, tail < {rule.get('few', 20)}, medium otherwise.")
    h, m, t = rule["sizes"]
    return (f"Head / medium / tail by training-count rank: the {h} most frequent classes, "
            f"the next {m}, the last {t}.")


def write_table(rows: list[dict], metrics: list[str], title: str, group_rule: dict,
                out_md, out_csv) -> pd.DataFrame:
    runs = load_runs(rows)
    table = aggregate(runs, metrics)
    seeds = sorted(runs["seed"].unique().tolist())
    caption = (f"Test split, in %: mean ± sample standard deviation over seeds {seeds}. "
               f"BACC is balanced accuracy (= macro recall); AUC macro one-vs-rest; Kappa (QW) "
               f"quadratic-weighted Cohen kappa; ECE expected calibration error (15 bins, lower is "
               f"better). {group_caption(group_rule)} Best mean in bold.")
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(out_md) as tmp:
        tmp.write_text(to_markdown(table, metrics, title, caption))
    return table
