"""What the report draws, resolved from the config's ``report:`` section into concrete runs.

A *run* is a (stage-1, stage-2) pair named ``"s1"`` (the stage-1 classifier alone) or
``"s1/s2"``. Tables and figures are declared in ``report.tables`` / ``report.figures``;
nothing undeclared is produced. Two ways to name the rows of a table or the points of a sweep:

* ``rows``: an explicit list of ``{run, label?, paper?}`` (``paper``: the paper's row name, for
  the side-by-side columns);
* ``reference`` + ``vary``: every run of the config whose stage-1 and stage-2 settings equal
  the reference run's except the ``vary`` parameters (labels ignored). An overlay that adds
  variants therefore adds rows and sweep points without touching the report declaration.

Everything here is pure (config in, JSON-able specs out) so that the Snakemake rules stay thin
and the resolution is unit-tested.
"""
from __future__ import annotations

import copy
from typing import Any

from ..config import ConfigError, pairs, row_label
from .registry import FIGURES, TABLES

def parse_run(config: dict, run: str, where: str) -> tuple[str, str | None]:
    """``"s1"`` or ``"s1/s2"`` -> (s1, s2), checked against the config's evaluated pairs."""
    s1, _, s2 = run.partition("/")
    pair = (s1, s2 or None)
    if pair not in pairs(config):
        known = ", ".join(a if b is None else f"{a}/{b}" for a, b in pairs(config))
        raise ConfigError(f"{where}: no evaluated run {run!r} in this config (runs: {known})")
    return pair


def run_name(s1: str, s2: str | None) -> str:
    return s1 if s2 is None else f"{s1}/{s2}"


def _strip(variant: dict, vary: list[str]) -> dict:
    v = copy.deepcopy(variant)
    # not settings: the label, the encoders it runs on, and `inherit` (its params are resolved)
    for key in ("label", "stage1", "inherit"):
        v.pop(key, None)
    for key in vary:
        v.pop(key, None)
        (v.get("params") or {}).pop(key, None)
    return v


def param_value(config: dict, s1: str, s2: str | None, name: str):
    """A setting of a run: the stage-2 variant's params first, then the stage-1 variant's
    params, then the variants' top-level keys (epochs, lr...). KeyError when none has it."""
    places = []
    if s2 is not None:
        places += [config["stage2"][s2].get("params", {}), config["stage2"][s2]]
    places += [config["stage1"][s1].get("params", {}), config["stage1"][s1]]
    for place in places:
        if name in place:
            return place[name]
    from ..errors import NotFoundError

    raise NotFoundError(f"run {run_name(s1, s2)!r} has no setting {name!r}")


def sweep_runs(config: dict, reference: str, vary: list[str], where: str) -> list[tuple[str, str | None]]:
    """Runs equal to ``reference`` except (possibly) in the ``vary`` settings, the reference
    included, in config order."""
    r1, r2 = parse_run(config, reference, where)
    ref1 = _strip(config["stage1"][r1], vary)
    ref2 = None if r2 is None else _strip(config["stage2"][r2], vary)
    out = []
    for s1, s2 in pairs(config):
        if (s2 is None) != (r2 is None):
            continue
        if _strip(config["stage1"][s1], vary) != ref1:
            continue
        if s2 is not None and _strip(config["stage2"][s2], vary) != ref2:
            continue
        out.append((s1, s2))
    return out


def _files(paths: dict, s1: str, s2: str | None, seeds: list[int]) -> dict:
    """Per-seed metric and prediction files of a run; ``paths`` holds format strings with
    {seed}, {s1}, {s2} (stage1_metrics, stage2_metrics, features, predictions)."""
    if s2 is None:
        m, p = paths["stage1_metrics"], paths["features"]
    else:
        m, p = paths["stage2_metrics"], paths["predictions"]
    return {"files": {str(s): m.format(seed=s, s1=s1, s2=s2) for s in seeds},
            "predictions": {str(s): p.format(seed=s, s1=s1, s2=s2) for s in seeds}}


def row_checks(config: dict, s1: str, s2: str | None) -> dict:
    """What a report row's metric files are checked against and aggregated with: the head /
    medium / tail rule (``groups``) and the config hashes of its stage-1 and stage-2 variants
    (hashed as their producers' provenance records them: the validated variant configs)."""
    from ..io import sha256_json

    return {"group_rule": config["groups"],
            "config_hashes": {"stage1": sha256_json(config["stage1"][s1]),
                              **({"stage2": sha256_json(config["stage2"][s2])} if s2 else {})}}


def _row(config, s1, s2, paths, label=None, **extra) -> dict:
    return {"row": label or row_label(config, s1, s2), "run": run_name(s1, s2), "stage1": s1,
            "stage2": s2, **_files(paths, s1, s2, config["seeds"]), **row_checks(config, s1, s2),
            **extra}


def results_rows(config: dict, paths: dict) -> list[dict]:
    """The results table's rows, one per evaluated run: its label, variants, per-seed metric
    files and ``row_checks`` (``lmdlt report-table``, the per-class recall figure, the
    provenance page)."""
    out = []
    for s1, s2 in pairs(config):
        metrics = paths["stage1_metrics"] if s2 is None else paths["stage2_metrics"]
        out.append({"row": row_label(config, s1, s2), "stage1": s1, "stage2": s2,
                    "files": {str(seed): metrics.format(seed=seed, s1=s1, s2=s2)
                              for seed in config["seeds"]},
                    **row_checks(config, s1, s2)})
    return out


def table_specs(config: dict, paths: dict) -> dict[str, dict]:
    """{table name: spec} for every declared table: rows with their files, metrics, title,
    the paper dataset when it matches, the LMD run for the paired comparisons."""
    rep = config.get("report", {})
    out = {}
    for name, decl in (rep.get("tables") or {}).items():
        if name not in TABLES:
            raise ConfigError(f"report.tables.{name}: unknown table (known: {', '.join(TABLES)})")
        kind = TABLES[name]
        where = f"report.tables.{name}"
        rows = []
        for i, r in enumerate(decl.get("rows") or []):
            s1, s2 = parse_run(config, r["run"], f"{where}.rows[{i}]")
            rows.append(_row(config, s1, s2, paths, r.get("label"), paper=r.get("paper")))
        if decl.get("reference"):
            vary = list(decl.get("vary") or kind.vary)
            if not vary:
                raise ConfigError(f"{where}.vary: name the settings the rows differ in")
            for s1, s2 in sweep_runs(config, decl["reference"], vary, f"{where}.reference"):
                values = {v: param_value(config, s1, s2, v) for v in vary}
                if any(r["run"] == run_name(s1, s2) for r in rows):
                    continue
                label = kind.row_label(values) or row_label(config, s1, s2)
                rows.append(_row(config, s1, s2, paths, label, values=values,
                                 paper=kind.paper_key(values)))
            rows = sort_sweep_rows(kind, rows)
        if not rows:
            raise ConfigError(f"{where}: no rows (give rows: [...] or reference: s1/s2)")
        lmd = decl.get("lmd", rep.get("lmd"))
        if lmd is not None:
            parse_run(config, lmd, f"{where}.lmd")
        paper = rep.get("paper")
        out[name] = {
            "table": name, "title": decl.get("title") or kind.title,
            "metrics": decl.get("metrics") or list(kind.metrics), "rows": rows,
            "paper": paper if paper is not None and paper == kind.paper else None,
            "imbalance_ratio": config["split"].get("imbalance_ratio"),
            "experiment": config["dataset"]["name"],
            "lmd": lmd if lmd in {r["run"] for r in rows} else None,
            "main_metric": rep.get("main_metric", "bacc"),
            "bootstrap": rep.get("bootstrap", {"resamples": 2000, "confidence": 0.95, "seed": 0}),
            "seeds": list(config["seeds"]),
        }
    return out


def grid_position(kind, values: dict | None) -> int:
    """Where a row with these varied values stands in the kind's ``grid`` (after it when not
    in it, or when the row is a listed one)."""
    point = tuple((values or {}).get(v) for v in kind.vary) if values else None
    return kind.grid.index(point) if point in kind.grid else len(kind.grid)


def sort_sweep_rows(kind, rows: list[dict]) -> list[dict]:
    """A sweep's rows in the kind's order: its ``grid``'s, else its ``order`` key's, else the
    config's."""
    if kind.grid:
        return sorted(rows, key=lambda r: grid_position(kind, r.get("values")))
    if kind.order is not None:
        return sorted(rows, key=lambda r: kind.order(r.get("values")))
    return rows


def _fine_tunes_encoder(config: dict, s2: str | None) -> bool:
    """Whether the stage-2 variant changes the encoder (ICC); its features are then not those of
    the stage-1 features file but those its predictions file stores."""
    if s2 is None:
        return False
    from ..catalog import get_method  # not lmdlt.stage2: the workflow's parse imports no torch

    return bool(get_method("stage2", config["stage2"][s2]["method"]).needs_encoder)


def figure_specs(config: dict, paths: dict) -> dict[str, dict]:
    """{figure name: spec} for every declared figure, resolved by its kind's family
    (``lmdlt.report.registry.FIGURES``)."""
    rep = config.get("report", {})
    out = {}
    for name, decl in (rep.get("figures") or {}).items():
        where = f"report.figures.{name}"
        if name not in FIGURES:
            raise ConfigError(f"{where}: unknown figure (known: {', '.join(FIGURES)})")
        spec = _FAMILY_SPECS[FIGURES[name].family](config, paths, name, decl, where)
        if spec is not None:
            out[name] = spec
    return out


def _sweep_figure_spec(config, paths, name, decl, where) -> dict:
    """Metrics against the swept setting ``x``: one series per reference run, its points the runs
    equal to it except in ``x`` and ``vary``."""
    kind = FIGURES[name]
    x = decl.get("x") or kind.x
    vary = sorted(set(decl.get("vary") or []) | {x})
    series = []
    for ref in decl["references"]:
        points = []
        for s1, s2 in sweep_runs(config, ref, vary, f"{where}.references"):
            try:
                xv = param_value(config, s1, s2, x)
            except KeyError:
                raise ConfigError(f"{where}: run {run_name(s1, s2)!r} has no setting {x!r}") from None
            bench = None
            if s2 is not None:
                bench = {str(s): paths["stage2_benchmark"].format(seed=s, s1=s1, s2=s2)
                         for s in config["seeds"]}
            also = {}
            for v in vary:
                if v != x:
                    try:
                        also[v] = param_value(config, s1, s2, v)
                    except KeyError:
                        also[v] = None
            points.append({**_row(config, s1, s2, paths), "x": xv, "benchmarks": bench,
                           "also": also})
        points.sort(key=lambda p: p["x"])
        r1, r2 = parse_run(config, ref, where)
        # the series is named by its encoder and stage-2 method, not by the reference's
        # own label (which often names its swept value, e.g. "ICC (J 5)")
        label = row_label(config, r1, None)
        if r2 is not None:
            label += f" + {config['stage2'][r2]['method'].upper()}"
        series.append({"reference": ref, "label": label, "points": points})
    baseline = None
    if decl.get("baseline"):
        b1, b2 = parse_run(config, decl["baseline"], f"{where}.baseline")
        baseline = _row(config, b1, b2, paths)
    return {"figure": name, "x": x, "xlabel": kind.xlabel if x == kind.x else x,
            "metrics": decl.get("metrics") or list(kind.metrics), "series": series,
            "baseline": baseline, "time": kind.time,
            "title": decl.get("title") or "", "experiment": config["dataset"]["name"]}


def _tsne_spec(config, paths, name, decl, where) -> dict:
    """The t-SNE of the declared runs' features (ICC: the fine-tuned encoder's)."""
    runs = []
    for i, r in enumerate(decl["runs"]):
        s1, s2 = parse_run(config, r, f"{where}.runs[{i}]")
        seed = decl.get("seed", config["seeds"][0])
        if seed not in config["seeds"]:
            raise ConfigError(f"{where}.seed: {seed} is not one of the seeds {config['seeds']}")
        fine_tuned = _fine_tunes_encoder(config, s2)
        runs.append({"row": row_label(config, s1, s2), "run": run_name(s1, s2),
                     "stage1": s1, "stage2": s2,
                     # ICC: the fine-tuned encoder's features, in its predictions file
                     "features": paths["predictions" if fine_tuned else "features"].format(
                         seed=seed, s1=s1, s2=s2),
                     "encoder_fine_tuned": fine_tuned})
    return {"figure": name, "runs": runs, "split": decl.get("split", "test"),
            "max_per_class": decl.get("max_per_class", 200),
            "perplexity": decl.get("perplexity", 30.0), "seed": decl.get("seed", config["seeds"][0]),
            "experiment": config["dataset"]["name"]}


def _class_distribution_spec(config, paths, name, decl, where) -> dict | None:
    """Images per class of every split, per seed (``false``: not drawn)."""
    if decl is False:
        return None
    return {"figure": name, "splits": {str(s): paths["split"].format(seed=s) for s in config["seeds"]},
            "experiment": config["dataset"]["name"]}


_FAMILY_SPECS = {"sweep": _sweep_figure_spec, "tsne": _tsne_spec,
                 "class_distribution": _class_distribution_spec}
