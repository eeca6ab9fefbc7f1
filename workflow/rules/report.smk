# Report: the results table (mean +- std over seeds) and the per-class recall figure,
# aggregated from the per-run metric files only.


rule results_table:
    input:
        [f for row in report_rows() for f in row["files"].values()],
    output:
        md=REPORT_TABLE_MD,
        csv=REPORT_TABLE_CSV,
    params:
        rows=as_json(report_rows()),
        metrics=as_json(config["report"]["metrics"]),
        groups=as_json(config["groups"]),
        title=config["report"]["title"],
    log:
        f"{LOGS}/results_table.log",
    localrule: True
    shell:
        "lmdlt report-table --rows {params.rows:q} --metrics {params.metrics:q} --groups {params.groups:q}"
        " --title {params.title:q} --out-md {output.md} --out-csv {output.csv} > {log} 2>&1"


rule per_class_recall_figure:
    input:
        [f for row in report_rows() for f in row["files"].values()],
    output:
        REPORT_FIGURE,
    params:
        rows=as_json(report_rows()),
        title=config["report"]["title"],
    log:
        f"{LOGS}/per_class_recall_figure.log",
    localrule: True
    shell:
        "lmdlt report-figure --rows {params.rows:q} --title {params.title:q} --out {output} > {log} 2>&1"
