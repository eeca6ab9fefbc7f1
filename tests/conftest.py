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
