"""Helpers shared by the benchmark scripts (not a benchmark itself).

- ``machine()``: CPU model, ``nproc``, torch version and threads, load average, git commit;
- ``ham_subsample()``: a HAM10000 subsample (first ``n`` images of a fixed shuffle of the
  metadata) as its own dataset root (the CSV subset + a symbolic link to the JPEG folder), its
  decoded-image cache and a lesion-grouped random 7:1:2 split manifest;
- ``markdown()``: a Markdown table.

Every script compares a candidate with its baseline inside one process run, repetitions
interleaved, and reports medians and their ratio.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LMDLT_DATA", REPO.parent / "shared" / "data"))
HAM = SHARED_DATA / "ham10000"


def loadavg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_model()}, nproc {os.cpu_count()}, {gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} thread(s)), load average {loadavg()}, commit {git_commit()}")


def median(values) -> float:
    return float(statistics.median(values))


def markdown(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def ham_subsample(workdir: Path, n: int = 2000, size: int = 28, seed: int = 0) -> dict:
    """A HAM10000 subsample of ``n`` images under ``workdir``: source, cache, split manifest."""
    import numpy as np
    import pandas as pd

    from lmdlt.data.image_cache import build_image_cache
    from lmdlt.data.sources import get_source
    from lmdlt.data.splits import build_split, write_manifest
    from lmdlt.io import provenance

    if not (HAM / "HAM10000_metadata.csv").is_file():
        raise SystemExit(f"HAM10000 not found under {HAM} (set LMDLT_DATA)")
    workdir = Path(workdir)
    root = workdir / "ham"
    root.mkdir(parents=True, exist_ok=True)
    meta = pd.read_csv(HAM / "HAM10000_metadata.csv")
    meta = meta.iloc[np.random.default_rng(seed).permutation(len(meta))[:n]]
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    if not (root / "images").exists():
        (root / "images").symlink_to(HAM / "images_200x150")
    src = get_source("ham10000", str(root), {"image_dirs": ["images"]})
    cache = workdir / f"images_{size}px.h5"
    if not cache.exists():
        build_image_cache(src, size, cache, provenance("image_cache", {"bench": n, "size": size}))
    split_cfg = {"protocol": "random", "val_fraction": 0.1, "test_fraction": 0.2, "grouped": True}
    manifest = workdir / "split.parquet"
    index = src.index()
    table = build_split(index, split_cfg, seed)
    if not manifest.exists():
        write_manifest(manifest, table, index.class_names, provenance("split", split_cfg, seed=seed))
    return {"source": src, "root": root, "cache": cache, "manifest": manifest, "table": table,
            "size": size, "n": n}


# ------------------------------------------------------------------ the paper's configuration set

EXPERIMENTS = REPO / "workflow" / "experiments"
OVERLAYS = EXPERIMENTS / "overlays"

# every Snakemake invocation the README documents for the paper's tables (base config, overlays)
INVOCATIONS = {
    "digits-LT (config.yaml)": [REPO / "config.yaml"],
    "digits-LT + LMD sweeps": [REPO / "config.yaml", OVERLAYS / "lmd-sweeps-digits.yaml"],
    "HAM10000-LT": [EXPERIMENTS / "ham10000-lt.yaml"],
    "HAM10000-LT + baselines": [EXPERIMENTS / "ham10000-lt.yaml", OVERLAYS / "baselines-ham10000.yaml"],
    "HAM10000-LT + LMD": [EXPERIMENTS / "ham10000-lt.yaml", OVERLAYS / "lmd-ham10000.yaml"],
    "ISIC2019-LT r=100": [EXPERIMENTS / "isic2019-lt.yaml"],
    "ISIC2019-LT r=300": [EXPERIMENTS / "isic2019-lt.yaml", OVERLAYS / "isic2019-lt-r300.yaml"],
    "ISIC2019-LT r=500": [EXPERIMENTS / "isic2019-lt.yaml", OVERLAYS / "isic2019-lt-r500.yaml"],
    "ISIC-Archive-LT": [EXPERIMENTS / "isic-archive-lt.yaml"],
    "Hyper-Kvasir": [EXPERIMENTS / "hyper-kvasir.yaml"],
}


def merged_config(configfiles, overrides: dict | None = None) -> dict:
    """The validated config of ``--configfile A B --config ...`` (later files update earlier)."""
    import yaml

    from lmdlt.config import validate_config

    def update(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = update(a.get(k) or {}, v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    cfg: dict = {}
    for f in configfiles:
        update(cfg, yaml.safe_load(Path(f).read_text()) or {})
    update(cfg, overrides or {})
    return validate_config(cfg)


def data_overrides(configfiles, tmp: Path) -> dict:
    """``--config dataset=...``: the real root under SHARED_DATA where its images are there
    (HAM10000), else a tiny fake tree (the test suite's), since no other images are here."""
    import json  # noqa: F401

    cfg = merged_config(configfiles)
    source = cfg["dataset"]["source"]
    if source == "ham10000":
        return {"dataset": {"root": str(HAM)}}
    if source in ("digits", "cifar", "medmnist"):
        return {}
    sys_path = str(REPO / "tests")
    import sys
    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    from test_experiments import FAKE  # the fake trees of the experiment dry-run tests

    root = Path(tmp) / f"data-{source}"
    if not root.exists():
        root.mkdir(parents=True)
        FAKE[source](root)
    ds = {"root": str(root)}
    if source == "isic_lists":
        ds["options"] = {"lists": str(SHARED_DATA / "isic_lt_splits" / "isic_archive_14class")}
    return {"dataset": ds}


def snakemake(workdir: Path, *args: str) -> "subprocess.CompletedProcess":
    import sys

    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", "none", *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def config_args(configfiles, overrides: dict) -> list[str]:
    import json

    args = ["--configfile", *map(str, configfiles)]
    if overrides:
        args += ["--config", *(f"{k}={json.dumps(v)}" for k, v in overrides.items())]
    return args


def job_stats(text: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's "Job stats" block (with "total")."""
    import re

    if "Job stats:" not in text:
        return {}
    jobs = {}
    for line in text.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        jobs[m.group(1)] = int(m.group(2))
    return jobs
