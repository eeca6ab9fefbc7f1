# Stage 1: representation learning, one checkpoint per (seed, stage-1 variant).

# compute.stage1_processes = N > 1: torchrun starts N copies of the command, one GPU each (DDP +
# SyncBatchNorm, lmdlt/stage1/distributed.py); --threads is per process, like cpus_per_gpu.
STAGE1_PROCESSES = config["compute"]["stage1_processes"]
STAGE1_LAUNCH = (
    "lmdlt"
    if STAGE1_PROCESSES == 1
    else f"torchrun --standalone --nproc_per_node {STAGE1_PROCESSES} -m lmdlt.cli"
)


from lmdlt.tracking import TrackingParam


def tracking_param(run):
    """The config's tracking section, where to log and the run's name (a value Snakemake
    does not record: switching tracking on re-runs nothing, lmdlt/tracking.py)."""
    return TrackingParam(config["tracking"], ROOT, run)


def stage1_params(s1):
    params = {
        "variant": as_json(config["stage1"][s1]),
        "device": DEVICE,
        "precision": config["compute"]["precision"],
        "channels_last": config["compute"]["channels_last"],
        "launch": STAGE1_LAUNCH,
    }
    if config["compute"]["augment_device"] != "auto":  # default configs keep their params
        params["augment_device"] = config["compute"]["augment_device"]
    return params


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
