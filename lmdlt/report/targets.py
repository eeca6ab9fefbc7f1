"""What the report makes for a config, resolved once when the workflow is parsed: the spec of
every table, figure and page, the files each writes, and the workflow's final targets
(``get_final_output()`` in ``workflow/rules/common.smk``; every other job is pulled in by them).

Pure: a validated config and the per-run path templates in, paths and specs out. ``exists`` is
its only look at the disk: a combined table and the results page also read other experiments'
outputs, when they exist.
"""
from __future__ import annotations

import json
import os
from typing import Callable

from ..config import ConfigError
from .registry import figure_files, figure_names
from .spec import figure_specs, results_rows, table_specs

TABLE_FORMATS = ("md", "csv", "tex", "html")
FIGURE_FORMATS = ("png", "pdf")
# what the results page prints from its config, besides the inputs the rule passes
RESULTS_PAGE_META = ("title", "table_title", "command", "machine", "budget", "curve_note",
                     "budget_note")


class ReportTargets:
    """The report of one config. ``paths``: format strings with ``{seed}``, ``{s1}``, ``{s2}``
    for ``stage1_metrics``, ``stage2_metrics``, ``features``, ``predictions``,
    ``stage2_benchmark`` and ``split`` (``lmdlt.report.spec``). A declared table, figure or
    page the config cannot make is a ConfigError naming the key."""

    def __init__(self, config: dict, paths: dict, exists: Callable[[str], bool] = os.path.exists):
        self.config = config
        self.results_dir = config["results_dir"]
        root = f"{self.results_dir}/{config['dataset']['name']}"
        self.tables_dir, self.figures_dir = f"{root}/tables", f"{root}/figures"
        self.combined_dir = f"{self.results_dir}/combined"
        self.rows = results_rows(config, paths)
        self.tables = table_specs(config, paths)
        self.figures = figure_specs(config, paths)
        self.sweep_figures = [f for f in figure_names("sweep") if f in self.figures]
        self.results_table = {ext: f"{root}/tables/results.{ext}" for ext in ("md", "csv", "html")}
        self.per_class_recall = {ext: f"{root}/figures/per_class_recall.{ext}"
                                 for ext in FIGURE_FORMATS}
        self.provenance = {"html": f"{root}/report/provenance.html",
                           "yaml": f"{root}/report/config.yaml"}
        self.combined = self._combined_tables(exists)
        self.results_page = (config.get("report") or {}).get("results_page")
        self.results_page_inputs = self._results_page_inputs(exists) if self.results_page else {}

    def table_file(self, table: str, ext: str) -> str:
        return f"{self.tables_dir}/{table}.{ext}"

    def figure_file(self, figure: str, ext: str) -> str:
        return f"{self.figures_dir}/{figure}.{ext}"

    def combined_file(self, table: str, ext: str) -> str:
        return f"{self.combined_dir}/{table}.{ext}"

    def final_outputs(self) -> list[str]:
        """Every file the report makes: the results table, the per-class recall figure and the
        provenance page always; each declared table (Markdown, CSV, LaTeX, HTML) and figure (PNG,
        PDF); the combined tables whose other experiments exist; the results page."""
        out = [self.results_table["md"], self.results_table["csv"], *self.per_class_recall.values(),
               self.results_table["html"], *self.provenance.values()]
        out += [self.table_file(t, ext) for t in self.tables for ext in TABLE_FORMATS]
        out += [self.figure_file(f, ext) for name in self.figures for f in figure_files(name)
                for ext in FIGURE_FORMATS]
        out += [self.combined_file(t, ext) for t in self.combined for ext in ("md", "tex", "html")]
        if self.results_page:
            out.append(self.results_page["out"])
        return out

    def _combined_tables(self, exists) -> dict[str, dict]:
        """``report.tables.<t>.combine``: this experiment's table beside other experiments' (by
        dataset name) whose CSVs exist; {table: {"csv": [ours, theirs...], "absent": [names]}}
        for the tables where at least one other exists."""
        own = self.config["dataset"]["name"]
        out = {}
        for t, decl in ((self.config.get("report") or {}).get("tables") or {}).items():
            others = {n: f"{self.results_dir}/{n}/tables/{t}.csv"
                      for n in decl.get("combine") or [] if n != own}
            present = [f for f in others.values() if exists(f)]
            if present:
                out[t] = {"csv": [self.table_file(t, "csv")] + present,
                          "absent": [n for n, f in others.items() if f not in present]}
        return out

    def _results_page_inputs(self, exists) -> dict:
        """The results page's inputs: its table's CSV always; the naive-split experiment's same
        table, the learning curve's checkpoints and what each budget ends at (checkpoint, its
        test metrics, its stage 2's) when they exist."""
        page, seeds = self.results_page, self.config["seeds"]
        if page["table"] not in self.tables:
            raise ConfigError(f"report.results_page.table: {page['table']} is not declared in "
                              "report.tables")
        out = {"table": self.table_file(page["table"], "csv")}
        if page.get("naive"):
            naive = f"{self.results_dir}/{page['naive']}/tables/{page['table']}.csv"
            if exists(naive):
                out["naive"] = naive
        if page.get("curve"):
            curve_dir = f"{self.results_dir}/{page['curve']}"
            curve = [f"{curve_dir}/seed{s}/stage1/{page['curve_variant']}/model.pt" for s in seeds]
            out["curve"] = [c for c in curve if exists(c)]
            runs = [(s, v) for v in page.get("curve_budgets") or [] for s in seeds
                    if exists(f"{curve_dir}/seed{s}/stage1/{v}/model.pt")]
            out["budgets"] = [f"{curve_dir}/seed{s}/stage1/{v}/model.pt" for s, v in runs]
            out["budget_metrics"] = [f"{curve_dir}/seed{s}/stage1/{v}/metrics.json" for s, v in runs]
            if page.get("curve_stage2"):
                stage2 = [f"{curve_dir}/seed{s}/stage2/{v}/{page['curve_stage2']}/metrics.json"
                          for s, v in runs]
                out["budget_stage2_metrics"] = [m for m in stage2 if exists(m)]
        return out

    def results_page_meta(self) -> dict:
        return {k: self.results_page[k] for k in RESULTS_PAGE_META}

    # ---- what each report rule reads: its input files and its params (JSON strings of exactly
    # what it depends on: params are compared by value between runs)

    def results_table_params(self) -> dict[str, str]:
        rep = self.config["report"]
        return {"rows": as_json(self.rows), "metrics": as_json(rep["metrics"]),
                "groups": as_json(self.config["groups"]), "title": rep["title"]}

    def per_class_recall_params(self) -> dict[str, str]:
        # per-class recall does not depend on the head/medium/tail rule: a change of it keeps this
        rows = [{k: v for k, v in r.items() if k != "group_rule"} for r in self.rows]
        return {"rows": as_json(rows), "title": self.config["report"]["title"]}

    def provenance_params(self) -> dict[str, str]:
        # the page shows the whole config: it is this job's content, not a setting of one stage
        return {"config": as_json(self.config), "rows": as_json(self.rows)}

    def metric_files(self) -> list[str]:
        """Every run's per-seed metric files (the results table, the per-class recall figure and
        the provenance page read them all)."""
        return [f for row in self.rows for f in row["files"].values()]

    def table_inputs(self, table: str) -> list[str]:
        """A paper table's metric files, and its rows' test predictions when it compares them
        with the LMD row (the paired bootstrap)."""
        spec = self.tables[table]
        files = [f for r in spec["rows"] for f in r["files"].values()]
        if spec["lmd"]:
            files += [f for r in spec["rows"] for f in r["predictions"].values()]
        return files

    def sweep_inputs(self, figure: str) -> list[str]:
        """A sweep figure's metric files (its points and baseline) and, when it plots the stage-2
        time, the points' benchmark files."""
        spec = self.figures[figure]
        rows = [p for s in spec["series"] for p in s["points"]] + (
            [spec["baseline"]] if spec["baseline"] else [])
        files = [f for r in rows for f in r["files"].values()]
        if spec["time"]:
            files += [f for r in rows if r.get("benchmarks") for f in r["benchmarks"].values()]
        return files


def as_json(obj) -> str:
    """A stable JSON string (the rules' params: compared by value between runs)."""
    return json.dumps(obj, sort_keys=True)
