# Stage 2: classifier calibration on the cached features (no encoder, no images).


rule train_stage2:
    input:
        features=FEATURES,
    output:
        PREDICTIONS,
    params:
        variant=lambda w: as_json(config["stage2"][w.s2]),
    threads: 1
    log:
        LOGS + "/seed{seed}/stage2_{s1}_{s2}.log",
    shell:
        "lmdlt train-stage2 --features {input.features} --params {params.variant:q}"
        " --seed {wildcards.seed} --threads {threads} --out {output} > {log} 2>&1"
