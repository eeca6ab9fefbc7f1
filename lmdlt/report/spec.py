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

# The paper's tables: their columns (metric keys of metrics.json) and, for sweeps, the varied
# parameters. Table 3's column group is the experiment's imbalance ratio.
TABLE_KINDS: dict[str, dict[str, Any]] = {
    "table1": {"metrics": ["auc", "f1", "kappa_quadratic", "precision", "recall"],
               "title": "Table 1: comparisons (AUC, F1, Kappa, Precision, Recall)"},
    "table2": {"metrics": ["head_bacc", "medium_bacc", "tail_bacc", "bacc"],
               "title": "Table 2: comparisons (BACC of head / medium / tail / all classes)"},
    "table3": {"metrics": ["auc", "bacc"],
               "title": "Table 3: comparisons across imbalance ratios (AUC, BACC)"},
    "table4": {"metrics": ["auc", "bacc", "f1", "kappa_quadratic", "precision"],
               "vary": ["lambda_e"], "title": "Table 4: loss weight lambda_e of the E-step (FDC)"},
    "table5": {"metrics": ["head_bacc", "medium_bacc", "tail_bacc", "bacc"],
               "vary": ["e_sampler", "m_sampler"],
               "title": "Table 5: class-balanced vs uniform sampling in the E- and M-step"},
}
FIGURE_KINDS = {
    "fig3": {"x": "virtual_per_class", "xlabel": "R (virtual features per class)",
             "metrics": ["head_bacc", "medium_bacc", "tail_bacc"]},
    "fig6": {"x": "iterations", "xlabel": "J (ICC iterations)",
             "metrics": ["auc", "bacc", "f1", "kappa_quadratic", "precision"]},
    "fig7": {"x": "lambda_1", "xlabel": "lambda_1 (RRL consistency weight)",
             "metrics": ["auc", "bacc", "f1", "kappa_quadratic", "precision"]},
}
TABLE5_ALL = [("instance", "instance"), ("class_balanced", "instance"),
              ("class_balanced", "class_balanced"), ("instance", "class_balanced")]


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
    raise KeyError(f"run {run_name(s1, s2)!r} has no setting {name!r}")


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


def table_specs(config: dict, paths: dict) -> dict[str, dict]:
    """{table name: spec} for every declared table: rows with their files, metrics, title,
    the paper dataset when it matches, the LMD run for the paired comparisons."""
    rep = config.get("report", {})
    out = {}
    for name, decl in (rep.get("tables") or {}).items():
        if name not in TABLE_KINDS:
            raise ConfigError(f"report.tables.{name}: unknown table (known: {', '.join(TABLE_KINDS)})")
        kind = TABLE_KINDS[name]
        where = f"report.tables.{name}"
        rows = []
        for i, r in enumerate(decl.get("rows") or []):
            s1, s2 = parse_run(config, r["run"], f"{where}.rows[{i}]")
            rows.append(_row(config, s1, s2, paths, r.get("label"), paper=r.get("paper")))
        if decl.get("reference"):
            vary = decl.get("vary") or kind.get("vary")
            if not vary:
                raise ConfigError(f"{where}.vary: name the settings the rows differ in")
            for s1, s2 in sweep_runs(config, decl["reference"], vary, f"{where}.reference"):
                values = {v: param_value(config, s1, s2, v) for v in vary}
                if any(r["run"] == run_name(s1, s2) for r in rows):
                    continue
                rows.append(_row(config, s1, s2, paths, _sweep_label(name, values, config, s1, s2),
                                 values=values, paper=_sweep_paper_key(name, values)))
            rows = _sort_sweep(name, rows)
        if not rows:
            raise ConfigError(f"{where}: no rows (give rows: [...] or reference: s1/s2)")
        lmd = decl.get("lmd", rep.get("lmd"))
        if lmd is not None:
            parse_run(config, lmd, f"{where}.lmd")
        paper = rep.get("paper")
        from .paper_numbers import TABLE_DATASET
        out[name] = {
            "table": name, "title": decl.get("title") or kind["title"],
            "metrics": decl.get("metrics") or kind["metrics"], "rows": rows,
            "paper": paper if paper == TABLE_DATASET[name] else None,
            "imbalance_ratio": config["split"].get("imbalance_ratio"),
            "experiment": config["dataset"]["name"],
            "lmd": lmd if lmd in {r["run"] for r in rows} else None,
            "main_metric": rep.get("main_metric", "bacc"),
            "bootstrap": rep.get("bootstrap", {"resamples": 2000, "confidence": 0.95, "seed": 0}),
            "seeds": list(config["seeds"]),
        }
    return out


def _fine_tunes_encoder(config: dict, s2: str | None) -> bool:
    """Whether the stage-2 variant changes the encoder (ICC); its features are then not those of
    the stage-1 features file but those its predictions file stores."""
    if s2 is None:
        return False
    from ..catalog import get_method  # not lmdlt.stage2: the workflow's parse imports no torch

    return bool(get_method("stage2", config["stage2"][s2]["method"]).needs_encoder)


def _sweep_label(table, values, config, s1, s2) -> str:
    if table == "table5":
        names = {"instance": "uniform", "class_balanced": "class-balanced"}
        return (f"E {names.get(values['e_sampler'], values['e_sampler'])}, "
                f"M {names.get(values['m_sampler'], values['m_sampler'])}")
    if len(values) == 1:
        (k, v), = values.items()
        if isinstance(v, float) and v != 0 and abs(v) < 0.1:
            return f"{k} = {v:.0e}"
        return f"{k} = {v:g}" if isinstance(v, (int, float)) else f"{k} = {v}"
    return row_label(config, s1, s2)


def _sweep_paper_key(table, values):
    if table == "table4" and "lambda_e" in values:
        return values["lambda_e"]
    if table == "table5" and {"e_sampler", "m_sampler"} <= set(values):
        return [values["e_sampler"], values["m_sampler"]]
    return None


def _sort_sweep(table, rows):
    if table == "table4":
        return sorted(rows, key=lambda r: -float(r.get("values", {}).get("lambda_e", float("inf"))))
    if table == "table5":
        def key(r):
            v = r.get("values")
            pair = (v["e_sampler"], v["m_sampler"]) if v else None
            return TABLE5_ALL.index(pair) if pair in TABLE5_ALL else len(TABLE5_ALL)
        return sorted(rows, key=key)
    return rows


def figure_specs(config: dict, paths: dict) -> dict[str, dict]:
    """{figure name: spec} for every declared figure (fig3, fig6, fig7, tsne, class_distribution)."""
    rep = config.get("report", {})
    out = {}
    for name, decl in (rep.get("figures") or {}).items():
        where = f"report.figures.{name}"
        if name in FIGURE_KINDS:
            kind = FIGURE_KINDS[name]
            x = decl.get("x") or kind["x"]
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
            out[name] = {"figure": name, "x": x, "xlabel": kind["xlabel"] if x == kind["x"] else x,
                         "metrics": decl.get("metrics") or kind["metrics"], "series": series,
                         "baseline": baseline, "time": name == "fig6",
                         "title": decl.get("title") or "", "experiment": config["dataset"]["name"]}
        elif name == "tsne":
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
            out[name] = {"figure": name, "runs": runs, "split": decl.get("split", "test"),
                         "max_per_class": decl.get("max_per_class", 200),
                         "perplexity": decl.get("perplexity", 30.0), "seed": decl.get("seed", config["seeds"][0]),
                         "experiment": config["dataset"]["name"]}
        elif name == "class_distribution":
            if decl is False:
                continue
            out[name] = {"figure": name, "splits": {str(s): paths["split"].format(seed=s) for s in config["seeds"]},
                         "experiment": config["dataset"]["name"]}
        else:
            raise ConfigError(f"{where}: unknown figure (known: fig3, fig6, fig7, tsne, class_distribution)")
    return out
