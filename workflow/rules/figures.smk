# Figures, drawn from the per-run metric files and features: the per-class recall of every run,
# and each figure the config declares (lmdlt.report.registry.FIGURES), one rule per family.


rule per_class_recall_figure:
    input:
        REPORT.metric_files(),
        params=lambda w: params_stamp(
            list(REPORT.per_class_recall.values()), REPORT.per_class_recall_params()
        ),
    output:
        png=report_output(REPORT.per_class_recall["png"], "per_class_recall"),
        pdf=REPORT.per_class_recall["pdf"],
    log:
        f"{LOGS}/per_class_recall_figure.log",
    benchmark:
        f"{BENCHMARKS}/report/per_class_recall_figure.tsv"
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        **REPORT.per_class_recall_params(),
    shell:
        "lmdlt report-figure --rows {params.rows:q} --title {params.title:q} --out {output.png:q}"
        " --out-pdf {output.pdf:q} > {log:q} 2>&1"


rule sweep_figure:
    input:
        lambda w: REPORT.sweep_inputs(w.figure),
        params=lambda w: params_stamp(
            [REPORT.figure_file(w.figure, e) for e in ("png", "pdf")],
            {"spec": as_json(REPORT.figures[w.figure])},
        ),
    output:
        png=report_output(f"{FIGURES}/{{figure}}.png", "sweep_figure"),
        pdf=f"{FIGURES}/{{figure}}.pdf",
    log:
        f"{LOGS}/figure_{{figure}}.log",
    benchmark:
        f"{BENCHMARKS}/report/figure_{{figure}}.tsv"
    wildcard_constraints:
        figure=names_regex(REPORT.sweep_figures),
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        spec=lambda w: as_json(REPORT.figures[w.figure]),
        caption=lambda w: figure_caption(w.figure),  # the report's caption (sweep_figure.rst)
    shell:
        "lmdlt report-sweep-figure --spec {params.spec:q} --out-png {output.png:q} --out-pdf {output.pdf:q}"
        " > {log:q} 2>&1"


rule tsne_figures:
    input:
        [r["features"] for r in REPORT.figures.get("tsne", {}).get("runs", [])],
        params=lambda w: params_stamp(
            [
                REPORT.figure_file(f, e)
                for f in ("fig4", "fig5")
                for e in ("png", "pdf")
            ],
            {
                "spec": as_json(REPORT.figures.get("tsne")),
                "groups": as_json(config["groups"]),
            },
        ),
    output:
        fig4_png=report_output(REPORT.figure_file("fig4", "png"), "tsne", figure="fig4"),
        fig4_pdf=REPORT.figure_file("fig4", "pdf"),
        fig5_png=report_output(REPORT.figure_file("fig5", "png"), "tsne", figure="fig5"),
        fig5_pdf=REPORT.figure_file("fig5", "pdf"),
    log:
        f"{LOGS}/figure_tsne.log",
    benchmark:
        f"{BENCHMARKS}/report/figure_tsne.tsv"
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        spec=as_json(REPORT.figures.get("tsne")),
        groups=as_json(config["groups"]),
    shell:
        "lmdlt report-tsne --spec {params.spec:q} --groups {params.groups:q} --fig4-png {output.fig4_png:q}"
        " --fig4-pdf {output.fig4_pdf:q} --fig5-png {output.fig5_png:q} --fig5-pdf {output.fig5_pdf:q} > {log:q} 2>&1"


rule class_distribution_figure:
    input:
        list(REPORT.figures.get("class_distribution", {}).get("splits", {}).values()),
        params=lambda w: params_stamp(
            [REPORT.figure_file("class_distribution", e) for e in ("png", "pdf")],
            {"spec": as_json(REPORT.figures.get("class_distribution"))},
        ),
    output:
        png=report_output(
            REPORT.figure_file("class_distribution", "png"), "class_distribution"
        ),
        pdf=REPORT.figure_file("class_distribution", "pdf"),
    log:
        f"{LOGS}/figure_class_distribution.log",
    benchmark:
        f"{BENCHMARKS}/report/figure_class_distribution.tsv"
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        spec=as_json(REPORT.figures.get("class_distribution")),
    shell:
        "lmdlt report-class-distribution --spec {params.spec:q} --out-png {output.png:q} --out-pdf {output.pdf:q}"
        " > {log:q} 2>&1"
