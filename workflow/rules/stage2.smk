# Stage 2: classifier calibration.
# train_stage2: methods on the cached features (no encoder, no images).
# train_stage2_encoder: methods that fine-tune the encoder (LMD's ICC), from the checkpoint,
# the split manifest and the image cache. Both write the same predictions layout to the same
# path; the s2 wildcard constraint sends each variant to the one rule that can produce it.
# Both also score their predictions on the test split (metrics.json) in the same job, and check
# that the encoder comes from the configured stage-1 variant (--stage1-params, its config hash).
# No GPU is requested here (a local run must never wait for one); the SLURM profile adds
# `gpu` to train_stage2_encoder through set-resources.


rule train_stage2:
    input:
        features=FEATURES,
        checkpoint=CHECKPOINT,  # read only to check the features' provenance
        split=SPLIT,
        params=lambda w: params_stamp(
            [PREDICTIONS.format(**w), STAGE2_METRICS.format(**w)],
            {"variant": as_json(config["stage2"][w.s2])},
        ),
    output:
        predictions=PREDICTIONS,
        metrics=STAGE2_METRICS,
    log:
        f"{LOGS}/seed{{seed}}/stage2_{{s1}}_{{s2}}.log",
    benchmark:
        f"{BENCHMARKS}/seed{{seed}}/stage2_{{s1}}_{{s2}}.tsv"
    wildcard_constraints:
        s2=names_regex(S2_FEATURE_VARIANTS),
    conda:
        "../envs/lmdlt.yaml"
    threads: 1
    params:
        variant=lambda w: as_json(config["stage2"][w.s2]),
        stage1=lambda w: stage1_params(w.s1)["variant"],  # the encoder's recorded config
        tracking=lambda w: tracking_param(f"seed{w.seed}/stage2/{w.s1}/{w.s2}"),
    shell:
        "lmdlt train-stage2 --features {input.features:q} --checkpoint {input.checkpoint:q}"
        " --split {input.split:q} --params {params.variant:q} --stage1-params {params.stage1:q}"
        " --tracking {params.tracking:q}"
        " --seed {wildcards.seed} --threads {threads} --out {output.predictions:q}"
        " --metrics-out {output.metrics:q} > {log:q} 2>&1"


rule train_stage2_encoder:
    input:
        checkpoint=CHECKPOINT,
        split=SPLIT,
        images=IMAGES,
        params=lambda w: params_stamp(
            [PREDICTIONS.format(**w), STAGE2_METRICS.format(**w)],
            {"variant": as_json(config["stage2"][w.s2]), "device": DEVICE},
        ),
    output:
        predictions=PREDICTIONS,
        metrics=STAGE2_METRICS,
    log:
        f"{LOGS}/seed{{seed}}/stage2_{{s1}}_{{s2}}.log",
    benchmark:
        f"{BENCHMARKS}/seed{{seed}}/stage2_{{s1}}_{{s2}}.tsv"
    wildcard_constraints:
        s2=names_regex(S2_ENCODER_VARIANTS),
    conda:
        "../envs/lmdlt.yaml"
    threads: THREADS
    params:
        variant=lambda w: as_json(config["stage2"][w.s2]),
        stage1=lambda w: stage1_params(w.s1)["variant"],  # the checkpoint's recorded config
        device=DEVICE,
        tracking=lambda w: tracking_param(f"seed{w.seed}/stage2/{w.s1}/{w.s2}"),
    shell:
        "lmdlt train-stage2-encoder --checkpoint {input.checkpoint:q} --split {input.split:q}"
        " --images {input.images:q} --params {params.variant:q} --stage1-params {params.stage1:q}"
        " --tracking {params.tracking:q}"
        " --seed {wildcards.seed} --threads {threads} --device {params.device:q}"
        " --out {output.predictions:q} --metrics-out {output.metrics:q} > {log:q} 2>&1"
