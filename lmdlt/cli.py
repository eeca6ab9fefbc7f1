"""The ``lmdlt`` command line: one subcommand per pipeline stage.

Every Snakemake rule calls exactly one of these; each also runs by hand. Structured inputs
(a stage's variant config) are passed as JSON strings.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text[:80]!r}") from None


def cmd_cache(a):
    from .data.image_cache import write_image_cache

    write_image_cache(a.dataset, a.size, a.out)  # logs what it cached, and what it skipped


def cmd_split(a):
    from .config import validate_section
    from .data.splits import summary_text, write_split

    a.split = validate_section("split", a.split)  # defaults filled, for a hand-written section
    table, class_names, digest = write_split(a.dataset, a.split, a.seed, a.out)
    logging.info("split\n%s", summary_text(table, class_names, digest))


def cmd_show_split(a):
    from .data.splits import read_manifest, summary_text

    table, meta = read_manifest(a.manifest)
    print(f"split {a.manifest}")
    print(summary_text(table, meta["class_names"], meta["content_hash"]))


def cmd_split_summary(a):
    from .config import load_config
    from .data.sources import source_from_config
    from .data.splits import build_split, summary_text

    config = load_config(a.config)
    if a.root is not None:
        config["dataset"]["root"] = a.root
    index = source_from_config(config["dataset"]).index()
    table = build_split(index, config["split"], a.seed)
    print(f"dataset {config['dataset']['name']} (source {config['dataset']['source']}), "
          f"split {config['split']['protocol']}, seed {a.seed}")
    print(summary_text(table, index.class_names))


def cmd_train_stage1(a):
    from .config import validate_variant
    from .stage1.trainer import train_stage1

    cfg = validate_variant("stage1", a.params)
    with _tracker(a, {"seed": a.seed, **cfg}) as tracker:
        train_stage1(a.split, a.images, cfg, a.seed, a.out, threads=a.threads, device=a.device,
                     precision=a.precision, channels_last=a.channels_last, tracker=tracker,
                     augment_device=a.augment_device)


def _variant(stage: str, params):
    from .config import validate_variant

    return None if params is None else validate_variant(stage, params)


def _tracker(a, params=None, attach=False):
    """The job's experiment tracker (``--tracking``; lmdlt.tracking), a no-op when off."""
    from .tracking import open_tracker

    return open_tracker(a.tracking, params, attach=attach)


def _score(a, produced, stage1, stage2=None, tracker=None) -> None:
    """Evaluation where the predictions are made: the producer writes its
    metrics.json itself, with the same guards and record as ``lmdlt evaluate``."""
    if a.metrics_out is not None:
        from .metrics import evaluate_file

        record = evaluate_file(produced, None, a.metrics_out, manifest_path=a.split,
                               stage1_params=stage1, stage2_params=stage2)
        if tracker is not None:
            tracker.log_final({f"test/{k}": v for k, v in record["metrics"].items()})


def cmd_extract(a):
    from .features import extract_features

    stage1 = _variant("stage1", a.stage1_params)
    extract_features(a.checkpoint, a.split, a.images, a.out, threads=a.threads, device=a.device,
                     precision=a.precision, channels_last=a.channels_last, train_views=a.train_views,
                     stage1_params=stage1)
    with _tracker(a, attach=True) as tracker:  # the test metrics join the training job's run
        _score(a, a.out, stage1, tracker=tracker)


def cmd_train_stage2(a):
    from .stage2.runner import run_stage2

    cfg, stage1 = _variant("stage2", a.params), _variant("stage1", a.stage1_params)
    with _tracker(a, {"seed": a.seed, **cfg}) as tracker:
        run_stage2(a.features, cfg, a.seed, a.out, threads=a.threads, checkpoint_path=a.checkpoint,
                   manifest_path=a.split, stage1_params=stage1, tracker=tracker)
        _score(a, a.out, stage1, cfg, tracker)


def cmd_train_stage2_encoder(a):
    from .stage2.runner import run_stage2_encoder

    cfg, stage1 = _variant("stage2", a.params), _variant("stage1", a.stage1_params)
    with _tracker(a, {"seed": a.seed, **cfg}) as tracker:
        run_stage2_encoder(a.checkpoint, a.split, a.images, cfg, a.seed, a.out, threads=a.threads,
                           device=a.device, stage1_params=stage1, tracker=tracker)
        _score(a, a.out, stage1, cfg, tracker)


def cmd_evaluate(a):
    from .metrics import evaluate_file

    evaluate_file(a.predictions, a.groups, a.out, split=a.split_name, manifest_path=a.manifest,
                  stage1_params=_variant("stage1", a.stage1_params),
                  stage2_params=_variant("stage2", a.stage2_params))


def cmd_report_table(a):
    from .report.tables import write_table

    write_table(a.rows, a.metrics, a.title, a.groups, a.out_md, a.out_csv)


def cmd_report_figure(a):
    from .report.figures import per_class_recall_figure

    per_class_recall_figure(a.rows, a.out, a.title, a.out_pdf)


def cmd_report_paper_table(a):
    from .report.registry import render_table  # the table kind's renderer

    render_table(a.spec, a.out_csv, a.out_md, a.out_tex)


def cmd_report_combine(a):
    from .report.paper_tables import render

    render(a.csv, a.title, a.out_md, a.out_tex, a.label, a.absent)


def cmd_report_sweep_figure(a):
    from .report.figures import sweep_figure

    sweep_figure(a.spec, a.out_png, a.out_pdf)


def cmd_report_tsne(a):
    from .report.figures import tsne_figures

    tsne_figures(a.spec, a.groups, {"fig4_png": a.fig4_png, "fig4_pdf": a.fig4_pdf,
                                    "fig5_png": a.fig5_png, "fig5_pdf": a.fig5_pdf})


def cmd_report_class_distribution(a):
    from .report.figures import class_distribution_figure

    class_distribution_figure(a.spec, a.out_png, a.out_pdf)


def cmd_report_html(a):
    from .report.html import table_html, write_page, write_provenance

    if a.what == "table":
        if not a.csv:
            raise SystemExit("report-html table: give the table's CSV(s) with --csv")
        write_page(table_html(a.csv, a.title, a.absent), a.out)
    else:
        if a.config is None or a.rows is None:
            raise SystemExit("report-html provenance: give --config and --rows")
        write_provenance(a.config, a.rows, a.out, a.out_yaml)


def cmd_report_results_page(a):
    import glob

    from .report.results_page import write_results_page

    bench = sorted(glob.glob(f"{a.benchmarks}/**/*.tsv", recursive=True)) if a.benchmarks else None
    write_results_page(a.table, a.out, a.meta, naive_csv=a.naive, curve_checkpoints=a.curve,
                       benchmark_files=bench, budget_checkpoints=a.budgets,
                       budget_stage2=a.budget_stage2 or None)


def cmd_validate_config(a):
    import yaml

    from .config import describe_expansions, load_config

    if a.explain:  # every method param: value, default, meaning, source
        from .method_params import explain

        print("\n".join(explain(load_config(a.config, overlays=a.overlays) if a.config else None)))
        return
    if a.config is None:
        raise ValueError("validate-config: name a config file (or --explain, alone, for every method)")
    grids: dict = {}
    config = load_config(a.config, overlays=a.overlays, expansions=grids)
    for line in describe_expansions(grids):  # YAML comments: the output stays valid YAML
        print(f"# {line}")
    print(yaml.safe_dump(config, sort_keys=False))


def cmd_init(a):
    from .init_experiment import init_experiment, summary

    config = init_experiment(a.data, a.out, name=a.name, scale=a.scale, force=a.force)
    print(f"wrote {a.out}: {summary(config)}")
    print(f"run it:   snakemake --cores {2 if a.scale == 'cpu' else 8} --configfile {a.out}")
    print(f"progress: lmdlt status {config['results_dir']}/{config['dataset']['name']}")


def cmd_job_server(a):
    from .job_server import serve

    serve(a.socket, owner_pid=a.owner_pid, idle_timeout=a.idle_timeout, preload=not a.no_preload)


def cmd_status(a):
    from .status import status_text

    print(status_text(a.path, include_all=a.all))


def cmd_bundle(a):
    from .bundle import bundle_summary, make_bundle

    out = make_bundle(a.experiment, a.row, a.out, images=a.images)
    print(f"wrote {bundle_summary(out)}")
    print(f"check it: lmdlt verify {out}")


def cmd_verify(a):
    from .bundle import BundleError, report_text, verify_bundle, verify_problems

    result = verify_bundle(a.bundle, image_cache=a.images, threads=a.threads)
    print(report_text(a.bundle, result))
    problems = verify_problems(result)
    if problems:
        raise BundleError(f"{len(problems)} check(s) or metric(s) differ, first: {problems[0]}")
    print(f"verified: every provenance check holds and all {len(result['metrics'])} metric values "
          "re-score equal")


def cmd_runs(a):
    from .runs import print_runs

    print_runs(a.results_dir, where=a.where, columns=a.columns, csv=a.csv, parquet=a.parquet,
               all_columns=a.all_columns)


def cmd_unlock(a):
    from .run_lock import unlock

    print(unlock(a.path, force=a.force))


STAGE1_PARAMS_HELP = ("the encoder's stage-1 variant config (JSON, as train-stage1 --params got "
                      "it): the input must record its config hash, else an error naming both")
METRICS_OUT_HELP = ("also score the output on the test split into this metrics.json (what "
                    "`lmdlt evaluate` writes; the pipeline always passes it)")


# Help for the options many subcommands share (an option's own help= wins).
COMMON_HELP = {
    "--seed": "random seed of the run (the pipeline's seed{N} wildcard)",
    "--out": "output file; written atomically (a temporary name, then renamed)",
    "--threads": "torch CPU threads (the Snakemake rule's threads)",
    "--tracking": ("experiment tracking (JSON: mlflow, tensorboard, dir, experiment, run; the "
                   "config's tracking section as the rules pass it); default off (lmdlt.tracking)"),
    "--checkpoint": "stage-1 checkpoint (model.pt)",
    "--split": "split manifest (split.parquet)",
    "--images": "decoded-image cache (images_<size>px.h5)",
    "--features": "feature cache of a stage-1 checkpoint (features.h5)",
    "--predictions": "a features.h5 or stage-2 predictions.h5 to score",
    "--split-name": "split to score (test by default; val for model selection checks)",
    "--rows": "the table's rows as JSON: label, stage-1/stage-2 variants, metric files per seed",
    "--metrics": "metric columns, in order (lmdlt.metrics names)",
    "--groups": "head/medium/tail rule as JSON (the config's groups section)",
    "--title": "title printed above the table or figure",
    "--out-md": "Markdown output file",
    "--out-csv": "CSV output file (the table's numbers, unrounded)",
    "--out-tex": "LaTeX output file",
    "--out-png": "PNG output file",
    "--out-pdf": "PDF output file (optional)",
    "--spec": "the report spec as JSON (resolved from the config by lmdlt.report.spec)",
    "--fig4-png": "Fig. 4 (head/medium/tail t-SNE) PNG output",
    "--fig4-pdf": "Fig. 4 PDF output (optional)",
    "--fig5-png": "Fig. 5 (tail-class t-SNE) PNG output",
    "--fig5-pdf": "Fig. 5 PDF output (optional)",
    "manifest": "split manifest (split.parquet) to describe",
    "config": "config file (YAML) to validate",
}


def _fill_help(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _fill_help(sub)
        elif not action.help and not isinstance(action, argparse._HelpAction):
            key = action.option_strings[-1] if action.option_strings else action.dest
            action.help = COMMON_HELP.get(key)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmdlt", description=__doc__.splitlines()[0])
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    from . import __version__
    p.add_argument("--version", action="version", version=f"lmdlt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help_):
        s = sub.add_parser(name, help=help_, description=help_)
        s.set_defaults(fn=fn)
        return s

    def torch_opts(s):
        s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        s.add_argument("--device", default="auto", help="auto (CUDA if visible), cpu, cuda, cuda:N")
        s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                       help="auto: bf16 autocast on a CUDA GPU with native bf16 (8.0+), fp32 elsewhere")
        s.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                       help="channels-last memory format (auto: on CUDA)")

    s = add("cache", cmd_cache, "decode and resize every image of a source once, into an HDF5 image cache")
    s.add_argument("--dataset", type=_json, required=True, help="the config's dataset section (JSON)")
    s.add_argument("--size", type=int, required=True, help="image side in pixels")
    s.add_argument("--out", required=True)

    s = add("split", cmd_split, "build a long-tailed split manifest (Parquet)")
    s.add_argument("--dataset", type=_json, required=True, help="the config's dataset section (JSON)")
    s.add_argument("--split", type=_json, required=True, help="the config's split section (JSON)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)

    s = add("show-split", cmd_show_split, "print a split manifest's per-class counts per split and its hash")
    s.add_argument("manifest")

    s = add("split-summary", cmd_split_summary,
            "print the split a config gives for a seed (counts per class and split, hash), writing nothing")
    s.add_argument("--config", required=True, type=Path, help="a pipeline config (YAML)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--root", default=None, help="override dataset.root")

    s = add("train-stage1", cmd_train_stage1, "stage 1: train an encoder + classifier")
    s.add_argument("--split", required=True, help="split manifest (Parquet)")
    s.add_argument("--images", required=True, help="image cache (HDF5)")
    s.add_argument("--params", type=_json, required=True, help="the stage-1 variant's config (JSON)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True, help="checkpoint path (.pt)")
    s.add_argument("--tracking", type=_json, default=None)
    s.add_argument("--augment-device", default="auto", choices=["auto", "cpu", "gpu"],
                   help="training augmentation batched on the GPU (auto: on CUDA where the method's "
                        "transform allows) or per sample in the loader's CPU workers (cpu)")
    torch_opts(s)

    s = add("extract", cmd_extract, "extract features, logits and labels of every split to HDF5")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--images", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--train-views", type=int, default=0,
                   help="augmented passes of the training split to store as well (config "
                        "features.train_views; 0: none, the clean features only)")
    s.add_argument("--stage1-params", type=_json, default=None,
                   help="the stage-1 variant's config (JSON, as train-stage1 --params got it): the "
                        "checkpoint must record its config hash, else an error (the pipeline always "
                        "passes it); without it the checkpoint's config is not checked")
    s.add_argument("--metrics-out", default=None, help=METRICS_OUT_HELP)
    s.add_argument("--tracking", type=_json, default=None)
    torch_opts(s)

    s = add("train-stage2", cmd_train_stage2, "stage 2: calibrate the classifier on cached features")
    s.add_argument("--features", required=True)
    s.add_argument("--checkpoint", default=None,
                   help="stage-1 checkpoint the features must come from (provenance check)")
    s.add_argument("--split", default=None, help="split manifest the features must come from")
    s.add_argument("--params", type=_json, required=True, help="the stage-2 variant's config (JSON)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True, help="predictions (HDF5)")
    s.add_argument("--stage1-params", type=_json, default=None, help=STAGE1_PARAMS_HELP)
    s.add_argument("--metrics-out", default=None, help=METRICS_OUT_HELP)
    s.add_argument("--tracking", type=_json, default=None)
    s.add_argument("--threads", type=int, default=None)

    s = add("train-stage2-encoder", cmd_train_stage2_encoder,
            "stage 2 with encoder fine-tuning (LMD's ICC): checkpoint + images -> predictions")
    s.add_argument("--checkpoint", required=True, help="stage-1 checkpoint (.pt)")
    s.add_argument("--split", required=True, help="split manifest (Parquet)")
    s.add_argument("--images", required=True, help="image cache (HDF5)")
    s.add_argument("--params", type=_json, required=True, help="the stage-2 variant's config (JSON)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True, help="predictions (HDF5), same layout as train-stage2")
    s.add_argument("--stage1-params", type=_json, default=None, help=STAGE1_PARAMS_HELP)
    s.add_argument("--metrics-out", default=None, help=METRICS_OUT_HELP)
    s.add_argument("--tracking", type=_json, default=None)
    torch_opts(s)

    s = add("evaluate", cmd_evaluate, "metrics of a features/predictions file on the test split "
            "(re-scoring without re-training; the pipeline's producers score their own output)")
    s.add_argument("--predictions", required=True)
    s.add_argument("--groups", type=_json, default=None,
                   help="head/medium/tail rule (JSON, the config's groups section): adds the group "
                        "BACCs to the record; without it the report derives them")
    s.add_argument("--stage1-params", type=_json, default=None, help=STAGE1_PARAMS_HELP)
    s.add_argument("--stage2-params", type=_json, default=None,
                   help="the stage-2 variant's config (JSON): the predictions must record its config "
                        "hash, else an error")
    s.add_argument("--split-name", default="test")
    s.add_argument("--manifest", default=None,
                   help="split manifest: check provenance and that no evaluated image leaks into another split")
    s.add_argument("--out", required=True)

    s = add("report-table", cmd_report_table, "results table (Markdown + CSV), mean +- std over seeds")
    s.add_argument("--rows", type=_json, required=True)
    s.add_argument("--metrics", type=_json, required=True)
    s.add_argument("--groups", type=_json, required=True)
    s.add_argument("--title", default="Results")
    s.add_argument("--out-md", required=True)
    s.add_argument("--out-csv", required=True)

    s = add("report-results-page", cmd_report_results_page,
            "the results page (docs/results.md) from a comparison table's CSV, with its reading")
    s.add_argument("--table", required=True, help="the comparison table's CSV (a paper-style table "
                   "with the paired bootstrap against its reference row)")
    s.add_argument("--naive", default=None, help="the same table of the naive-split experiment (CSV)")
    s.add_argument("--curve", nargs="*", default=None,
                   help="stage-1 checkpoints whose per-epoch validation BACC is the learning curve")
    s.add_argument("--budgets", nargs="*", default=None,
                   help="stage-1 checkpoints of the curve's schedules: what each one ends at (its "
                        "metrics.json beside it; the stage 2 --budget-stage2 on its features)")
    s.add_argument("--budget-stage2", default="crt",
                   help="the stage-2 variant whose test BACC the budget table shows ('' for none)")
    s.add_argument("--benchmarks", default=None, help="the experiment's Snakemake benchmark folder")
    s.add_argument("--meta", type=_json, required=True,
                   help="title, command, machine, budget, table_title, curve_note, budget_note (JSON: the "
                        "config's report.results_page)")
    s.add_argument("--out", required=True, help="the page (Markdown); its CSVs go to <dir>/results/")

    s = add("report-figure", cmd_report_figure, "per-class recall figure")
    s.add_argument("--rows", type=_json, required=True)
    s.add_argument("--title", default="")
    s.add_argument("--out", required=True, help="PNG")
    s.add_argument("--out-pdf", default=None)

    s = add("report-paper-table", cmd_report_paper_table,
            "one of the paper's Tables 1-5 (CSV, Markdown, LaTeX) from the per-run metric files")
    s.add_argument("--spec", type=_json, required=True,
                   help="the table's resolved spec (JSON; lmdlt.report.spec.table_specs)")
    s.add_argument("--out-csv", required=True)
    s.add_argument("--out-md", required=True)
    s.add_argument("--out-tex", required=True)

    s = add("report-combine", cmd_report_combine,
            "render one table from several experiments' CSVs side by side (Table 3: r = 100/300/500)")
    s.add_argument("csv", nargs="+", help="per-experiment table CSVs (results/<name>/tables/table3.csv)")
    s.add_argument("--title", default="Table 3: comparisons across imbalance ratios (AUC, BACC)")
    s.add_argument("--label", default="table3", help="LaTeX label (tab:<label>)")
    s.add_argument("--absent", nargs="*", default=[], help="experiments asked for but not run yet (noted)")
    s.add_argument("--out-md", required=True)
    s.add_argument("--out-tex", required=True)

    s = add("report-sweep-figure", cmd_report_sweep_figure, "Figs. 3, 6, 7: metrics against a swept setting")
    s.add_argument("--spec", type=_json, required=True)
    s.add_argument("--out-png", required=True)
    s.add_argument("--out-pdf", default=None)

    s = add("report-tsne", cmd_report_tsne, "Figs. 4-5: t-SNE of features (head/medium/tail, tail classes)")
    s.add_argument("--spec", type=_json, required=True)
    s.add_argument("--groups", type=_json, required=True, help="head/medium/tail rule (JSON)")
    s.add_argument("--fig4-png", required=True)
    s.add_argument("--fig4-pdf", default=None)
    s.add_argument("--fig5-png", required=True)
    s.add_argument("--fig5-pdf", default=None)

    s = add("report-class-distribution", cmd_report_class_distribution,
            "images per class in every split, per seed")
    s.add_argument("--spec", type=_json, required=True)
    s.add_argument("--out-png", required=True)
    s.add_argument("--out-pdf", default=None)

    s = add("report-html", cmd_report_html,
            "HTML pages for the Snakemake report: a table from its CSV(s), or the run's config and provenance")
    s.add_argument("what", choices=["table", "provenance"],
                   help="table: one table page from its CSV(s); provenance: the run's config and provenance page")
    s.add_argument("--csv", nargs="+", default=[], help="table: the table's CSV (several: one paper table across experiments)")
    s.add_argument("--title", default="", help="table: the page's title")
    s.add_argument("--absent", nargs="*", default=[], help="table: experiments asked for but not run yet (noted)")
    s.add_argument("--config", type=_json, default=None, help="provenance: the run's config (JSON)")
    s.add_argument("--rows", type=_json, default=None, help="provenance: the report rows (JSON, as report-table)")
    s.add_argument("--out-yaml", default=None, help="provenance: the config as YAML, too")
    s.add_argument("--out", required=True, help="the HTML page")

    s = add("init", cmd_init,
            "write a ready experiment config for your own images (an ImageFolder tree or a CSV "
            "of path,label[,group]) from a look at the data")
    s.add_argument("data", help="an ImageFolder root (one sub-folder per class) or a CSV file "
                                "listing path,label[,group] (paths relative to the CSV's folder)")
    s.add_argument("--out", default="experiment.yaml",
                   help="config file to write (default experiment.yaml); run it with "
                        "snakemake --configfile <out>")
    s.add_argument("--name", default=None,
                   help="experiment name, the results/<name>/ folder (default: from the data's folder name)")
    s.add_argument("--scale", default="cpu", choices=["cpu", "gpu"],
                   help="cpu: 28 px, small ResNet (width 16), 20 epochs; gpu: 224 px, resnet18, "
                        "the paper's epochs and ICC scale")
    s.add_argument("--force", action="store_true", help="overwrite --out when it exists")

    s = add("status", cmd_status,
            "print every job of an experiment that is running, done or failed, from its logs "
            "(stage, variant, seed, epoch/iteration k/N, last val BACC, elapsed, ETA)")
    s.add_argument("path", nargs="?", default="results",
                   help="results/<dataset> (default: every experiment under results/)")
    s.add_argument("--all", action="store_true",
                   help="also list finished evaluation and report jobs")

    s = add("unlock", cmd_unlock,
            "remove an experiment's run lock (results/<experiment>/.lmdlt-run.lock) left by a run "
            "that is gone; a lock whose run is alive on this host is kept unless --force")
    s.add_argument("path", help="results/<experiment>")
    s.add_argument("--force", action="store_true",
                   help="remove it even if its process is alive on this host")

    s = add("job-server", cmd_job_server,
            "serve lmdlt commands from one process that imports torch once (the workflow starts "
            "one per local run: lmdlt/job_server.py)")
    s.add_argument("--socket", required=True, help="the Unix socket to listen on")
    s.add_argument("--owner-pid", type=int, default=None, help="exit when this process is gone")
    s.add_argument("--idle-timeout", type=float, default=None,
                   help="exit after this many seconds without a job")
    s.add_argument("--no-preload", action="store_true", help="import nothing ahead (tests)")

    s = add("bundle", cmd_bundle,
            "share a row: one archive with everything behind a results-table row, for every seed "
            "(configs, split, checkpoints, predictions, metrics, provenance, versions, test images)")
    s.add_argument("experiment", help="the experiment's results folder, results/<name>")
    s.add_argument("row", help="the row: s1 or s1/s2 (e.g. rrl/icc), or its label in a table (e.g. LMD)")
    s.add_argument("--out", default=None,
                   help="the archive (.tar; .tar.gz compressed); default <name>_<s1>_<s2>.tar here")
    s.add_argument("--images", default="test", choices=["test", "all", "none"],
                   help="decoded images bundled: the test splits' (default; what re-scoring needs), "
                        "every split's, or none (verify then needs --images CACHE)")

    s = add("verify", cmd_verify,
            "check a bundle member by member and re-score its checkpoint(s) on its split, on the "
            "CPU: equal or not, metric by metric")
    s.add_argument("bundle", help="a file written by lmdlt bundle")
    s.add_argument("--images", default=None,
                   help="an image cache to re-extract from (only for a bundle made with --images none)")
    s.add_argument("--threads", type=int, default=1)

    s = add("runs", cmd_runs,
            "one table of every run under a results folder: metrics and parameters per (experiment, "
            "seed, stage-1, stage-2) run, filterable, as CSV or Parquet")
    s.add_argument("results_dir", nargs="?", default="results",
                   help="a results folder (default results) or one experiment's folder")
    s.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                   help="keep the runs whose column equals the value (also !=, <, <=, >, >=); "
                        "repeat to combine, e.g. --where method=icc --where seed=0")
    s.add_argument("--columns", nargs="+", default=None,
                   help="columns to print (default: the run, its metrics, the parameters that vary)")
    s.add_argument("--all-columns", action="store_true", help="print every column")
    s.add_argument("--csv", default=None, help="also write the (filtered) table as CSV")
    s.add_argument("--parquet", default=None, help="also write the (filtered) table as Parquet")

    s = add("validate-config", cmd_validate_config,
            "validate a config file and print it with defaults filled and grids expanded")
    s.add_argument("config", type=Path, nargs="?")
    s.add_argument("--explain", action="store_true",
                   help="print every method param with its default, meaning and source (with a "
                        "config: its variants' methods, with the values it gives)")
    s.add_argument("overlays", type=Path, nargs="*",
                   help="overlays merged over it in order, as by snakemake --configfile")
    _fill_help(p)
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `lmdlt` command: a job of a local Snakemake run goes to its job server
        from .job_server import run_in_server

        code = run_in_server(sys.argv[1:])
        if code is not None:
            return code
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if argv is None:  # a job's own process: host, pid and heartbeat in its log (lmdlt status)
        from .status import job_started

        job_started(args.command)
    try:
        args.fn(args)
    except Exception as e:  # noqa: BLE001 - user errors one line, bugs with traceback (lmdlt.errors)
        from .errors import report

        return report(f"lmdlt {args.command}", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
