# Report: the results table (mean +- std over seeds) and the per-class recall figure,
# aggregated from the per-run metric files only.
#
# In `snakemake --report`, every table is an HTML page rendered from its CSV (`lmdlt report-html
# table`: the viewer shows HTML in place, other files only as downloads), with its Markdown,
# LaTeX and CSV beside it as downloads (labels table + format); figures and tables carry the
# captions of workflow/report/; the run's config and provenance are a page of their own. (A second
# label with exactly two values, each on half of a category's entries, becomes a toggle in the
# viewer, which then finds no entry for one value: the provenance entries have one label.)


def results_table_params():
    return {
        "rows": as_json(report_rows()),
        "metrics": as_json(config["report"]["metrics"]),
        "groups": as_json(config["groups"]),
        "title": config["report"]["title"],
    }


def provenance_params():
    # the page shows the whole config: it is this job's content, not a setting of one stage
    return {"config": as_json(config), "rows": as_json(report_rows())}


REPORT_TABLE_HTML = f"{ROOT}/tables/results.html"
REPORT_PROVENANCE = f"{ROOT}/report/provenance.html"
REPORT_CONFIG = f"{ROOT}/report/config.yaml"
REPORT_FILES = REPORT_FILES + [REPORT_TABLE_HTML, REPORT_PROVENANCE, REPORT_CONFIG]


def figure_params():
    # per-class recall does not depend on the head/medium/tail rule: a change of it keeps this
    rows = [{k: v for k, v in r.items() if k != "group_rule"} for r in report_rows()]
    return {"rows": as_json(rows), "title": config["report"]["title"]}


rule results_table:
    input:
        [f for row in report_rows() for f in row["files"].values()],
        params=lambda w: params_stamp(
            [REPORT_TABLE_MD, REPORT_TABLE_CSV], results_table_params()
        ),
    output:
        md=report(
            REPORT_TABLE_MD,
            caption="../report/results_table.rst",
            category="Tables",
            labels={"table": "all runs", "format": "Markdown"},
        ),
        csv=report(
            REPORT_TABLE_CSV,
            caption="../report/results_table.rst",
            category="Tables",
            labels={"table": "all runs", "format": "CSV"},
        ),
    log:
        f"{LOGS}/results_table.log",
    benchmark:
        f"{BENCHMARKS}/report/results_table.tsv"
    localrule: True
    params:
        **results_table_params(),
    shell:
        "lmdlt report-table --rows {params.rows:q} --metrics {params.metrics:q} --groups {params.groups:q}"
        " --title {params.title:q} --out-md {output.md:q} --out-csv {output.csv:q} > {log:q} 2>&1"


rule per_class_recall_figure:
    input:
        [f for row in report_rows() for f in row["files"].values()],
        params=lambda w: params_stamp(
            [REPORT_FIGURE, REPORT_FIGURE_PDF], figure_params()
        ),
    output:
        png=report(
            REPORT_FIGURE,
            caption="../report/per_class_recall.rst",
            category="Figures",
            labels={"figure": "per-class recall"},
        ),
        pdf=REPORT_FIGURE_PDF,
    log:
        f"{LOGS}/per_class_recall_figure.log",
    benchmark:
        f"{BENCHMARKS}/report/per_class_recall_figure.tsv"
    localrule: True
    params:
        **figure_params(),
    shell:
        "lmdlt report-figure --rows {params.rows:q} --title {params.title:q} --out {output.png:q}"
        " --out-pdf {output.pdf:q} > {log:q} 2>&1"


rule results_table_html:
    input:
        csv=REPORT_TABLE_CSV,
    output:
        html=report(
            REPORT_TABLE_HTML,
            caption="../report/results_table.rst",
            category="Tables",
            labels={"table": "all runs", "format": "HTML"},
        ),
    log:
        f"{LOGS}/results_table_html.log",
    localrule: True
    params:
        title=config["report"]["title"],
    shell:
        "lmdlt report-html table --csv {input.csv:q} --title {params.title:q} --out {output.html:q} > {log:q} 2>&1"


rule report_provenance:
    input:
        [f for row in report_rows() for f in row["files"].values()],
        params=lambda w: params_stamp(
            [REPORT_PROVENANCE, REPORT_CONFIG], provenance_params()
        ),
    output:
        html=report(
            REPORT_PROVENANCE,
            caption="../report/provenance.rst",
            category="Config and provenance",
            labels={"page": "config and provenance"},
        ),
        yaml=report(
            REPORT_CONFIG,
            caption="../report/provenance.rst",
            category="Config and provenance",
            labels={"page": "config (YAML)"},
        ),
    log:
        f"{LOGS}/report_provenance.log",
    localrule: True
    params:
        **provenance_params(),
    shell:
        "lmdlt report-html provenance --config {params.config:q} --rows {params.rows:q}"
        " --out {output.html:q} --out-yaml {output.yaml:q} > {log:q} 2>&1"


report: "../report/workflow.rst"


# ---- the paper's tables and figures, as declared in the config's report: section ----
# Resolved once (lmdlt.report.spec): which runs feed which table/figure, their files. A table
# or figure not declared is not made; a declared row or run the config lacks stops the run.
import os

from lmdlt.report.spec import figure_specs, table_specs

PAPER_PATHS = {
    "stage1_metrics": STAGE1_METRICS,
    "stage2_metrics": STAGE2_METRICS,
    "features": FEATURES,
    "predictions": PREDICTIONS,
    "stage2_benchmark": BENCHMARKS + "/seed{seed}/stage2_{s1}_{s2}.tsv",
    "split": SPLIT,
}
try:
    TABLE_SPECS = table_specs(config, PAPER_PATHS)
    FIGURE_SPECS = figure_specs(config, PAPER_PATHS)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")

TABLES = f"{ROOT}/tables"
FIGURES = f"{ROOT}/figures"
SWEEP_FIGURES = [f for f in ("fig3", "fig6", "fig7") if f in FIGURE_SPECS]


def table_inputs(w):
    spec = TABLE_SPECS[w.table]
    files = [f for r in spec["rows"] for f in r["files"].values()]
    if spec["lmd"]:  # the paired bootstrap reads the per-image test predictions
        files += [f for r in spec["rows"] for f in r["predictions"].values()]
    return files


def sweep_inputs(w):
    spec = FIGURE_SPECS[w.figure]
    rows = [p for s in spec["series"] for p in s["points"]] + (
        [spec["baseline"]] if spec["baseline"] else []
    )
    files = [f for r in rows for f in r["files"].values()]
    if spec["time"]:
        files += [
            f for r in rows if r.get("benchmarks") for f in r["benchmarks"].values()
        ]
    return files


def combined_tables():
    """report.tables.<t>.combine: this experiment's table beside other experiments' (by dataset
    name) whose CSVs already exist; {table: [csv, ...]} when at least one other exists.
    """
    out = {}
    for t, decl in (config["report"].get("tables") or {}).items():
        others = [
            f"{config['results_dir']}/{n}/tables/{t}.csv"
            for n in decl.get("combine") or []
            if n != config["dataset"]["name"]
        ]
        present = [f for f in others if os.path.exists(f)]
        if present:
            absent = [n for n, f in zip(decl["combine"], others) if f not in present]
            out[t] = {"csv": [f"{TABLES}/{t}.csv"] + present, "absent": absent}
    return out


COMBINED = combined_tables()
REPORT_FILES += [
    f"{TABLES}/{t}.{ext}" for t in TABLE_SPECS for ext in ("md", "csv", "tex", "html")
]
REPORT_FILES += [
    f"{FIGURES}/{f}.{ext}" for f in SWEEP_FIGURES for ext in ("png", "pdf")
]
if "tsne" in FIGURE_SPECS:
    REPORT_FILES += [
        f"{FIGURES}/{f}.{ext}" for f in ("fig4", "fig5") for ext in ("png", "pdf")
    ]
if "class_distribution" in FIGURE_SPECS:
    REPORT_FILES += [f"{FIGURES}/class_distribution.{ext}" for ext in ("png", "pdf")]
REPORT_FILES += [
    f"{config['results_dir']}/combined/{t}.{ext}"
    for t in COMBINED
    for ext in ("md", "tex", "html")
]


rule paper_table:
    input:
        table_inputs,
        params=lambda w: params_stamp(
            [f"{TABLES}/{w.table}.{e}" for e in ("csv", "md", "tex")],
            {"spec": as_json(TABLE_SPECS[w.table])},
        ),
    output:
        csv=report(
            f"{TABLES}/{{table}}.csv",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}", "format": "CSV"},
        ),
        md=report(
            f"{TABLES}/{{table}}.md",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}", "format": "Markdown"},
        ),
        tex=report(
            f"{TABLES}/{{table}}.tex",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}", "format": "LaTeX"},
        ),
    log:
        f"{LOGS}/paper_table_{{table}}.log",
    benchmark:
        f"{BENCHMARKS}/report/paper_table_{{table}}.tsv"
    wildcard_constraints:
        table=names_regex(list(TABLE_SPECS)),
    localrule: True
    params:
        spec=lambda w: as_json(TABLE_SPECS[w.table]),
    shell:
        "lmdlt report-paper-table --spec {params.spec:q} --out-csv {output.csv:q} --out-md {output.md:q}"
        " --out-tex {output.tex:q} > {log:q} 2>&1"


rule combined_table:
    input:
        csv=lambda w: COMBINED[w.table]["csv"],
        params=lambda w: params_stamp(
            [f"{config['results_dir']}/combined/{w.table}.{e}" for e in ("md", "tex")],
            {"absent": COMBINED[w.table]["absent"]},
        ),
    output:
        md=report(
            f"{config['results_dir']}/combined/{{table}}.md",
            caption="../report/combined.rst",
            category="Tables",
            labels={"table": "{table} (combined)", "format": "Markdown"},
        ),
        tex=report(
            f"{config['results_dir']}/combined/{{table}}.tex",
            caption="../report/combined.rst",
            category="Tables",
            labels={"table": "{table} (combined)", "format": "LaTeX"},
        ),
    log:
        f"{LOGS}/combined_table_{{table}}.log",
    benchmark:
        f"{BENCHMARKS}/report/combined_table_{{table}}.tsv"
    wildcard_constraints:
        table=names_regex(list(COMBINED)),
    localrule: True
    params:
        absent=lambda w: COMBINED[w.table]["absent"],
    shell:
        "lmdlt report-combine {input.csv:q} --label {wildcards.table} --absent {params.absent:q}"
        " --out-md {output.md:q} --out-tex {output.tex:q} > {log:q} 2>&1"


rule paper_table_html:
    input:
        csv=f"{TABLES}/{{table}}.csv",
    output:
        html=report(
            f"{TABLES}/{{table}}.html",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}", "format": "HTML"},
        ),
    log:
        f"{LOGS}/paper_table_html_{{table}}.log",
    wildcard_constraints:
        table=names_regex(list(TABLE_SPECS)),
    localrule: True
    params:
        title=lambda w: f"{TABLE_SPECS[w.table]['title']} — {TABLE_SPECS[w.table]['experiment']}",
    shell:
        "lmdlt report-html table --csv {input.csv:q} --title {params.title:q} --out {output.html:q} > {log:q} 2>&1"


rule combined_table_html:
    input:
        csv=lambda w: COMBINED[w.table]["csv"],
    output:
        html=report(
            f"{config['results_dir']}/combined/{{table}}.html",
            caption="../report/combined.rst",
            category="Tables",
            labels={"table": "{table} (combined)", "format": "HTML"},
        ),
    log:
        f"{LOGS}/combined_table_html_{{table}}.log",
    wildcard_constraints:
        table=names_regex(list(COMBINED)),
    localrule: True
    params:
        title=lambda w: TABLE_SPECS[w.table]["title"],
        absent=lambda w: COMBINED[w.table]["absent"],
    shell:
        "lmdlt report-html table --csv {input.csv:q} --title {params.title:q} --absent {params.absent:q}"
        " --out {output.html:q} > {log:q} 2>&1"


rule sweep_figure:
    input:
        sweep_inputs,
        params=lambda w: params_stamp(
            [f"{FIGURES}/{w.figure}.{e}" for e in ("png", "pdf")],
            {"spec": as_json(FIGURE_SPECS[w.figure])},
        ),
    output:
        png=report(
            f"{FIGURES}/{{figure}}.png",
            caption="../report/sweep_figure.rst",
            category="Figures",
            labels={"figure": "{figure}"},
        ),
        pdf=f"{FIGURES}/{{figure}}.pdf",
    log:
        f"{LOGS}/figure_{{figure}}.log",
    benchmark:
        f"{BENCHMARKS}/report/figure_{{figure}}.tsv"
    wildcard_constraints:
        figure=names_regex(SWEEP_FIGURES),
    localrule: True
    params:
        spec=lambda w: as_json(FIGURE_SPECS[w.figure]),
    shell:
        "lmdlt report-sweep-figure --spec {params.spec:q} --out-png {output.png:q} --out-pdf {output.pdf:q}"
        " > {log:q} 2>&1"


rule tsne_figures:
    input:
        [r["features"] for r in FIGURE_SPECS.get("tsne", {}).get("runs", [])],
        params=lambda w: params_stamp(
            [f"{FIGURES}/fig{n}.{e}" for n in (4, 5) for e in ("png", "pdf")],
            {
                "spec": as_json(FIGURE_SPECS.get("tsne")),
                "groups": as_json(config["groups"]),
            },
        ),
    output:
        fig4_png=report(
            f"{FIGURES}/fig4.png",
            caption="../report/tsne.rst",
            category="Figures",
            labels={"figure": "fig4"},
        ),
        fig4_pdf=f"{FIGURES}/fig4.pdf",
        fig5_png=report(
            f"{FIGURES}/fig5.png",
            caption="../report/tsne.rst",
            category="Figures",
            labels={"figure": "fig5"},
        ),
        fig5_pdf=f"{FIGURES}/fig5.pdf",
    log:
        f"{LOGS}/figure_tsne.log",
    benchmark:
        f"{BENCHMARKS}/report/figure_tsne.tsv"
    localrule: True
    params:
        spec=as_json(FIGURE_SPECS.get("tsne")),
        groups=as_json(config["groups"]),
    shell:
        "lmdlt report-tsne --spec {params.spec:q} --groups {params.groups:q} --fig4-png {output.fig4_png:q}"
        " --fig4-pdf {output.fig4_pdf:q} --fig5-png {output.fig5_png:q} --fig5-pdf {output.fig5_pdf:q} > {log:q} 2>&1"


rule class_distribution_figure:
    input:
        list(FIGURE_SPECS.get("class_distribution", {}).get("splits", {}).values()),
        params=lambda w: params_stamp(
            [f"{FIGURES}/class_distribution.{e}" for e in ("png", "pdf")],
            {"spec": as_json(FIGURE_SPECS.get("class_distribution"))},
        ),
    output:
        png=report(
            f"{FIGURES}/class_distribution.png",
            caption="../report/class_distribution.rst",
            category="Figures",
            labels={"figure": "class distribution"},
        ),
        pdf=f"{FIGURES}/class_distribution.pdf",
    log:
        f"{LOGS}/figure_class_distribution.log",
    benchmark:
        f"{BENCHMARKS}/report/figure_class_distribution.tsv"
    localrule: True
    params:
        spec=as_json(FIGURE_SPECS.get("class_distribution")),
    shell:
        "lmdlt report-class-distribution --spec {params.spec:q} --out-png {output.png:q} --out-pdf {output.pdf:q}"
        " > {log:q} 2>&1"
