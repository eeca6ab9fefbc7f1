"""One table of every run: ``lmdlt runs [RESULTS_DIR]``.

Every ``metrics.json`` of every experiment under the folder (``<experiment>/seed<N>/stage1/<s1>/``
and ``.../stage2/<s1>/<s2>/``) becomes one row of a pandas table: the run (experiment, seed,
stage-1 and stage-2 variant, ``run`` as ``s1`` or ``s1/s2``, the table's ``row`` label,
``method``: the stage-2 method, or the stage-1 method for a stage-1 row), its test metrics
(and head / medium / tail BACC under the experiment's ``groups``), and the parameters of both
stages flattened into columns (``stage1.lr``, ``stage2.params.lambda_e``).

The parameters are the ones the artefacts were made with: the stage-2 variant's from its
predictions file's provenance; the stage-1 variant's from the experiment's resolved config
(``report/config.yaml``) when its hash is the one the metrics file records, else from the
checkpoint's own record.

``--where column=value`` (also ``!=``, ``<``, ``<=``, ``>``, ``>=``; repeated: all must hold)
filters; a parameter may be named by its last part (``lambda_e``) when that is unambiguous.
The table prints like ``dvc exp show`` (the run, its metrics, the parameters that differ
between the rows shown); ``--csv`` / ``--parquet`` write it for notebooks
(``pandas.read_parquet``).
"""
from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path

import pandas as pd

from .io import atomic_path, read_json, sha256_json

ID_COLUMNS = ["experiment", "run", "seed", "method"]
METRIC_ORDER = ["bacc", "auc", "f1", "precision", "recall", "kappa_quadratic", "kappa", "accuracy",
                "ece", "head_bacc", "medium_bacc", "tail_bacc"]
#: columns never printed by default (they identify or describe, they do not compare)
QUIET_COLUMNS = {"stage1", "stage2", "row", "path", "code_version", "created", "n_images",
                 "stage1.label", "stage2.label", "stage2.stage1", "stage2.inherit"}
_PATTERNS = ("seed*/stage1/*/metrics.json", "seed*/stage2/*/*/metrics.json")


def _experiment_config(root: Path, cache: dict) -> dict | None:
    if root not in cache:
        path = root / "report" / "config.yaml"
        cfg = None
        if path.is_file():
            import yaml

            try:
                cfg = yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                cfg = None
        cache[root] = cfg
    return cache[root]


def _flatten(d, prefix: str) -> dict:
    from .tracking import flatten

    return {f"{prefix}.{k}": v for k, v in flatten(d or {}).items()}


def _stage1_config(root: Path, s1: str, seed: int, recorded_hash, config: dict | None) -> dict:
    variant = (config or {}).get("stage1", {}).get(s1)
    if variant is not None and sha256_json(variant) == recorded_hash:
        return variant
    ckpt = root / f"seed{seed}" / "stage1" / s1 / "model.pt"
    if ckpt.is_file():
        from .models.checkpoint import safe_torch_load

        meta = safe_torch_load(ckpt, "cpu", "stage-1 checkpoint").get("meta", {})
        return meta.get("provenance", {}).get("config") or {}
    return {}


def _stage2_config(predictions: Path) -> dict:
    from .io import h5_read_provenance, open_h5

    if not predictions.is_file():
        return {}
    with open_h5(predictions, "predictions file") as f:
        return h5_read_provenance(f).get("config") or {}


def _record_row(path: Path, base: Path, configs: dict) -> dict:
    parts = path.parts
    if parts[-3] == "stage1":
        root, seed_dir, s1, s2 = path.parents[3], parts[-4], parts[-2], None
    else:
        root, seed_dir, s1, s2 = path.parents[4], parts[-5], parts[-3], parts[-2]
    seed = int(seed_dir[len("seed"):])
    record = read_json(path)
    prov = record.get("provenance", {})
    config = _experiment_config(root, configs)
    stage1_cfg = _stage1_config(root, s1, seed, prov.get("parents", {}).get("stage1_config"), config)
    stage2_cfg = _stage2_config(path.with_name("predictions.h5")) if s2 else {}
    try:
        experiment = str(root.relative_to(base)) if root != base else root.name
    except ValueError:
        experiment = root.name
    row = {"experiment": experiment, "run": s1 if s2 is None else f"{s1}/{s2}", "seed": seed,
           "method": (stage2_cfg or {}).get("method") if s2 else stage1_cfg.get("method"),
           "stage1": s1, "stage2": s2}
    if config is not None and s1 in config.get("stage1", {}) and (s2 is None or s2 in config.get("stage2", {})):
        from .config import row_label

        row["row"] = row_label(config, s1, s2)
    metrics = {k: v for k, v in record.get("metrics", {}).items() if not isinstance(v, list)}
    if config is not None and config.get("groups") and "per_class_recall" in record.get("metrics", {}):
        from .metrics import group_metrics

        try:
            metrics.update(group_metrics(record, config["groups"]))
        except (ValueError, KeyError):
            pass  # a groups rule that does not fit these classes: no group BACCs
    row.update(metrics)
    row["n_images"] = record.get("n_images")
    row["code_version"] = prov.get("code_version")
    row["created"] = prov.get("created")
    row.update(_flatten(stage1_cfg, "stage1"))
    if s2:
        row.update(_flatten(stage2_cfg, "stage2"))
    row["path"] = str(path)
    return row


def _plain(v):
    """Lists and dicts as JSON text: one type per column for Parquet, comparable in --where."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def collect_runs(results_dir="results") -> pd.DataFrame:
    """Every run under ``results_dir`` (a results folder or one experiment's), one row each."""
    base = Path(results_dir)
    if not base.is_dir():
        raise FileNotFoundError(f"results folder {str(base)!r} not found")
    files = sorted({p for pattern in _PATTERNS for p in base.glob(f"**/{pattern}")})
    configs: dict = {}
    rows = [_record_row(p, base, configs) for p in files]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=ID_COLUMNS)
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(_plain)
            kinds = {("num" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__)
                     for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1:  # e.g. null in one variant, a number in another: text, one type
                df[col] = df[col].map(lambda v: None if v is None else str(v))
    metrics = [m for m in METRIC_ORDER if m in df.columns]
    other_metrics = sorted(c for c in df.columns if c not in metrics and "." not in c
                           and c not in ID_COLUMNS and c not in QUIET_COLUMNS)
    params = sorted(c for c in df.columns if "." in c)
    ordered = ID_COLUMNS + metrics + other_metrics + [c for c in ("row", "stage1", "stage2", "n_images",
                                                                  "code_version", "created") if c in df]
    df = df[ordered + params + ["path"]]
    return df.sort_values(["experiment", "run", "seed"], kind="stable").reset_index(drop=True)


_WHERE = re.compile(r"^\s*([^=!<>]+?)\s*(==|=|!=|<=|>=|<|>)\s*(.*?)\s*$")


def _column(df: pd.DataFrame, key: str) -> str:
    if key in df.columns:
        return key
    tail = [c for c in df.columns if c.endswith("." + key)]
    if len(tail) == 1:
        return tail[0]
    if len(tail) > 1:
        raise ValueError(f"--where {key}: several columns end in {key!r} ({', '.join(tail)}); name one")
    close = difflib.get_close_matches(key, list(df.columns), n=5)
    raise ValueError(f"--where {key}: no such column{'; did you mean ' + ', '.join(close) if close else ''}"
                     f" (columns: lmdlt runs --all-columns)")


def _as_number(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def filter_runs(df: pd.DataFrame, where: list[str]) -> pd.DataFrame:
    """The rows where every ``column<op>value`` holds (numbers compared as numbers, anything
    else as text; ``=`` with an empty value matches a missing one)."""
    keep = pd.Series(True, index=df.index)
    for cond in where or []:
        m = _WHERE.match(cond)
        if not m:
            raise ValueError(f"--where {cond!r}: expected COLUMN=VALUE (or !=, <, <=, >, >=)")
        key, op, value = m.groups()
        col = _column(df, key)
        series = df[col]
        number = _as_number(value)
        numeric = pd.to_numeric(series, errors="coerce")
        if op in ("<", "<=", ">", ">="):
            if number is None:
                raise ValueError(f"--where {cond!r}: {op} needs a number")
            hit = {"<": numeric < number, "<=": numeric <= number, ">": numeric > number,
                   ">=": numeric >= number}[op].fillna(False)
        else:
            text = series.map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            hit = text == value
            if number is not None:
                hit = hit | (numeric == number).fillna(False)
            if value.lower() in ("true", "false"):
                hit = hit | (text.str.lower() == value.lower())
            if op == "!=":
                hit = ~hit
        keep &= hit.astype(bool)
    return df[keep]


def shown_columns(df: pd.DataFrame, columns: list[str] | None = None, all_columns: bool = False) -> list[str]:
    """What ``lmdlt runs`` prints: ``columns``, every column, or the run, its metrics and the
    parameters that differ between the rows shown."""
    if all_columns:
        return list(df.columns)
    if columns:
        return [_column(df, c) for c in columns]
    metrics = [c for c in df.columns if c in METRIC_ORDER]
    varying = [c for c in df.columns if "." in c and c not in QUIET_COLUMNS
               and df[c].map(lambda v: json.dumps(v, default=str)).nunique() > 1]
    return ID_COLUMNS + metrics + varying


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def format_table(df: pd.DataFrame, columns: list[str]) -> str:
    """A text table in the manner of ``dvc exp show``: one line per run, the run's columns,
    then its metrics, then its parameters, separated by a rule."""
    groups = [[c for c in columns if c in ID_COLUMNS or c in QUIET_COLUMNS and "." not in c],
              [c for c in columns if "." not in c and c not in ID_COLUMNS and c not in QUIET_COLUMNS],
              [c for c in columns if "." in c]]
    cells = {c: [_cell(v) for v in df[c]] for c in columns}
    width = {c: max([len(c)] + [len(x) for x in cells[c]]) for c in columns}

    def line(values_of):
        parts = []
        for group in groups:
            if group:
                parts.append("  ".join(values_of(c) for c in group))
        return " │ ".join(parts).rstrip()

    head = line(lambda c: c.ljust(width[c]) if c in ID_COLUMNS or c in QUIET_COLUMNS else c.rjust(width[c]))
    rule = "━" * len(head)
    body = [line(lambda c, i=i: cells[c][i].ljust(width[c]) if c in ID_COLUMNS or c in QUIET_COLUMNS
                 else cells[c][i].rjust(width[c])) for i in range(len(df))]
    return "\n".join([rule, head, rule, *body, rule])


def write_table(df: pd.DataFrame, csv=None, parquet=None) -> None:
    """The table as CSV and/or Parquet (pyarrow), each written atomically."""
    if csv:
        with atomic_path(csv) as tmp:
            df.to_csv(tmp, index=False)
    if parquet:
        with atomic_path(parquet) as tmp:
            df.to_parquet(tmp, index=False, engine="pyarrow")


def print_runs(results_dir="results", where=None, columns=None, csv=None, parquet=None,
               all_columns: bool = False) -> pd.DataFrame:
    """``lmdlt runs``: collect, filter, print, write; returns the filtered table."""
    df = collect_runs(results_dir)
    total = len(df)
    if total == 0:
        print(f"no metrics.json under {results_dir} (run snakemake first)")
        return df
    df = filter_runs(df, where or []).reset_index(drop=True)
    shown = shown_columns(df, columns, all_columns)
    if len(df):
        print(format_table(df, shown))
    experiments = df["experiment"].nunique() if len(df) else 0
    print(f"{len(df)} of {total} runs under {results_dir}"
          f"{' where ' + ' and '.join(where) if where else ''} ({experiments} experiment(s))")
    write_table(df, csv, parquet)
    for kind, path in (("CSV", csv), ("Parquet", parquet)):
        if path:
            print(f"wrote {kind} {path} ({len(df)} rows, {len(df.columns)} columns)")
    return df
