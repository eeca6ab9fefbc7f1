"""Shared test helpers: running Snakemake on a config in a temporary directory."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LMDLT_DATA", REPO.parent / "shared" / "data"))


def snakemake_bin() -> str:
    exe = Path(sys.executable).with_name("snakemake")
    return str(exe) if exe.exists() else (shutil.which("snakemake") or "snakemake")


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The snakemake CLI on REPO/Snakefile in ``workdir`` (which holds its own config.yaml)."""
    cmd = [snakemake_bin(), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", "none", "--scheduler", "greedy", *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def dry_run_jobs(workdir: Path) -> dict[str, int]:
    """Jobs per rule that a dry-run schedules ({} when there is nothing to do)."""
    proc = run_snakemake(workdir, "--dry-run", "--quiet", "rules")
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    block = text.split("Job stats:", 1)[1]
    jobs = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def read_config(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "config.yaml").read_text())


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set LMDLT_DATA or place ../shared/data)")
    return SHARED_DATA


DIGITS_SPLIT = {"protocol": "cui", "imbalance_ratio": 50, "val_per_class": 15, "test_per_class": 30,
                "n_cap": None, "class_order": "count"}


def build_digits_split(d: Path, split_cfg: dict | None = None) -> Path:
    """The tiny digits benchmark in ``d``: ``images.h5`` (8 px cache) and ``split.parquet``
    (Cui profile r = 50, seed 0, unless ``split_cfg``); returns ``d``."""
    from lmdlt.data.image_cache import build_image_cache
    from lmdlt.data.sources import get_source
    from lmdlt.data.splits import build_split, write_manifest
    from lmdlt.io import provenance

    split_cfg = split_cfg or DIGITS_SPLIT
    src = get_source("digits")
    build_image_cache(src, 8, d / "images.h5", provenance("image_cache", {"size": 8}))
    index = src.index()
    write_manifest(d / "split.parquet", build_split(index, split_cfg, 0), index.class_names,
                   provenance("split", split_cfg, seed=0))
    return d


TINY_EXPERIMENT = {
    "dataset": {"name": "tiny", "source": "digits", "image_size": 8},
    "split": {"protocol": "cui", "imbalance_ratio": 50, "val_per_class": 15, "test_per_class": 30},
    "seeds": [0, 1],
    "groups": {"rule": "rank", "sizes": [3, 4, 3]},
    "tracking": {"mlflow": True, "tensorboard": True},
    "stage1": {"ce": {"method": "ce", "label": "CE", "epochs": 3, "batch_size": 64}},
    "stage2": {
        "crt": {"method": "crt", "label": "cRT", "params": {"epochs": 2, "batch_size": 64}},
        "icc": {"method": "icc", "label": "ICC",
                "params": {"iterations": 2, "virtual_per_class": 20, "m_epochs": 1,
                           "m_batch_size": 64, "e_batch_size": 64, "m_lr": 0.05, "e_lr": 0.001}},
    },
    "report": {"tables": {"table1": {"rows": [{"run": "ce/icc", "label": "LMD w/o RRL"}]}}},
}


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory) -> Path:
    """A finished two-seed experiment, ``<tmp>/results/tiny``, made by the commands the rules
    run (no Snakemake; seconds): image cache, splits, CE (3 epochs), its features and metrics,
    ``ce/crt`` and ``ce/icc`` (2 iterations) with theirs, every job tracked to MLflow and
    TensorBoard under ``tiny/tracking`` as the rules pass it, and ``report/config.yaml``."""
    import json

    from lmdlt.cli import main
    from lmdlt.config import validate_config
    from lmdlt.data.image_cache import cache_dir_name
    from lmdlt.tracking import TrackingParam

    results = tmp_path_factory.mktemp("tiny") / "results"
    config = validate_config(json.loads(json.dumps(TINY_EXPERIMENT)))
    root = results / "tiny"
    ds, j = config["dataset"], json.dumps
    images = results / "image_cache" / cache_dir_name(ds) / "images_8px.h5"
    assert main(["cache", "--dataset", j(ds), "--size", "8", "--out", str(images)]) == 0
    s1 = config["stage1"]["ce"]
    for seed in config["seeds"]:
        d = root / f"seed{seed}"
        split = d / "split.parquet"
        assert main(["split", "--dataset", j(ds), "--split", j(config["split"]), "--seed", str(seed),
                     "--out", str(split)]) == 0
        common = ["--split", str(split), "--threads", "1"]
        track = str(TrackingParam(config["tracking"], str(root), f"seed{seed}/stage1/ce"))
        ckpt = d / "stage1/ce/model.pt"
        assert main(["train-stage1", *common, "--images", str(images), "--params", j(s1), "--seed",
                     str(seed), "--device", "cpu", "--tracking", track, "--out", str(ckpt)]) == 0
        assert main(["extract", *common, "--images", str(images), "--checkpoint", str(ckpt),
                     "--device", "cpu", "--stage1-params", j(s1), "--tracking", track,
                     "--out", str(d / "stage1/ce/features.h5"),
                     "--metrics-out", str(d / "stage1/ce/metrics.json")]) == 0
        for s2, cmd in (("crt", ["train-stage2", "--features", str(d / "stage1/ce/features.h5")]),
                        ("icc", ["train-stage2-encoder", "--images", str(images), "--device", "cpu"])):
            out = d / f"stage2/ce/{s2}"
            track = str(TrackingParam(config["tracking"], str(root), f"seed{seed}/stage2/ce/{s2}"))
            assert main([*cmd, *common, "--checkpoint", str(ckpt), "--params", j(config["stage2"][s2]),
                         "--stage1-params", j(s1), "--seed", str(seed), "--tracking", track,
                         "--out", str(out / "predictions.h5"),
                         "--metrics-out", str(out / "metrics.json")]) == 0
    (root / "report").mkdir()
    (root / "report" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root
