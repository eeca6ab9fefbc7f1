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
        precision=config["compute"]["precision"],
        channels_last=config["compute"]["channels_last"],
    threads: THREADS
    log:
        LOGS + "/seed{seed}/features_{s1}.log",
    benchmark:
        BENCHMARKS + "/seed{seed}/features_{s1}.tsv"
    shell:
        "lmdlt extract --checkpoint {input.checkpoint} --split {input.split} --images {input.images}"
        " --threads {threads} --device {params.device} --precision {params.precision}"
        " --channels-last {params.channels_last} --out {output} > {log} 2>&1"
