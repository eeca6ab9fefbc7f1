# The run's config and provenance, a page of the Snakemake report: the software versions, the
# provenance of every metric file the tables are made from, and the config as the run used it
# (also as a YAML download, for `snakemake --configfile`).


rule report_provenance:
    input:
        REPORT.metric_files(),
        params=lambda w: params_stamp(
            [REPORT.provenance["html"], REPORT.provenance["yaml"]],
            REPORT.provenance_params(),
        ),
    output:
        html=report_output(REPORT.provenance["html"], "provenance"),
        yaml=report_output(REPORT.provenance["yaml"], "config"),
    log:
        f"{LOGS}/report_provenance.log",
    localrule: True
    conda:
        "../envs/lmdlt.yaml"
    params:
        **REPORT.provenance_params(),
    shell:
        "lmdlt report-html provenance --config {params.config:q} --rows {params.rows:q}"
        " --out {output.html:q} --out-yaml {output.yaml:q} > {log:q} 2>&1"
