"""Cache reuse: what the paper's tables cost with this pipeline versus one script per row.

1. Counted from the DAG: ``snakemake -n --forceall`` of every documented invocation (the five
   experiment configs, their overlays, and the default config.yaml, which declares all five
   tables on digits-LT), each job parsed from the dry-run (rule, output, wildcards). Jobs of
   several invocations that write the same output with the same settings are counted once (the
   overlays reuse their base experiment's encoders). The one-script-per-row baseline, as the
   reference repositories work: every table row (``lmdlt.config.pairs``) and seed is one script
   run that decodes the data and trains its own encoder.
2. Timed on a scaled-down real run (digits-LT, 8 px, 1 seed, CE for 2 epochs, stage 2 cRT /
   tau-norm / NCM): the pipeline run versus one fresh run per row; then adding one stage-2
   variant (LWS) to the finished run versus re-running everything (``--forceall``).

    python benchmarks/cache_reuse.py             # counts + timed small run (a few minutes)
    python benchmarks/cache_reuse.py --counts-only
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (INVOCATIONS, REPO, config_args, data_overrides, loadavg, machine,  # noqa: E402
                     markdown, median, merged_config, snakemake)

from lmdlt.config import pairs  # noqa: E402

TRAIN_RULES = {"train_stage1"}
REPORT_RULES = {"results_table", "per_class_recall_figure", "paper_table", "sweep_figure",
                "tsne_figures", "class_distribution_figure", "all", "combined_table"}


def _h(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parse_jobs(text: str) -> list[dict]:
    """Jobs of a dry-run: rule, output, wildcards."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \S+:)", text):
        m = re.match(r"(?:local)?rule (\S+):", block)
        if not m:
            continue
        out = re.search(r"^\s+output: (.*)$", block, re.M)
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        jobs.append({"rule": m.group(1), "output": out.group(1) if out else "", "wildcards": wildcards})
    return jobs


def job_key(job: dict, cfg: dict, invocation: str) -> tuple:
    """Same output + same settings = the same job (the pipeline's cache would reuse it)."""
    if job["rule"] in REPORT_RULES:
        return (invocation, job["rule"], job["output"])
    w = job["wildcards"]
    settings = {"dataset": cfg["dataset"], "split": cfg["split"]}
    if "s1" in w:
        settings["s1"] = cfg["stage1"][w["s1"]]
    if "s2" in w:
        settings["s2"] = cfg["stage2"][w["s2"]]
    return (job["rule"], job["output"], _h(settings))


def count(tmp: Path) -> tuple[list[list], dict]:
    rows, union_jobs, union_rows = [], set(), set()
    totals = {"dry_run_s": 0.0}
    for name, files in INVOCATIONS.items():
        over = data_overrides(files, tmp)
        cfg = merged_config(files, over)
        work = tmp / ("w-" + re.sub(r"\W+", "_", name))
        work.mkdir()
        t0 = time.perf_counter()
        proc = snakemake(work, "-n", "--forceall", *config_args(files, over))
        totals["dry_run_s"] += time.perf_counter() - t0
        jobs = parse_jobs(proc.stdout + proc.stderr)
        n_train = sum(j["rule"] in TRAIN_RULES for j in jobs)
        seeds = cfg["seeds"]
        table_rows = pairs(cfg)
        for j in jobs:
            union_jobs.add(job_key(j, cfg, name))
        for s1, s2 in table_rows:
            for seed in seeds:
                union_rows.add((_h({"dataset": cfg["dataset"], "split": cfg["split"]}), seed,
                                _h(cfg["stage1"][s1]), _h(cfg["stage2"][s2]) if s2 else None))
        naive = len(table_rows) * len(seeds)
        rows.append([name, len(table_rows), len(seeds), n_train, naive, f"{naive / max(n_train, 1):.1f}x",
                     len(jobs), naive])
        print(f"  {name}: {len(jobs)} jobs, {n_train} stage-1 trainings (load {loadavg()})", flush=True)
    union_train = sum(k[0] in TRAIN_RULES for k in union_jobs)
    totals.update(union_jobs=len(union_jobs), union_train=union_train, union_rows=len(union_rows))
    return rows, totals


SMALL = {
    "dataset": {"name": "digits-lt", "source": "digits", "image_size": 8},
    "split": {"protocol": "cui", "imbalance_ratio": 50, "val_per_class": 15, "test_per_class": 30},
    "seeds": [0],
    "groups": {"rule": "rank", "sizes": [3, 4, 3]},
    "compute": {"threads": 1},
    "stage1": {"ce": {"method": "ce", "label": "CE", "epochs": 2, "batch_size": 64}},
    "stage2": {"crt": {"method": "crt", "label": "cRT", "params": {"epochs": 2}},
               "tau_norm": {"method": "tau_norm", "label": "tau-norm"},
               "ncm": {"method": "ncm", "label": "NCM"}},
}
NEW_VARIANT = {"lws": {"method": "lws", "label": "LWS", "params": {"epochs": 2}}}


def _run(work: Path, cfg: dict, *args: str) -> float:
    work.mkdir(exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    snakemake(work, "--cores", "1", *args)
    return time.perf_counter() - t0


def timed(tmp: Path) -> list[list]:
    load0 = loadavg()
    # one script per row: a fresh run that holds only that row (its own encoder, its own data)
    per_row = []
    for s2 in [None] + list(SMALL["stage2"]):
        cfg = copy.deepcopy(SMALL)
        cfg["stage2"] = {s2: SMALL["stage2"][s2]} if s2 else {}
        per_row.append(_run(tmp / f"row-{s2}", cfg))
    full = _run(tmp / "pipeline", SMALL)
    print(f"  pipeline {full:.1f} s, per-row runs {[round(t, 1) for t in per_row]} (load {loadavg()})", flush=True)
    cfg = copy.deepcopy(SMALL)
    cfg["stage2"].update(NEW_VARIANT)
    add = _run(tmp / "pipeline", cfg)
    rerun = _run(tmp / "pipeline", cfg, "--forceall")
    print(f"  add LWS {add:.1f} s, re-run all {rerun:.1f} s (load {loadavg()})", flush=True)
    naive = sum(per_row)
    return [
        ["4 rows (CE, + cRT, + tau-norm, + NCM), 1 seed: one fresh run per row", f"{naive:.1f}", "1.00", load0],
        ["same 4 rows: this pipeline, one run", f"{full:.1f}", f"{full / naive:.2f}", ""],
        ["add LWS to the finished run: re-run everything (--forceall)", f"{rerun:.1f}", "1.00", ""],
        ["add LWS to the finished run: this pipeline (only the new jobs)", f"{add:.1f}", f"{add / rerun:.2f}", loadavg()],
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts-only", action="store_true")
    a = ap.parse_args()
    print(f"machine: {machine()}\n")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        rows, totals = count(tmp)
        print()
        print(markdown(["invocation", "table rows", "seeds", "stage-1 trainings (DAG)",
                        "stage-1 trainings, one script per row", "ratio", "jobs (DAG)",
                        "script runs, one per row"], rows))
        print(f"\nall invocations, jobs with the same output and settings counted once: "
              f"{totals['union_train']} stage-1 trainings and {totals['union_jobs']} jobs "
              f"versus {totals['union_rows']} row x seed scripts, each training an encoder "
              f"({totals['union_rows'] / totals['union_train']:.1f}x the trainings); "
              f"dry-runs took {totals['dry_run_s']:.1f} s in all")
        if not a.counts_only:
            print()
            print(markdown(["scaled-down real run (digits-LT 8 px, snakemake --cores 1)", "wall s",
                            "ratio to baseline", "load avg"], timed(tmp)))


if __name__ == "__main__":
    main()
