"""The results page (docs/results.md), written by the pipeline from its table CSVs, so that no
number on it is typed by hand.

Inputs: the experiment's comparison table (a paper-style table CSV with head / medium / tail /
BACC means, standard deviations and the paired bootstrap against the reference row, ``vs_lmd_*``:
reference minus row), optionally the same table of the naive-split experiment, the per-epoch
validation BACC of the learning-curve runs (the stage-1 checkpoints' ``history``) and the
experiment's Snakemake benchmark files (the compute it took). The CSVs it read are copied beside
the page (``<page dir>/results/``) so that a test can re-render the page from the committed
copies and compare every number (tests/test_results_page.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..io import atomic_path

GROUP_COLS = [("head_bacc", "Head"), ("medium_bacc", "Medium"), ("tail_bacc", "Tail"), ("bacc", "BACC")]


def _pct(mean: float, std: float | None = None, n: int | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or n is None or n < 2 or math.isnan(std):
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _interval(r) -> str:
    """Row minus reference (the CSV holds reference minus row), in points, with its interval."""
    if pd.isna(r.get("vs_lmd_diff")):
        return "reference" if bool(r.get("is_lmd")) else "–"
    d, lo, hi = -r["vs_lmd_diff"], -r["vs_lmd_hi"], -r["vs_lmd_lo"]
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _seeds(table: pd.DataFrame) -> str:
    """The seeds a table's rows were averaged over (its ``seeds`` column), e.g. "0, 1, 2"."""
    return ", ".join(sorted({s for x in table["seeds"].astype(str) for s in x.split()}, key=int))


def verdicts(table: pd.DataFrame) -> dict[str, list[str]]:
    """Rows above / below the reference beyond the bootstrap interval, and the rest."""
    out = {"better": [], "worse": [], "within": []}
    for _, r in table.iterrows():
        if pd.isna(r.get("vs_lmd_diff")):
            continue
        lo, hi = -r["vs_lmd_hi"], -r["vs_lmd_lo"]  # row minus reference
        key = "better" if lo > 0 else "worse" if hi < 0 else "within"
        out[key].append(f"{r['row']} ({_interval(r)})")
    return out


def learning_curve(histories: dict[str, list[dict]]) -> pd.DataFrame:
    """{seed: checkpoint history} -> one row per epoch, a val BACC column per seed."""
    frames = [pd.DataFrame(h)[["epoch", "val_bacc"]].rename(columns={"val_bacc": f"seed {s}"})
              .set_index("epoch") for s, h in sorted(histories.items())]
    return pd.concat(frames, axis=1).reset_index() if frames else pd.DataFrame()


def budget_table(checkpoints: list, stage2: str | None = "crt") -> pd.DataFrame:
    """What each learning-curve schedule ends at, one row per stage-1 checkpoint: its epochs, the
    kept epoch's validation BACC, the test BACC of its ``metrics.json`` (beside the checkpoint) and,
    when ``stage2`` is given and was run, the test BACC of that stage 2 on its features
    (``<seed dir>/stage2/<variant>/<stage2>/metrics.json``). Sorted by epochs. Each metrics file
    must score this checkpoint's stage-1 config (its recorded hash), as for every table row."""
    import json

    from ..models.checkpoint import safe_torch_load
    from .paper_tables import check_row_provenance

    def scored_bacc(path: Path, spec: dict) -> float:
        record = json.loads(path.read_text())
        check_row_provenance(spec, path, record)
        return record["metrics"]["bacc"]

    rows = []
    for p in map(Path, checkpoints):
        prov = safe_torch_load(p)["meta"]
        spec = {"row": f"learning curve {p.parent.name}",
                "config_hashes": {"stage1": prov["provenance"]["config_hash"]}}
        r = {"variant": p.parent.name, "seed": prov["provenance"]["seed"],
             "epochs": int(prov["provenance"]["config"]["epochs"]),
             "val_bacc": float(prov["selected_val_bacc"]),
             "test_bacc": scored_bacc(p.parent / "metrics.json", spec)}
        if stage2:
            m2 = p.parents[2] / "stage2" / p.parent.name / stage2 / "metrics.json"
            r[f"test_bacc_{stage2}"] = scored_bacc(m2, spec) if m2.is_file() else float("nan")
        rows.append(r)
    return pd.DataFrame(rows).sort_values(["epochs", "seed"]).reset_index(drop=True)


def compute_used(benchmark_files: list[str]) -> dict:
    """Jobs, summed job wall time and the run's span from Snakemake benchmark TSVs: a file is
    written when its job ends, so the span runs from the earliest (end - s) to the latest end
    (the wall time of the run that made them, when one invocation did). Their CPU column is left
    out: under the job server it measures the client process, not the job (docs/job-server.md)."""
    import os

    rows = [(pd.read_csv(f, sep="\t").iloc[-1], os.path.getmtime(f)) for f in sorted(benchmark_files)]
    if not rows:
        return {"jobs": 0, "wall_h": 0.0, "span_h": 0.0}
    wall = sum(float(r["s"]) for r, _ in rows)
    span = max(end for _, end in rows) - min(end - float(r["s"]) for r, end in rows)
    return {"jobs": len(rows), "wall_h": wall / 3600, "span_h": span / 3600}


def render(table: pd.DataFrame, meta: dict, naive: pd.DataFrame | None = None,
           curve: pd.DataFrame | None = None, compute: dict | None = None,
           budgets: pd.DataFrame | None = None) -> str:
    """The page's Markdown (deterministic: the same inputs give the same bytes)."""
    ref = table.loc[table["is_lmd"].astype(bool), "row"]
    ref = ref.iloc[0] if len(ref) else "the reference row"
    lines = [f"# {meta['title']}", "",
             "<!-- Written by the pipeline (rule results_page, `lmdlt report-results-page`) from "
             "the CSVs in results/; do not edit by hand. -->", "",
             f"**Command:** `{meta['command']}`  ", f"**Machine:** {meta['machine']}  "]
    if compute:
        span = compute.get("span_h")
        span = "" if span is None or pd.isna(span) else f"; {span:.2f} h wall from the first job's start to the last job's end"
        lines.append(f"**Compute:** {int(compute['jobs'])} jobs, {compute['wall_h']:.2f} h of job wall "
                     f"time summed over jobs{span}, from the run's Snakemake benchmark files  ")
    lines += [f"**Budget:** {meta['budget']}", "", "## Reading", ""]
    v = verdicts(table)
    lines.append(f"Against {ref}, with the paired bootstrap's interval (test images resampled, "
                 "seeds averaged; row minus reference, BACC points):")
    lines.append("")
    lines.append(f"- above {ref} beyond the interval: " + ("; ".join(v["better"]) or "none") + ".")
    lines.append(f"- below it beyond the interval: " + ("; ".join(v["worse"]) or "none") + ".")
    lines.append(f"- not distinguishable from it: " + ("; ".join(v["within"]) or "none") + ".")
    inflation = None
    if naive is not None:
        both = table[["row", "bacc_mean"]].merge(naive[["row", "bacc_mean"]], on="row",
                                                 suffixes=("", "_naive"))
        inflation = both.assign(gain=both["bacc_mean_naive"] - both["bacc_mean"])
        g = 100 * inflation["gain"]
        lines.append(f"- the naive (leaking) split changes BACC by {g.mean():+.1f} points on average "
                     f"over {len(g)} rows (from {g.min():+.1f} to {g.max():+.1f}; naive seeds "
                     f"{_seeds(naive)}, lesion-grouped seeds {_seeds(table)}).")
    else:
        lines.append("- the naive split: not run yet (its experiment's table is absent).")
    lines += ["", f"## {meta.get('table_title', 'Results')}", "",
              "| Method | " + " | ".join(f"{n} (%)" for _, n in GROUP_COLS) + f" | vs {ref} (points, 95% CI) |",
              "|---" * (len(GROUP_COLS) + 2) + "|"]
    for _, r in table.iterrows():
        cells = [_pct(r.get(f"{c}_mean"), r.get(f"{c}_std"), r.get(f"{c}_n")) for c, _ in GROUP_COLS]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {_interval(r)} |")
    lines += ["", f"Test split, mean ± sample std over seeds {_seeds(table)}. "
              f"{table['group_rule'].iloc[0] if 'group_rule' in table else ''}".rstrip(), ""]
    if inflation is not None:
        lines += ["## The naive split", "",
                  f"The same rows on the naive (lesion-leaking) split, seeds {_seeds(naive)}, against "
                  f"the lesion-grouped means above (seeds {_seeds(table)}).", "",
                  "| Method | BACC lesion-grouped (%) | BACC naive (%) | naive − grouped (points) |",
                  "|---|---|---|---|"]
        for _, r in inflation.iterrows():
            lines.append(f"| {r['row']} | {100 * r['bacc_mean']:.1f} | {100 * r['bacc_mean_naive']:.1f} "
                         f"| {100 * r['gain']:+.1f} |")
        lines.append("")
    has_curve = curve is not None and len(curve)
    if has_curve or (budgets is not None and len(budgets)):
        lines += ["## The learning curve that fixed the budget", ""]
    if budgets is not None and len(budgets):
        s2 = [c for c in budgets.columns if c.startswith("test_bacc_")]
        lines += [meta.get("budget_note", "What each schedule ends at (the last epoch kept)."), "",
                  "| schedule (epochs) | seed | val BACC (%) | test BACC (%) | "
                  + " | ".join(f"test BACC + {c[len('test_bacc_'):]} (%)" for c in s2) + " |",
                  "|---" * (4 + len(s2)) + "|"]
        for _, r in budgets.iterrows():
            lines.append(f"| {int(r['epochs'])} | {int(r['seed'])} | {_pct(r['val_bacc'])} | "
                         f"{_pct(r['test_bacc'])} | " + " | ".join(_pct(r[c]) for c in s2) + " |")
        lines.append("")
    if has_curve:
        lines += [meta.get("curve_note", "CE's validation BACC per epoch."), "",
                  "| epoch | " + " | ".join(c for c in curve.columns if c != "epoch") + " |",
                  "|---" * len(curve.columns) + "|"]
        for _, r in curve.iterrows():
            lines.append(f"| {int(r['epoch'])} | " + " | ".join(
                _pct(r[c]) for c in curve.columns if c != "epoch") + " |")
        lines.append("")
    return "\n".join(lines)


def write_results_page(table_csv, out, meta: dict, naive_csv=None, curve_checkpoints=None,
                       benchmark_files=None, budget_checkpoints=None, budget_stage2: str | None = "crt") -> str:
    """Render the page to ``out`` and copy the CSVs it was made from to ``<out dir>/results/``
    (``table.csv``, ``naive.csv``, ``curve.csv``, ``budgets.csv``, ``compute.csv``), all
    atomically."""
    table = pd.read_csv(table_csv)
    naive = pd.read_csv(naive_csv) if naive_csv else None
    curve = None
    if curve_checkpoints:
        from ..models.checkpoint import safe_torch_load

        metas = [safe_torch_load(p)["meta"] for p in curve_checkpoints]
        curve = learning_curve({str(m["provenance"]["seed"]): m["history"] for m in metas})
    budgets = budget_table(budget_checkpoints, budget_stage2) if budget_checkpoints else None
    compute = compute_used(benchmark_files) if benchmark_files else None
    data = Path(out).parent / "results"
    data.mkdir(parents=True, exist_ok=True)
    for name, frame in (("table", table), ("naive", naive), ("curve", curve), ("budgets", budgets),
                        ("compute", pd.DataFrame([compute]) if compute else None)):
        if frame is not None:
            with atomic_path(data / f"{name}.csv") as tmp:
                frame.to_csv(tmp, index=False)
    text = render(table, meta, naive, curve, compute, budgets)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    return text


def render_from_copies(page_dir, meta: dict) -> str:
    """The page re-rendered from the CSV copies beside it (what the test compares)."""
    data = Path(page_dir) / "results"

    def read(name):
        p = data / f"{name}.csv"
        return pd.read_csv(p) if p.is_file() else None

    compute = read("compute")
    return render(read("table"), meta, read("naive"), read("curve"),
                  compute.iloc[0].to_dict() if compute is not None else None, read("budgets"))
