# Feature extraction: features, logits and labels of every split, once per checkpoint.


rule extract_features:
    input:
        checkpoint=CHECKPOINT,
        split=SPLIT,
        images=IMAGES,
    output:
        FEATURES,
    params:
        device=DEVICE,
    threads: THREADS
    log:
        LOGS + "/seed{seed}/features_{s1}.log",
    benchmark:
        BENCHMARKS + "/seed{seed}/features_{s1}.tsv"
    shell:
        "lmdlt extract --checkpoint {input.checkpoint} --split {input.split} --images {input.images}"
        " --threads {threads} --device {params.device} --out {output} > {log} 2>&1"
