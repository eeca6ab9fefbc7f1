"""The paper's Tables 1-5 in its layout: Markdown, CSV and LaTeX (booktabs).

One computation path: ``aggregate_table`` reads the per-run ``metrics.json`` files (nothing
else) and writes the per-experiment CSV — mean, sample std (ddof 1) and seed count per row and
metric, the paper's number and the difference where the experiment is the paper's dataset, and
the paired-bootstrap comparison of the LMD row with every other row on the main metric (from the
per-image test predictions). Markdown and LaTeX are rendered from CSVs only, so Table 3 across
several experiments (r = 100 / 300 / 500) is the same renderer given several CSVs
(``lmdlt report-combine``).

Missing runs are explicit: a missing metric file is an error naming it; a metric that some seeds
lack (an older metric file) is shown with a dagger and its seed count in the notes; a row
without any value shows "–".
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path, read_json
from . import paper_numbers
from .registry import TABLES
from .stats import compare_runs

METRIC_NAMES = {
    "bacc": "BACC", "accuracy": "Acc", "auc": "AUC", "f1": "F1", "precision": "Precision",
    "recall": "Recall", "kappa_quadratic": "Kappa", "kappa": "Kappa (unweighted)",
    "head_bacc": "Head", "medium_bacc": "Medium", "tail_bacc": "Tail", "ece": "ECE",
}
LOWER_IS_BETTER = {"ece"}
EXTRA_METRICS = ["ece"]  # aggregated for the notes (calibration), not table columns


def metric_values(spec_row: dict, metric: str) -> dict[str, float]:
    """{seed: value} of one metric over the row's metric files; a missing file is an error.
    Head / medium / tail BACC come from each file's per-class recall and training counts under
    the row's ``group_rule`` (the config's ``groups``: the pipeline's producers do not fix them,
    so a change of the rule re-runs only the report); each file must also have been made for
    the row's configs when the row carries their hashes (``config_hashes``, ``check_row_provenance``)."""
    from ..metrics import GROUP_METRICS, group_metrics

    out = {}
    for seed, path in spec_row["files"].items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"row {spec_row['row']!r}, seed {seed}: metric file {path} is "
                                    "missing (run the pipeline for it, or drop the seed)")
        record = read_json(path)
        check_row_provenance(spec_row, path, record)
        if metric in GROUP_METRICS and spec_row.get("group_rule") is not None:
            value = group_metrics(record, spec_row["group_rule"])[metric]
        elif metric in GROUP_METRICS and metric not in record["metrics"]:
            raise ValueError(f"row {spec_row['row']!r}: {metric} needs the head/medium/tail rule "
                             f"(the row's group_rule), and {path} records none")
        else:
            value = record["metrics"].get(metric)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[seed] = float(value)
    return out


def check_row_provenance(spec_row: dict, path, record: dict) -> None:
    """The loop closed at the report: a metric file must score an output of the row's own
    stage-1 (and stage-2) variant configs, compared by the config hashes its record carries."""
    want = spec_row.get("config_hashes") or {}
    parents = record.get("provenance", {}).get("parents", {})
    got = {"stage1": parents.get("stage1_config"),
           "stage2": parents.get("scored_config") if parents.get("scored_stage") == "stage2" else None}
    for stage, expected in want.items():
        if expected is not None and got.get(stage) != expected:
            raise ValueError(
                f"row {spec_row['row']!r}: {path} scores an output of another {stage} config "
                f"(config_hash {got.get(stage)}) than the row's (config_hash {expected}); "
                f"delete it and re-run snakemake to rebuild it from the configured variant")


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def group_rule_text(rule: dict | None) -> str:
    if not rule:
        return ""
    if rule.get("rule") == "shots":
        return (f"Head / medium / tail by Kang et al.'s shot rule: head > {rule.get('many', 100)} "
                f"training images, tail < {rule.get('few', 20)}, medium otherwise.")
    if rule.get("rule") == "rank":
        h, m, t = rule["sizes"]
        return (f"Head / medium / tail by training-count rank: the {h} most frequent classes, "
                f"the next {m}, the last {t}.")
    return ""


def aggregate_table(spec: dict) -> pd.DataFrame:
    """The per-experiment table (one row per declared row) from the metric files."""
    labels = [r["row"] for r in spec["rows"]]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"{spec['table']}: rows share a label {dup}; give them distinct labels")
    first = spec["rows"][0] if spec["rows"] else {}
    records = []
    for r in spec["rows"]:
        rec = {"table": spec["table"], "experiment": spec["experiment"],
               "imbalance_ratio": spec.get("imbalance_ratio"), "row": r["row"], "run": r["run"],
               "stage1": r["stage1"], "stage2": r["stage2"] or "",
               "n_seeds_expected": len(r["files"]),
               "paper_row": json.dumps(r.get("paper")) if r.get("paper") is not None else "",
               "is_lmd": r["run"] == spec.get("lmd"),
               "seeds": " ".join(sorted(r["files"], key=int)),
               "group_rule": group_rule_text(first.get("group_rule")),
               "paper": spec.get("paper") or ""}
        for m in list(spec["metrics"]) + [e for e in EXTRA_METRICS if e not in spec["metrics"]]:
            vals = metric_values(r, m)
            rec[f"{m}_mean"], rec[f"{m}_std"] = mean_std(list(vals.values()))
            rec[f"{m}_n"] = len(vals)
            if m in spec["metrics"]:
                pv = (paper_numbers.paper_value(spec["table"], r.get("paper"), m, spec.get("imbalance_ratio"))
                      if spec.get("paper") and r.get("paper") is not None else None)
                rec[f"{m}_paper"] = pv[0] if pv else float("nan")
                rec[f"{m}_paper_std"] = pv[1] if pv and pv[1] is not None else float("nan")
                rec[f"{m}_diff"] = rec[f"{m}_mean"] - pv[0] if pv else float("nan")
        records.append(rec)
    kind = TABLES.get(spec["table"])
    if kind is not None and kind.grid:  # every combination of the grid, those not run marked
        have = {tuple(r["values"][k] for k in kind.vary) for r in spec["rows"] if r.get("values")}
        for point in kind.grid:
            if point in have:
                continue
            values = dict(zip(kind.vary, point))
            key = kind.paper_key(values)
            rec = {**{k: v for k, v in records[0].items() if not k.startswith(tuple(spec["metrics"]))},
                   "row": kind.row_label(values), "run": "", "stage1": "", "stage2": "",
                   "is_lmd": False, "paper_row": json.dumps(key), "n_seeds_expected": 0}
            for metric in list(spec["metrics"]) + EXTRA_METRICS:
                rec[f"{metric}_mean"] = rec[f"{metric}_std"] = float("nan")
                rec[f"{metric}_n"] = 0
                if metric in spec["metrics"]:
                    pv = (paper_numbers.paper_value(spec["table"], key, metric) if spec.get("paper") else None)
                    rec[f"{metric}_paper"] = pv[0] if pv else float("nan")
                    rec[f"{metric}_paper_std"] = pv[1] if pv else float("nan")
                    rec[f"{metric}_diff"] = float("nan")
            records.append(rec)
    table = pd.DataFrame.from_records(records)
    table["main_metric"] = spec.get("main_metric", "bacc")
    for c in ("vs_lmd_diff", "vs_lmd_lo", "vs_lmd_hi", "vs_lmd_p"):
        table[c] = float("nan")
    table["vs_lmd_confidence"] = float("nan")
    table["vs_lmd_resamples"] = 0
    lmd = spec.get("lmd")
    if lmd:
        boot = spec.get("bootstrap") or {}
        ref = next(r for r in spec["rows"] if r["run"] == lmd)
        for i, r in enumerate(spec["rows"]):
            if r["run"] == lmd:
                continue
            res = compare_runs(ref["predictions"], r["predictions"], spec.get("main_metric", "bacc"),
                               boot.get("resamples", 2000), boot.get("confidence", 0.95), boot.get("seed", 0))
            table.loc[i, ["vs_lmd_diff", "vs_lmd_lo", "vs_lmd_hi", "vs_lmd_p", "vs_lmd_confidence"]] = [
                res["diff"], res["lo"], res["hi"], res["p"], res["confidence"]]
            table.loc[i, "vs_lmd_resamples"] = res["resamples"]
    if kind is not None and kind.grid:
        order = [kind.row_label(dict(zip(kind.vary, point))) for point in kind.grid]
        rank = {label: i for i, label in enumerate(order)}
        table = table.iloc[sorted(range(len(table)), key=lambda i: rank.get(table["row"].iloc[i], len(order)))]
        table = table.reset_index(drop=True)
    return table


# ---------------------------------------------------------------- rendering (from CSVs only)

def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _best(table: pd.DataFrame, m: str) -> float:
    col = table[f"{m}_mean"].dropna()
    if col.empty:
        return float("nan")
    return col.min() if m in LOWER_IS_BETTER else col.max()


def cell_texts(table: pd.DataFrame, metrics: list[str]) -> dict[tuple[str, str], tuple[str, bool, bool]]:
    """(row, metric) -> (text, is_best, fewer_seeds)."""
    out = {}
    for m in metrics:
        best = _best(table, m)
        for _, r in table.iterrows():
            mean, std = r.get(f"{m}_mean", float("nan")), r.get(f"{m}_std", float("nan"))
            if pd.isna(mean):
                out[(r["row"], m)] = ("not run" if not str(r["run"] or "") else "–", False, False)
                continue
            fewer = 0 < int(r[f"{m}_n"]) < int(r["n_seeds_expected"])
            text = pct(mean) if int(r[f"{m}_n"]) < 2 else f"{pct(mean)} ± {pct(std)}"  # no "± 0.00" for one seed
            out[(r["row"], m)] = (text, bool(np.isclose(mean, best)), fewer)
    return out


def column_groups(tables: list[pd.DataFrame]) -> list[tuple[str | None, pd.DataFrame]]:
    """Column groups: one per experiment, labelled by its imbalance ratio (or its name); one
    unlabelled group for a single experiment's table, unless its kind has ``columns_by_ratio``
    (Table 3)."""
    kind = TABLES.get(tables[0]["table"].iloc[0])
    if len(tables) == 1 and not (kind is not None and kind.columns_by_ratio):
        return [(None, tables[0])]
    out = []
    for t in sorted(tables, key=lambda t: float(t["imbalance_ratio"].iloc[0] or 0)):
        r = t["imbalance_ratio"].iloc[0]
        out.append((f"r = {float(r):g}" if pd.notna(r) else str(t["experiment"].iloc[0]), t))
    return out


def row_order(tables: list[pd.DataFrame]) -> list[str]:
    return list(dict.fromkeys(row for t in tables for row in t["row"]))


def metrics_of(table: pd.DataFrame) -> list[str]:
    return [c[:-len("_paper")] for c in table.columns if c.endswith("_paper") and not c.endswith("_std")]


def notes(tables: list[pd.DataFrame]) -> list[str]:
    """Caption lines: seeds, groups, missing seeds, paired comparisons, calibration, paper source."""
    lines = []
    t0 = tables[0]
    lines.append(f"Test split, in %: mean ± sample standard deviation over seeds {t0['seeds'].iloc[0]} "
                 "(per-run metric files). Best mean per column in bold.")
    if str(t0["group_rule"].iloc[0] or "") and any(m in metrics_of(t0) for m in ("head_bacc", "tail_bacc")):
        lines.append(str(t0["group_rule"].iloc[0]))
    for label, t in column_groups(tables):
        where = f" ({label})" if label else ""
        absent = t[t["run"].fillna("").astype(str) == ""]["row"].tolist()
        if absent:
            lines.append(f"Not in this config{where} (no run declared or found): {'; '.join(absent)}.")
        for _, r in t.iterrows():
            short = [f"{METRIC_NAMES.get(m, m)} {int(r[f'{m}_n'])}/{int(r['n_seeds_expected'])}"
                     for m in metrics_of(t) + EXTRA_METRICS
                     if f"{m}_n" in r and int(r[f"{m}_n"]) < int(r["n_seeds_expected"])]
            if short:
                lines.append(f"† {r['row']}{where}: fewer seeds than declared for "
                             f"{', '.join(short)} (metric absent from older metric files: re-run evaluation).")
        lmd_rows = t[t["is_lmd"].astype(bool)]
        comp = t[t["vs_lmd_diff"].notna()]
        if len(lmd_rows) and len(comp):
            lmd = f"{lmd_rows['row'].iloc[0]} [{lmd_rows['run'].iloc[0]}]"
            mm = METRIC_NAMES.get(t["main_metric"].iloc[0], t["main_metric"].iloc[0])
            conf = float(comp["vs_lmd_confidence"].iloc[0])
            parts = [f"vs {r['row']} {100 * r['vs_lmd_diff']:+.2f} [{100 * r['vs_lmd_lo']:+.2f}, "
                     f"{100 * r['vs_lmd_hi']:+.2f}], p = {r['vs_lmd_p']:.3g}" for _, r in comp.iterrows()]
            lines.append(f"Paired bootstrap{where}: {mm} of {lmd} minus each row, in percentage points, "
                         f"with a {100 * conf:g}% percentile interval over {int(comp['vs_lmd_resamples'].iloc[0])} "
                         f"resamples of the test images (the same images for both runs; per-seed "
                         f"differences averaged over seeds): " + "; ".join(parts) + ".")
        if "ece_mean" in t and t["ece_mean"].notna().any():
            parts = [f"{r['row']} {pct(r['ece_mean'])} ± {pct(r['ece_std'])}" for _, r in t.iterrows()
                     if pd.notna(r["ece_mean"])]
            lines.append(f"Expected calibration error{where} (top-1, 15 equal-width bins, %, lower is "
                         "better): " + "; ".join(parts) + ".")
    return lines


def has_paper_numbers(tables):
    return any(t[f"{m}_paper"].notna().any() for t in tables for m in metrics_of(t))


def to_markdown(tables: list[pd.DataFrame], title: str, extra_notes: list[str] = ()) -> str:
    groups = column_groups(tables)
    rows = row_order(tables)
    head = ["Method"]
    for label, t in groups:
        head += [f"{METRIC_NAMES.get(m, m)} (%)" + (f" [{label}]" if label else "") for m in metrics_of(t)]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = [(t, cell_texts(t, metrics_of(t))) for _, t in groups]
    for row in rows:
        out = [row]
        for t, c in cells:
            for m in metrics_of(t):
                text, best, fewer = c.get((row, m), ("not run", False, False))
                text = f"**{text}**" if best else text
                out.append(text + (" †" if fewer else ""))
        lines.append("| " + " | ".join(out) + " |")
    lines += [""] + notes(tables) + list(extra_notes)
    if has_paper_numbers(tables):
        lines += ["", f"## Side by side with the paper ({tables[0]['paper'].iloc[0]})", ""]
        ph = ["Method"]
        for label, t in groups:
            for m in metrics_of(t):
                name = METRIC_NAMES.get(m, m) + (f" [{label}]" if label else "")
                ph += [f"{name} ours", f"{name} paper", f"{name} Δ"]
        lines += ["| " + " | ".join(ph) + " |", "|" + "---|" * len(ph)]
        for row in rows:
            out = [row]
            any_paper = False
            for _, t in groups:
                sel = t[t["row"] == row]
                for m in metrics_of(t):
                    if sel.empty or pd.isna(sel[f"{m}_paper"].iloc[0]):
                        out += ["–", "–", "–"]
                        continue
                    any_paper = True
                    r = sel.iloc[0]
                    ours = "–" if pd.isna(r[f"{m}_mean"]) else pct(r[f"{m}_mean"])
                    paper = pct(r[f"{m}_paper"]) + ("" if pd.isna(r[f"{m}_paper_std"]) else f" ± {pct(r[f'{m}_paper_std'])}")
                    diff = "–" if pd.isna(r[f"{m}_diff"]) else f"{100 * r[f'{m}_diff']:+.2f}"
                    out += [ours, paper, diff]
            if any_paper:
                lines.append("| " + " | ".join(out) + " |")
        lines += ["", "Paper: the published numbers (lmdlt/report/paper_numbers.py, with the table they "
                  "come from); Δ = ours − paper, in percentage points. Rows map to the paper's by "
                  "report.tables.<table>.rows[].paper."]
    return "\n".join(lines) + "\n"


_TEX_ESC = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
            "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESC.get(ch, ch) for ch in str(text)).replace("±", r"$\pm$").replace(
        "–", "--").replace("—", "---").replace("†", r"$^\dagger$").replace("Δ", r"$\Delta$").replace("−", "-")


def to_latex(tables: list[pd.DataFrame], title: str, label: str, extra_notes: list[str] = ()) -> str:
    groups = column_groups(tables)
    rows = row_order(tables)
    ncol = 1 + sum(len(metrics_of(t)) for _, t in groups)
    lines = [r"% generated by lmdlt (requires \usepackage{booktabs})", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{tex_escape(title)}}}", rf"\label{{tab:{label}}}", r"\small",
             r"\begin{tabular}{l" + "c" * (ncol - 1) + "}", r"\toprule"]
    if any(lbl for lbl, _ in groups):
        head, rules, col = [""], [], 2
        for lbl, t in groups:
            n = len(metrics_of(t))
            head.append(rf"\multicolumn{{{n}}}{{c}}{{{tex_escape(lbl or '')}}}")
            rules.append(rf"\cmidrule(lr){{{col}-{col + n - 1}}}")
            col += n
        lines += [" & ".join(head) + r" \\", " ".join(rules)]
    names = ["Method"] + [f"{METRIC_NAMES.get(m, m)} (%)" for _, t in groups for m in metrics_of(t)]
    lines += [" & ".join(tex_escape(n) for n in names) + r" \\", r"\midrule"]
    cells = [(t, cell_texts(t, metrics_of(t))) for _, t in groups]
    for row in rows:
        out = [tex_escape(row)]
        for t, c in cells:
            for m in metrics_of(t):
                text, best, fewer = c.get((row, m), ("not run", False, False))
                text = tex_escape(text) + (r"$^\dagger$" if fewer else "")
                out.append(rf"\textbf{{{text}}}" if best else text)
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\par\smallskip\parbox{\linewidth}{\footnotesize " + tex_escape(" ".join(notes(tables) + list(extra_notes))) + "}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def render(csv_paths: list, title: str, out_md, out_tex, label: str,
           absent: list[str] = ()) -> list[pd.DataFrame]:
    """Markdown + LaTeX from one or several per-experiment CSVs of the same table; ``absent``
    names experiments that were asked for but have no CSV yet (said so in the notes)."""
    extra = [f"Not run yet (no table CSV): {', '.join(absent)}."] if absent else []
    tables = [pd.read_csv(p, keep_default_na=True, dtype={"paper_row": str, "seeds": str, "group_rule": str,
                                                          "paper": str, "stage2": str, "run": str})
              .fillna({"paper_row": "", "group_rule": "", "paper": "", "stage2": "", "run": ""}) for p in csv_paths]
    kinds = {t["table"].iloc[0] for t in tables}
    if len(kinds) != 1:
        raise ValueError(f"report-combine: the CSVs hold different tables {sorted(kinds)}")
    with atomic_path(out_md) as tmp:
        tmp.write_text(to_markdown(tables, title, extra))
    with atomic_path(out_tex) as tmp:
        tmp.write_text(to_latex(tables, title, label, extra))
    return tables


def write_paper_table(spec: dict, out_csv, out_md, out_tex) -> pd.DataFrame:
    """Aggregate one declared table to CSV, then render its Markdown and LaTeX from that CSV."""
    table = aggregate_table(spec)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.8g")
    title = f"{spec['title']} — {spec['experiment']}"
    render([out_csv], title, out_md, out_tex, f"{spec['experiment']}-{spec['table']}")
    return table
