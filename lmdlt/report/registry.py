"""Every kind of report output, declared once: the paper's tables, the figures, and how each file
is shown in Snakemake's HTML report.

Everything that needs a table or figure name reads it here:

* the config schema: ``load_schema`` (``lmdlt.config``) fills ``report.tables`` and
  ``report.figures`` with one key per kind (each declared as the ``$defs`` entry of its family in
  ``workflow/schemas/config.schema.yaml``) and ``report.results_page.table``'s names
  (``complete_schema``);
* the resolution of the config's ``report:`` section into runs and files
  (``lmdlt.report.spec``) and the workflow's targets (``lmdlt.report.targets``);
* the report rules (``workflow/rules/tables.smk``, ``figures.smk``): wildcards, the ``report()``
  caption, category and labels of every file (``ENTRIES``);
* the renderers: ``render_table`` runs a table kind's ``renderer``.

Adding a table is one ``TABLES`` entry and, when the shared renderer
(``lmdlt.report.paper_tables.write_paper_table``: the declared rows' metric files aggregated to
CSV, Markdown and LaTeX) does not fit, its renderer function; a sweep figure is one ``FIGURES``
entry (docs/report.md, "Adding a table or a figure"). ``tests/test_report_registry.py``
registers a toy table and sees the workflow make it.

Pure Python (no numpy, pandas or torch): the workflow's parse imports it.
"""
from __future__ import annotations

import copy
import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class ReportEntry:
    """How a file appears in ``snakemake --report``: its caption (a file of ``workflow/report/``,
    a Jinja template), its category and its labels (``{name}`` is a rule's wildcard, or filled by
    ``report_args``)."""

    caption: str
    category: str
    labels: dict[str, str]


# The viewer shows HTML in place and offers other files as downloads: a table is one entry per
# format, told apart by the "format" label.
FORMATS = {"md": "Markdown", "csv": "CSV", "tex": "LaTeX", "html": "HTML"}

ENTRIES: dict[str, ReportEntry] = {
    "results_table": ReportEntry("results_table.rst", "Tables", {"table": "all runs"}),
    "paper_table": ReportEntry("table.rst", "Tables", {"table": "{table}"}),
    "combined_table": ReportEntry("combined.rst", "Tables", {"table": "{table} (combined)"}),
    "per_class_recall": ReportEntry("per_class_recall.rst", "Figures", {"figure": "per-class recall"}),
    "sweep_figure": ReportEntry("sweep_figure.rst", "Figures", {"figure": "{figure}"}),
    "tsne": ReportEntry("tsne.rst", "Figures", {"figure": "{figure}"}),
    "class_distribution": ReportEntry("class_distribution.rst", "Figures",
                                      {"figure": "class distribution"}),
    # one label only: a second label with two values would become a toggle in the viewer
    "provenance": ReportEntry("provenance.rst", "Config and provenance",
                              {"page": "config and provenance"}),
    "config": ReportEntry("provenance.rst", "Config and provenance", {"page": "config (YAML)"}),
}


def report_args(entry: str, fmt: str | None = None, **names: str) -> dict[str, Any]:
    """Keyword arguments of Snakemake's ``report()`` for a file of ``ENTRIES[entry]``: caption
    path relative to ``workflow/rules/``, category, labels with ``names`` filled and the format
    label when ``fmt`` is given (md, csv, tex, html)."""
    e = ENTRIES[entry]
    labels = {}
    for key, value in e.labels.items():
        for name, text in names.items():
            value = value.replace("{" + name + "}", text)
        labels[key] = value
    if fmt is not None:
        labels["format"] = FORMATS[fmt]
    return {"caption": f"../report/{e.caption}", "category": e.category, "labels": labels}


# ---------------------------------------------------------------------------------- tables

def _value_label(values: dict) -> str | None:
    """A sweep row named by its one varied value ("lambda_e = 1e-04"); None (the run's own
    label) when it varies in several settings."""
    if len(values) != 1:
        return None
    (k, v), = values.items()
    if isinstance(v, float) and v != 0 and abs(v) < 0.1:
        return f"{k} = {v:.0e}"
    return f"{k} = {v:g}" if isinstance(v, (int, float)) else f"{k} = {v}"


_SAMPLER_NAMES = {"instance": "uniform", "class_balanced": "class-balanced"}


def _sampling_label(values: dict) -> str:
    """Table 5's row names: the E- and M-step samplers as the paper calls them."""
    e, m = values["e_sampler"], values["m_sampler"]
    return f"E {_SAMPLER_NAMES.get(e, e)}, M {_SAMPLER_NAMES.get(m, m)}"


def _largest_lambda_e_first(values: dict | None) -> float:
    return -float((values or {}).get("lambda_e", math.inf))


@dataclass(frozen=True)
class TableKind:
    """A table of the paper (or of this project), made where ``report.tables.<name>`` declares it.

    ``metrics``: its columns (metric keys of ``metrics.json``); ``vary``: the settings its sweep
    rows differ in (``report.tables.<name>.reference`` + ``vary``); ``paper``: the dataset
    (``report.paper``) whose published numbers it sits beside (``lmdlt/report/paper_numbers.py``);
    ``columns_by_ratio``: one column group per experiment, labelled by its imbalance ratio
    (Table 3 across r = 100 / 300 / 500); ``grid``: every combination of ``vary`` the table lists,
    those not run marked "not run", in this order (Table 5); ``row_label``: a sweep row's label
    from its varied values; ``order``: a sweep's row order (a sort key of a row's varied
    values, None for a listed row); ``renderer``: ``"module:function"`` called as
    ``f(spec, out_csv, out_md, out_tex)``.
    """

    title: str
    metrics: tuple[str, ...]
    vary: tuple[str, ...] = ()
    paper: str | None = None
    columns_by_ratio: bool = False
    grid: tuple[tuple, ...] = ()
    row_label: Callable[[dict], str | None] = _value_label
    order: Callable[[dict | None], Any] | None = None
    renderer: str = "lmdlt.report.paper_tables:write_paper_table"
    entry: str = "paper_table"

    def paper_key(self, values: dict) -> Any:
        """The paper's row of a sweep row (its varied value, or the list of them), None when the
        kind is no sweep of the paper."""
        if not self.vary or not set(self.vary) <= set(values):
            return None
        return values[self.vary[0]] if len(self.vary) == 1 else [values[v] for v in self.vary]


_T1_COLUMNS = ("auc", "f1", "kappa_quadratic", "precision", "recall")
_BACC_BY_GROUP = ("head_bacc", "medium_bacc", "tail_bacc", "bacc")

TABLES: dict[str, TableKind] = {
    "table1": TableKind("Table 1: comparisons (AUC, F1, Kappa, Precision, Recall)", _T1_COLUMNS,
                        paper="hyper_kvasir"),
    "table2": TableKind("Table 2: comparisons (BACC of head / medium / tail / all classes)",
                        _BACC_BY_GROUP, paper="isic_archive_lt"),
    "table3": TableKind("Table 3: comparisons across imbalance ratios (AUC, BACC)", ("auc", "bacc"),
                        paper="isic2019_lt", columns_by_ratio=True),
    "table4": TableKind("Table 4: loss weight lambda_e of the E-step (FDC)",
                        ("auc", "bacc", "f1", "kappa_quadratic", "precision"), vary=("lambda_e",),
                        paper="hyper_kvasir", order=_largest_lambda_e_first),
    "table5": TableKind("Table 5: class-balanced vs uniform sampling in the E- and M-step",
                        _BACC_BY_GROUP, vary=("e_sampler", "m_sampler"), paper="isic_archive_lt",
                        grid=(("instance", "instance"), ("class_balanced", "instance"),
                              ("class_balanced", "class_balanced"), ("instance", "class_balanced")),
                        row_label=_sampling_label),
}


def table_kind(name: str) -> TableKind:
    """``TABLES[name]``; a ConfigError-like ValueError naming the known kinds otherwise."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r} (known: {', '.join(TABLES)})")
    return TABLES[name]


def render_table(spec: dict, out_csv, out_md, out_tex):
    """Run the renderer of the spec's table kind (``lmdlt report-paper-table``)."""
    module, _, function = table_kind(spec["table"]).renderer.partition(":")
    return getattr(importlib.import_module(module), function)(spec, out_csv, out_md, out_tex)


# --------------------------------------------------------------------------------- figures

@dataclass(frozen=True)
class FigureKind:
    """A figure, drawn where ``report.figures.<name>`` declares it.

    ``family`` picks the declaration's schema (``$defs`` ``<family>_figure`` of the config
    schema), how ``lmdlt.report.spec`` resolves it, the rule that draws it
    (``workflow/rules/figures.smk``) and its renderer (``lmdlt/report/figures.py``): ``sweep``
    (metrics against the swept setting ``x`` of the runs equal to a reference run), ``tsne``
    (the t-SNE of the runs' features: Figs. 4 and 5), ``class_distribution``. ``files``: the
    figures it writes (default its name), each as PNG and PDF; ``caption``: the sentence under a
    sweep figure in the report; ``time``: a sweep figure that also plots the stage-2 wall time.
    """

    family: str
    files: tuple[str, ...] = ()
    caption: str = ""
    x: str | None = None
    xlabel: str = ""
    metrics: tuple[str, ...] = ()
    time: bool = False

    @property
    def entry(self) -> str:
        return {"sweep": "sweep_figure"}.get(self.family, self.family)


FAMILIES = ("sweep", "tsne", "class_distribution")
_PRECISION_SET = ("auc", "bacc", "f1", "kappa_quadratic", "precision")

FIGURES: dict[str, FigureKind] = {
    "fig3": FigureKind(
        "sweep", x="virtual_per_class", xlabel="R (virtual features per class)",
        metrics=("head_bacc", "medium_bacc", "tail_bacc"),
        caption="Fig. 3: head / medium / tail balanced accuracy against R, the number of virtual "
                "features per class (VFC), with the declared baseline as a dashed line (band: ± std)."),
    "fig6": FigureKind(
        "sweep", x="iterations", xlabel="J (ICC iterations)", metrics=_PRECISION_SET, time=True,
        caption="Fig. 6: test metrics against J, the number of ICC iterations (last iteration "
                "kept), and the stage-2 wall time per run from the Snakemake benchmark files."),
    "fig7": FigureKind(
        "sweep", x="lambda_1", xlabel="lambda_1 (RRL consistency weight)", metrics=_PRECISION_SET,
        caption="Fig. 7: test metrics against lambda_1, the weight of RRL's consistency terms "
                "(stage 1), with ICC as stage 2."),
    "tsne": FigureKind("tsne", files=("fig4", "fig5")),
    "class_distribution": FigureKind("class_distribution"),
}


def figure_files(name: str) -> tuple[str, ...]:
    """The figures (file stems) kind ``name`` writes."""
    return FIGURES[name].files or (name,)


def figure_caption(name: str) -> str:
    """The sentence under a sweep figure in the report (``workflow/report/sweep_figure.rst``)."""
    return FIGURES[name].caption


def figure_names(family: str) -> list[str]:
    """The figure kinds of one family, in declaration order."""
    return [n for n, k in FIGURES.items() if k.family == family]


# ---------------------------------------------------------------------------------- schema

def complete_schema(schema: dict) -> dict:
    """Fill the config schema's report keys from the registry, in place: one
    ``report.tables.<kind>`` per table kind (``$defs.table``), one ``report.figures.<kind>`` per
    figure kind (``$defs.<family>_figure``), ``report.results_page.table``'s names. A schema
    without a ``report`` section is returned as it is."""
    report = schema.get("properties", {}).get("report", {}).get("properties")
    if report is None:
        return schema
    defs = schema.get("$defs", {})
    report["tables"]["properties"] = {name: copy.deepcopy(defs["table"]) for name in TABLES}
    report["figures"]["properties"] = {name: copy.deepcopy(defs[f"{kind.family}_figure"])
                                       for name, kind in FIGURES.items()}
    page = report["results_page"]["properties"]["table"]
    page["enum"] = list(TABLES)
    return schema


def paper_datasets() -> list[str]:
    """The datasets the paper's tables were published on (``report.paper``'s values)."""
    return sorted({k.paper for k in TABLES.values() if k.paper})
