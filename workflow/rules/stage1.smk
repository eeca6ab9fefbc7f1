# Stage 1: representation learning, one checkpoint per (seed, stage-1 variant).


rule train_stage1:
    input:
        split=SPLIT,
        images=IMAGES,
        params=lambda w: params_stamp(CHECKPOINT.format(**w), stage1_params(w.s1)),
    output:
        CHECKPOINT,
    log:
        f"{LOGS}/seed{{seed}}/stage1_{{s1}}.log",
    benchmark:
        f"{BENCHMARKS}/seed{{seed}}/stage1_{{s1}}.tsv"
    conda:
        "../envs/lmdlt.yaml"
    threads: THREADS
    params:
        variant=lambda w: stage1_params(w.s1)["variant"],
        device=DEVICE,
        precision=config["compute"]["precision"],
        channels_last=config["compute"]["channels_last"],
        augment_device=config["compute"]["augment_device"],
        launch=STAGE1_LAUNCH,
        tracking=lambda w: tracking_param(f"seed{w.seed}/stage1/{w.s1}"),
    shell:
        "{params.launch} train-stage1 --split {input.split:q} --images {input.images:q} --params {params.variant:q}"
        " --seed {wildcards.seed} --threads {threads} --device {params.device:q}"
        " --precision {params.precision:q} --channels-last {params.channels_last:q}"
        " --augment-device {params.augment_device:q}"
        " --tracking {params.tracking:q} --out {output:q} > {log:q} 2>&1"


# One GPU per process. Set after the rule is defined because a profile's set-resources (the
# SLURM profile's `gpu: 1` for every GPU rule) replaces the rule's own resources.
if STAGE1_PROCESSES > 1:
    rules.train_stage1.rule.resources.update({"gpu": STAGE1_PROCESSES})
