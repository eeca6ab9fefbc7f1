# Evaluation on the test split: the stage-1 classifier alone, and every stage-2 variant.
# The split manifest is an input so that evaluation checks provenance and leaks first.


rule evaluate_stage1:
    input:
        predictions=FEATURES,
        split=SPLIT,
        params=lambda w: params_stamp(STAGE1_METRICS.format(**w), {"groups": as_json(config["groups"])}),
    output:
        STAGE1_METRICS,
    params:
        groups=as_json(config["groups"]),
    log:
        LOGS + "/seed{seed}/evaluate_{s1}.log",
    benchmark:
        BENCHMARKS + "/seed{seed}/evaluate_{s1}.tsv"
    shell:
        "lmdlt evaluate --predictions {input.predictions:q} --manifest {input.split:q} --groups {params.groups:q}"
        " --out {output:q} > {log:q} 2>&1"


rule evaluate_stage2:
    input:
        predictions=PREDICTIONS,
        split=SPLIT,
        params=lambda w: params_stamp(STAGE2_METRICS.format(**w), {"groups": as_json(config["groups"])}),
    output:
        STAGE2_METRICS,
    params:
        groups=as_json(config["groups"]),
    log:
        LOGS + "/seed{seed}/evaluate_{s1}_{s2}.log",
    benchmark:
        BENCHMARKS + "/seed{seed}/evaluate_{s1}_{s2}.tsv"
    shell:
        "lmdlt evaluate --predictions {input.predictions:q} --manifest {input.split:q} --groups {params.groups:q}"
        " --out {output:q} > {log:q} 2>&1"
