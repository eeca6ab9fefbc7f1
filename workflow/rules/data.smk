# Data: the decoded-image cache (per source and image size) and the split manifest (per seed).
# Both read the data stamp (common.smk, data_stamp): a change of the data re-runs them and
# everything made from them.


rule image_cache:
    input:
        data=lambda w: data_stamp(f"{IMAGE_CACHE_DIR}/images_{w.size}px.h5"),
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


rule split:
    input:
        params=lambda w: params_stamp(SPLIT.format(**w), split_params()),
        data=lambda w: data_stamp(SPLIT.format(**w)),
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
