# Data: the decoded-image cache (per source and image size) and the split manifest (per seed).


rule image_cache:
    output:
        f"{IMAGE_CACHE_DIR}/images_{{size}}px.h5",
    log:
        f"{IMAGE_CACHE_DIR}/logs/images_{{size}}px.log",
    benchmark:
        f"{IMAGE_CACHE_DIR}/benchmarks/images_{{size}}px.tsv"
    conda:
        "../envs/lmdlt.yaml"
    params:
        dataset=as_json(source_params()),
    shell:
        "lmdlt cache --dataset {params.dataset:q} --size {wildcards.size} --out {output:q} > {log:q} 2>&1"


def split_params():
    return {"dataset": as_json(source_params()), "split": as_json(config["split"])}


rule split:
    input:
        params=lambda w: params_stamp(SPLIT.format(**w), split_params()),
    output:
        SPLIT,
    log:
        f"{LOGS}/seed{{seed}}/split.log",
    benchmark:
        f"{BENCHMARKS}/seed{{seed}}/split.tsv"
    conda:
        "../envs/lmdlt.yaml"
    params:
        **split_params(),
    shell:
        "lmdlt split --dataset {params.dataset:q} --split {params.split:q} --seed {wildcards.seed}"
        " --out {output:q} > {log:q} 2>&1"
