# Feature extraction: features, logits and labels of every split, once per checkpoint (and
# features.train_views augmented passes of the training split; a change of it re-runs this).
# The same job scores the stage-1 classifier on the test split (metrics.json): evaluation runs
# where the predictions are made, not as a job of its own (docs/benchmarks.md, section 7).


rule extract_features:
    input:
        checkpoint=CHECKPOINT,
        split=SPLIT,
        images=IMAGES,
        params=lambda w: params_stamp(
            [FEATURES.format(**w), STAGE1_METRICS.format(**w)],
            {
                "device": DEVICE,
                "precision": config["compute"]["precision"],
                "channels_last": config["compute"]["channels_last"],
                "train_views": config["features"]["train_views"],
            },
        ),
    output:
        features=FEATURES,
        metrics=STAGE1_METRICS,
    log:
        f"{LOGS}/seed{{seed}}/features_{{s1}}.log",
    benchmark:
        f"{BENCHMARKS}/seed{{seed}}/features_{{s1}}.tsv"
    conda:
        "../envs/lmdlt.yaml"
    threads: THREADS
    params:
        device=DEVICE,
        precision=config["compute"]["precision"],
        channels_last=config["compute"]["channels_last"],
        train_views=config["features"]["train_views"],
        stage1=lambda w: stage1_params(w.s1)["variant"],  # the checkpoint's recorded config
        tracking=lambda w: tracking_param(f"seed{w.seed}/stage1/{w.s1}"),  # its test metrics
    shell:
        "lmdlt extract --checkpoint {input.checkpoint:q} --split {input.split:q} --images {input.images:q}"
        " --threads {threads} --device {params.device:q} --precision {params.precision:q}"
        " --channels-last {params.channels_last:q} --train-views {params.train_views}"
        " --stage1-params {params.stage1:q} --tracking {params.tracking:q}"
        " --out {output.features:q} --metrics-out {output.metrics:q} > {log:q} 2>&1"
