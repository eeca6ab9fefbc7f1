# lmdlt: long-tailed medical image classification, end to end.
# Thin by design: config + schema validation + one rules file per stage. All logic is in the
# `lmdlt` package; every rule is one `lmdlt <stage>` call.
from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/stage2.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/results_page.smk"


rule all:
    default_target: True
    input:
        REPORT_FILES,
