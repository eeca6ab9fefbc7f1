# Tables, aggregated from the per-run metric files only: the results table of every run, each
# paper table the config declares (lmdlt.report.registry.TABLES) and the combined tables across
# experiments. Every table is also an HTML page rendered from its CSV (`lmdlt report-html
# table`): Snakemake's report viewer shows HTML in place and other files only as downloads.


rule results_table:
    input:
        REPORT.metric_files(),
        params=lambda w: params_stamp(
            [REPORT.results_table["md"], REPORT.results_table["csv"]],
            REPORT.results_table_params(),
        ),
    output:
        md=report_output(REPORT.results_table["md"], "results_table", "md"),
        csv=report_output(REPORT.results_table["csv"], "results_table", "csv"),
    log:
        f"{LOGS}/results_table.log",
    benchmark:
        f"{BENCHMARKS}/report/results_table.tsv"
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        **REPORT.results_table_params(),
    shell:
        "lmdlt report-table --rows {params.rows:q} --metrics {params.metrics:q} --groups {params.groups:q}"
        " --title {params.title:q} --out-md {output.md:q} --out-csv {output.csv:q} > {log:q} 2>&1"


rule results_table_html:
    input:
        csv=REPORT.results_table["csv"],
    output:
        html=report_output(REPORT.results_table["html"], "results_table", "html"),
    log:
        f"{LOGS}/results_table_html.log",
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        title=config["report"]["title"],
    shell:
        "lmdlt report-html table --csv {input.csv:q} --title {params.title:q} --out {output.html:q} > {log:q} 2>&1"


rule paper_table:
    input:
        lambda w: REPORT.table_inputs(w.table),
        params=lambda w: params_stamp(
            [REPORT.table_file(w.table, e) for e in ("csv", "md", "tex")],
            {"spec": as_json(REPORT.tables[w.table])},
        ),
    output:
        csv=report_output(f"{TABLES}/{{table}}.csv", "paper_table", "csv"),
        md=report_output(f"{TABLES}/{{table}}.md", "paper_table", "md"),
        tex=report_output(f"{TABLES}/{{table}}.tex", "paper_table", "tex"),
    log:
        f"{LOGS}/paper_table_{{table}}.log",
    benchmark:
        f"{BENCHMARKS}/report/paper_table_{{table}}.tsv"
    wildcard_constraints:
        table=names_regex(list(REPORT.tables)),
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        spec=lambda w: as_json(REPORT.tables[w.table]),
    shell:
        "lmdlt report-paper-table --spec {params.spec:q} --out-csv {output.csv:q} --out-md {output.md:q}"
        " --out-tex {output.tex:q} > {log:q} 2>&1"


rule paper_table_html:
    input:
        csv=f"{TABLES}/{{table}}.csv",
    output:
        html=report_output(f"{TABLES}/{{table}}.html", "paper_table", "html"),
    log:
        f"{LOGS}/paper_table_html_{{table}}.log",
    wildcard_constraints:
        table=names_regex(list(REPORT.tables)),
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        title=lambda w: f"{REPORT.tables[w.table]['title']} — {REPORT.tables[w.table]['experiment']}",
    shell:
        "lmdlt report-html table --csv {input.csv:q} --title {params.title:q} --out {output.html:q} > {log:q} 2>&1"


rule combined_table:
    input:
        csv=lambda w: REPORT.combined[w.table]["csv"],
        params=lambda w: params_stamp(
            [REPORT.combined_file(w.table, e) for e in ("md", "tex")],
            {"absent": REPORT.combined[w.table]["absent"]},
        ),
    output:
        md=report_output(REPORT.combined_file("{table}", "md"), "combined_table", "md"),
        tex=report_output(
            REPORT.combined_file("{table}", "tex"), "combined_table", "tex"
        ),
    log:
        f"{LOGS}/combined_table_{{table}}.log",
    benchmark:
        f"{BENCHMARKS}/report/combined_table_{{table}}.tsv"
    wildcard_constraints:
        table=names_regex(list(REPORT.combined)),
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        absent=lambda w: REPORT.combined[w.table]["absent"],
    shell:
        "lmdlt report-combine {input.csv:q} --label {wildcards.table} --absent {params.absent:q}"
        " --out-md {output.md:q} --out-tex {output.tex:q} > {log:q} 2>&1"


rule combined_table_html:
    input:
        csv=lambda w: REPORT.combined[w.table]["csv"],
    output:
        html=report_output(
            REPORT.combined_file("{table}", "html"), "combined_table", "html"
        ),
    log:
        f"{LOGS}/combined_table_html_{{table}}.log",
    wildcard_constraints:
        table=names_regex(list(REPORT.combined)),
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        title=lambda w: REPORT.tables[w.table]["title"],
        absent=lambda w: REPORT.combined[w.table]["absent"],
    shell:
        "lmdlt report-html table --csv {input.csv:q} --title {params.title:q} --absent {params.absent:q}"
        " --out {output.html:q} > {log:q} 2>&1"
