# lmdlt: long-tailed medical image classification, end to end.
# Thin by design: config + schema validation + one rules file per stage and per kind of report
# output (tables, figures, provenance page, results page); common.smk's get_final_output()
# returns every target. All logic is in the `lmdlt` package; every rule is one `lmdlt` call.
from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/stage2.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/provenance.smk"
include: "workflow/rules/results_page.smk"


request_local_gpus()  # GPU rules ask for a `gpu` where CUDA is visible (common.smk)


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        get_final_output(),
