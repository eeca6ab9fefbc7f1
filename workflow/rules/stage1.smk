# Stage 1: representation learning, one checkpoint per (seed, stage-1 variant).


rule train_stage1:
    input:
        split=SPLIT,
        images=IMAGES,
    output:
        CHECKPOINT,
    params:
        variant=lambda w: as_json(config["stage1"][w.s1]),
        device=DEVICE,
        precision=config["compute"]["precision"],
        channels_last=config["compute"]["channels_last"],
    threads: THREADS
    log:
        LOGS + "/seed{seed}/stage1_{s1}.log",
    benchmark:
        BENCHMARKS + "/seed{seed}/stage1_{s1}.tsv"
    shell:
        "lmdlt train-stage1 --split {input.split} --images {input.images} --params {params.variant:q}"
        " --seed {wildcards.seed} --threads {threads} --device {params.device}"
        " --precision {params.precision} --channels-last {params.channels_last} --out {output} > {log} 2>&1"
