"""The results table: one row per (stage-1, stage-2) variant, mean +- std over seeds."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import atomic_path
from .paper_tables import group_rule_text, mean_std, metric_values

METRIC_NAMES = {
    "bacc": "BACC", "accuracy": "Acc", "auc": "AUC", "f1": "F1", "precision": "Precision",
    "recall": "Recall", "kappa_quadratic": "Kappa (QW)", "kappa": "Kappa",
    "head_bacc": "Head", "medium_bacc": "Medium", "tail_bacc": "Tail", "ece": "ECE",
}


def aggregate(rows: list[dict], metrics: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1; 0 for one seed) and seed count per row and metric, through the
    paper tables' one aggregation path (``paper_tables.metric_values``: a missing metric file is
    an error naming the row and seed). ``n_seeds`` is the number of seeds asked for; a metric
    present in fewer of them has ``{m}_n`` < ``n_seeds`` (marked in the Markdown, never a silently
    smaller mean).

    Each row spec: ``{"row": label, "stage1": s1, "stage2": s2 or None, "files": {seed: path}}``.
    """
    records = []
    for spec in rows:
        rec = {"row": spec["row"], "stage1": spec["stage1"], "stage2": spec["stage2"] or ""}
        for m in metrics:
            values = metric_values(spec, m)
            rec[f"{m}_mean"], rec[f"{m}_std"] = mean_std(list(values.values()))
            rec[f"{m}_n"] = len(values)
        rec["n_seeds"] = len(spec["files"])
        records.append(rec)
    return pd.DataFrame.from_records(records)


def cells(table: pd.DataFrame, metrics: list[str]) -> tuple[list[str], list[tuple[str, list[tuple[str, bool, bool]]]], list[str]]:
    """The table's layout, shared by the Markdown and the HTML renderers: the metric columns
    present, per row ``(label, [(text, is_best, fewer_seeds), ...])`` (percentages, mean +- std;
    ``fewer_seeds``: the metric is missing from some seeds' files, marked †) and the † notes."""
    cols = [m for m in metrics if f"{m}_mean" in table.columns]
    # best mean per column: the largest, except for ECE (lower is better)
    best = {m: table[f"{m}_mean"].min() if m == "ece" else table[f"{m}_mean"].max() for m in cols}
    rows, partial = [], []
    for _, r in table.iterrows():
        out = []
        for m in cols:
            mean, std = r[f"{m}_mean"], r[f"{m}_std"]
            if np.isnan(mean):
                out.append(("–", False, False))
                continue
            # one seed has no spread to show: no "± 0.00"
            txt = f"{100 * mean:.2f}" if r[f"{m}_n"] < 2 else f"{100 * mean:.2f} ± {100 * std:.2f}"
            fewer = bool(r[f"{m}_n"] < r["n_seeds"])  # the metric is missing from some seeds' files
            if fewer:
                partial.append(f"{r['row']} {METRIC_NAMES.get(m, m)} {int(r[f'{m}_n'])}/{int(r['n_seeds'])}")
            out.append((txt, bool(np.isclose(mean, best[m])), fewer))
        rows.append((str(r["row"]), out))
    notes = (["† over fewer seeds than asked for (the metric is missing from some metric "
              "files): " + "; ".join(partial) + "."] if partial else [])
    return cols, rows, notes


def to_markdown(table: pd.DataFrame, metrics: list[str], title: str, caption: str) -> str:
    """Percentages, mean +- std; the best mean of each column in bold."""
    cols, rows, notes = cells(table, metrics)
    header = "| Method | " + " | ".join(METRIC_NAMES.get(m, m) for m in cols) + " |"
    lines = [f"# {title}", "", header, "|" + "---|" * (len(cols) + 1)]
    for label, out in rows:
        texts = [(f"**{t}**" if best else t) + (" †" if fewer else "") for t, best, fewer in out]
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    lines += ["", caption] + notes + [""]
    return "\n".join(lines)


def metrics_of(table: pd.DataFrame) -> list[str]:
    """The metric keys of a results CSV, in column order."""
    return [c[:-len("_mean")] for c in table.columns if c.endswith("_mean")]


def write_table(rows: list[dict], metrics: list[str], title: str, group_rule: dict,
                out_md, out_csv) -> pd.DataFrame:
    # head / medium / tail under the table's rule (rows may carry it already: the same rule)
    rows = [{"group_rule": group_rule, **r} for r in rows]
    table = aggregate(rows, metrics)
    seeds = sorted({int(seed) for spec in rows for seed in spec["files"]})
    caption = (f"Test split, in %: mean ± sample standard deviation over seeds {seeds}. "
               f"BACC is balanced accuracy (= macro recall); AUC macro one-vs-rest; Kappa (QW) "
               f"quadratic-weighted Cohen kappa; ECE expected calibration error (15 bins, lower is "
               f"better). {group_rule_text(group_rule)} Best mean in bold.")
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(out_md) as tmp:
        tmp.write_text(to_markdown(table, metrics, title, caption))
    return table
