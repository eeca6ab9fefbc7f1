# Config validation (defaults filled, unknown keys and wrong types rejected with the key named),
# output paths, and the per-variant params helpers shared by the rule files.
import json
import os
import sys

from lmdlt.config import ConfigError, check_data_root, pairs, row_label, validate_config
from lmdlt.report.registry import figure_caption, report_args
from lmdlt.report.targets import ReportTargets
from lmdlt.stamps import stamp_is_newer, stamp_path, write_params_stamp, write_stamp

# `--configfile` files are deep-merged over the Snakefile's config.yaml, which would leak the
# default experiment's variants (stage1/stage2/groups...) into an experiment config: config
# files given on the command line replace config.yaml instead (later files and --config still
# update them, so overlays and `--config dataset='{root: ...}'` work).
if workflow.config_settings.configfiles:
    config.clear()
    config.update(json.loads(json.dumps(workflow.config_settings.overwrite_config)))

try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
    check_data_root(config)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")

ROOT = f"{config['results_dir']}/{config['dataset']['name']}"
SEEDS = config["seeds"]
THREADS = config["compute"]["threads"]
DEVICE = config["compute"]["device"]

SPLIT = f"{ROOT}/seed{{seed}}/split.parquet"
CHECKPOINT = f"{ROOT}/seed{{seed}}/stage1/{{s1}}/model.pt"
FEATURES = f"{ROOT}/seed{{seed}}/stage1/{{s1}}/features.h5"
STAGE1_METRICS = f"{ROOT}/seed{{seed}}/stage1/{{s1}}/metrics.json"
PREDICTIONS = f"{ROOT}/seed{{seed}}/stage2/{{s1}}/{{s2}}/predictions.h5"
STAGE2_METRICS = f"{ROOT}/seed{{seed}}/stage2/{{s1}}/{{s2}}/metrics.json"
LOGS = f"{ROOT}/logs"
BENCHMARKS = f"{ROOT}/benchmarks"

TABLES = f"{ROOT}/tables"
FIGURES = f"{ROOT}/figures"

# What the report makes, resolved once (lmdlt.report.targets): every table, figure and page the
# config declares, their specs and files. A declared row or run the config lacks stops the run.
try:
    REPORT = ReportTargets(
        config,
        {
            "stage1_metrics": STAGE1_METRICS,
            "stage2_metrics": STAGE2_METRICS,
            "features": FEATURES,
            "predictions": PREDICTIONS,
            "stage2_benchmark": f"{BENCHMARKS}/seed{{seed}}/stage2_{{s1}}_{{s2}}.tsv",
            "split": SPLIT,
        },
    )
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")


def get_final_output():
    """Every target of the run (the Snakefile's `all`): the report's tables, figures and pages, which pull
    in every run they aggregate (lmdlt.report.targets.ReportTargets.final_outputs)."""
    return REPORT.final_outputs()


def report_output(path, entry, fmt=None, **names):
    """An output shown in `snakemake --report` as lmdlt.report.registry.ENTRIES[entry] says
    (caption, category, labels; `fmt` adds the format label: md, csv, tex, html)."""
    return report(path, **report_args(entry, fmt, **names))


def _stage2_variants(needs_encoder):
    """Stage-2 variant names whose method does (or does not) fine-tune the encoder (from the
    method catalog: the parse imports no torch, lmdlt/catalog.py)."""
    from lmdlt.catalog import current

    catalog = current()
    return [
        name
        for name, v in config["stage2"].items()
        if bool(catalog.get_method("stage2", v["method"]).needs_encoder)
        == needs_encoder
    ]


def names_regex(names):
    """A wildcard constraint matching exactly these names (never-matching when empty)."""
    import re

    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


# Two rules write stage-2 predictions to the same path; each matches only its own variants
# (feature-only methods: train_stage2; encoder-fine-tuning methods such as ICC:
# train_stage2_encoder), so evaluation and the report never need to know which produced it.
S2_FEATURE_VARIANTS = _stage2_variants(needs_encoder=False)
S2_ENCODER_VARIANTS = _stage2_variants(needs_encoder=True)


wildcard_constraints:
    seed=r"\d+",
    s1=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    s2=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    size=r"\d+",


def as_json(obj):
    """Params are compared by value between runs: a stable JSON string of exactly one section."""
    return json.dumps(obj, sort_keys=True)


# Params stamps carry what .snakemake/ metadata carries, so the cache property holds in a fresh
# clone over existing results (lmdlt/stamps.py says how).
def params_stamp(outputs, content):
    """The stamp path to use as an input of the job writing ``outputs`` (lmdlt.stamps)."""
    return write_params_stamp(outputs, as_json(content), dryrun=workflow.dryrun)


def source_params():
    """What identifies the images (not the split, not the image size); the fingerprint mode
    only when it is not the default (so default configs keep their params)."""
    ds = config["dataset"]
    params = {"source": ds["source"], "root": ds["root"], "options": ds["options"]}
    if ds["fingerprint"] != "stat":
        params["fingerprint"] = ds["fingerprint"]
    return params


# keyed by the images (source, root, options), shared by experiments: lmdlt.data.image_cache
from lmdlt.data.image_cache import cache_dir_name

IMAGE_CACHE_DIR = (
    f"{config['results_dir']}/image_cache/{cache_dir_name(config['dataset'])}"
)
IMAGES = f"{IMAGE_CACHE_DIR}/images_{config['dataset']['image_size']}px.h5"


# Params helpers shared by the rule files; snakemake --lint wants no function beside a rule.
def split_params():
    return {"dataset": as_json(source_params()), "split": as_json(config["split"])}


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
    if (
        config["compute"]["augment_device"] != "auto"
    ):  # default configs keep their params
        params["augment_device"] = config["compute"]["augment_device"]
    return params


# Data stamps: the data is a key of the image cache and the split (lmdlt/data/fingerprint.py).
# The fingerprint is taken once per invocation, when the job graph is built (one index read and
# one stat() per image: docs/reliability.md has the cost), and kept in `.<output>.data.json`
# beside the image cache and each split, rewritten only when it changes, so a change of the
# data re-runs both and everything below them, in a fresh clone too. A job's own Snakemake
# (cluster jobs) takes none: the main process has written the stamps.
_DATA = {}


def data_fingerprint():
    """(stamp text, index) of the configured data, taken once. An index that cannot be read
    gives a stamp naming the error (its jobs are then scheduled): a dry-run shows it as a
    warning (dry-runs work on stub data roots), a run stops on it in onstart, before any job.
    """
    if "text" not in _DATA:
        from lmdlt.data.fingerprint import compute_fingerprint, mode_of
        from lmdlt.data.sources import source_from_config

        try:
            source = source_from_config(config["dataset"])
            index = source.index()
            fp = compute_fingerprint(source, mode_of(config["dataset"]), index)
            _DATA.update(text=fp.stamp_text(), index=index)
        except (ValueError, OSError) as e:
            if workflow.dryrun:
                print(f"lmdlt: the data cannot be indexed: {e}", file=sys.stderr)
            _DATA.update(text=as_json({"unreadable": str(e)}), index=None, error=e)
    return _DATA["text"], _DATA["index"]


def _records_this_fingerprint(outputs):
    """A stamp may be adopted (no re-run) by outputs that record no fingerprint (made before
    fingerprints were recorded) or this one."""
    from lmdlt.data.fingerprint import recorded_in_file

    want = json.loads(data_fingerprint()[0]).get("sha256")
    records = [recorded_in_file(o) for o in outputs]
    return all(r is None or r.get("sha256") == want for r in records)


def data_stamp(output):
    """The data stamp path to use as an input of the job writing ``output`` (lmdlt.stamps)."""
    if workflow.remote_exec or workflow.subprocess_exec:
        return stamp_path(output, "data")
    text = data_fingerprint()[0]
    if "error" in _DATA and os.path.exists(stamp_path(output, "data")):
        return stamp_path(
            output, "data"
        )  # kept: the run stops in onstart, nothing re-runs later
    return write_stamp(
        output, text, "data", dryrun=workflow.dryrun, adopt=_records_this_fingerprint
    )


# Data checks before expensive work: when jobs are about to run (onstart: not in a dry-run,
# which must work on a stub data root, tests/test_experiments.py) and the image cache or a
# seed's split is missing or to be rebuilt for a change of the data, the source's index is
# read (no image decoded) and every seed's split built in memory, so that an empty or one-image
# class, an infeasible split or an imbalance ratio the data cannot give stops the run before
# any job starts, the image cache's included.
# `lmdlt split-summary --config <file> --seed N` runs the split checks for one seed by hand.
def check_data_before_jobs():
    made = [IMAGES] + [SPLIT.format(seed=s) for s in SEEDS]
    if "error" not in _DATA and all(
        os.path.exists(o) and not stamp_is_newer(o, "data") for o in made
    ):
        return  # none missing, none to be rebuilt for a change of the data
    from lmdlt.data.splits import check_data

    try:
        if "error" in _DATA:  # the index could not be read when the job graph was built
            raise _DATA["error"]
        check_data(config["dataset"], config["split"], SEEDS, _DATA.get("index"))
    except (ValueError, OSError) as e:
        raise WorkflowError(
            f"data check (from the index, before any image is decoded) failed "
            f"for dataset {config['dataset']['name']!r}: {e}"
        )


# The job server (lmdlt/job_server.py): one process imports torch once and every job's `lmdlt`
# call runs in a fork of it, so a job costs its work, not 3-6 s of imports (docs/benchmarks.md
# section 9). Local runs only: a SLURM job runs in its own allocation. LMDLT_NO_JOB_SERVER=1
# turns it off (every job then runs in its own process, with the same outputs).
from lmdlt.job_server import (
    WorkflowServer,
    drop_local_rate_limiter,
    limit_gpu_jobs,
    local_gpu_count,
    may_run_jobs,
    request_gpus,
)

# `--sdm conda`: each rule runs in workflow/envs/lmdlt.yaml's environment, into which
# workflow/envs/lmdlt.post-deploy.sh installs the checkout named by LMDLT_SOURCE (this one,
# unless set); the job server, a fork of this process's environment, would bypass it.
from lmdlt.job_server import ENV_DISABLE
from snakemake_interface_executor_plugins.settings import DeploymentMethod

os.environ.setdefault("LMDLT_SOURCE", workflow.basedir)
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    os.environ[ENV_DISABLE] = "1"

JOB_SERVER = WorkflowServer()
JOB_SERVER_LOG = ".snakemake/lmdlt-job-server.log"
# launched now, its imports overlap the DAG building; onstart decides for real
if may_run_jobs(sys.argv):
    JOB_SERVER.launch(JOB_SERVER_LOG)

# Local GPU jobs: each asks for one `gpu` and a local run has as many as are visible here
# (no torch, no CUDA call: lmdlt.job_server.local_gpu_count; LMDLT_LOCAL_GPUS=N overrides), so
# GPU jobs never share a GPU; the Snakefile calls request_local_gpus() once every rule exists.
LOCAL_GPUS = local_gpu_count()


def request_local_gpus():
    request_gpus(rules, DEVICE, LOCAL_GPUS)


# One writer per experiment (lmdlt/run_lock.py): a run about to run jobs holds
# ROOT/.lmdlt-run.lock until it ends; a second run of this experiment from another clone or
# host stops in onstart, naming the first. Dry runs, --list, --summary, --report never get there.
from lmdlt.run_lock import RunLock, RunLockError

RUN_LOCK = RunLock(ROOT, clone=workflow.basedir)


def take_run_lock():
    try:
        RUN_LOCK.acquire()
    except RunLockError as e:
        raise WorkflowError(str(e))
    if RUN_LOCK.notice:
        print(RUN_LOCK.notice, file=sys.stderr)


onstart:
    take_run_lock()
    check_data_before_jobs()
    if workflow.local_exec:
        if limit_gpu_jobs(workflow, LOCAL_GPUS):
            print(
                f"lmdlt: local run: at most {LOCAL_GPUS} GPU job(s) at once",
                file=sys.stderr,
            )
        JOB_SERVER.start(JOB_SERVER_LOG)
        if drop_local_rate_limiter(workflow):  # why: lmdlt/job_server.py
            print(
                "lmdlt: local run: Snakemake's job rate limiter is off",
                file=sys.stderr,
            )
    else:  # cluster jobs run in their allocations
        JOB_SERVER.stop()


onsuccess:
    JOB_SERVER.stop()
    RUN_LOCK.release()


onerror:
    JOB_SERVER.stop()
    RUN_LOCK.release()
