"""Shared test helpers: running Snakemake on a config in a temporary directory, the small test
configs (tests/configs/*.yaml), the tiny digits benchmark and experiment, image trees, and the
time each test file took (printed at the end of a run)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LMDLT_DATA", REPO.parent / "shared" / "data"))
#: small experiment configs the tests share (like a workflow's .test/ configs)
CONFIGS = Path(__file__).resolve().parent / "configs"
#: files the tests read as they are (e.g. a config with a YAML syntax error)
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load_test_config(name: str) -> dict:
    """``tests/configs/<name>.yaml``, a fresh copy on every call (change it freely)."""
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


@pytest.fixture(scope="session")
def small_config():
    """The loader of the small test configs: ``small_config("digits")`` (:func:`load_test_config`)."""
    return load_test_config


def image_tree(root: Path, counts: dict[str, int], bad: str | None = None) -> Path:
    """An ImageFolder tree of 8 x 8 PNGs, ``counts`` images per class; ``bad``: a class whose
    first image is a corrupt file."""
    from PIL import Image

    rng = np.random.default_rng(42)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i:03d}.png")
    if bad is not None:
        (root / bad / "000.png").write_bytes(b"not a png")
    return root


def folder_config(root: Path, results_dir: str = "results", **split) -> dict:
    """tests/configs/folder.yaml on the image tree ``root``."""
    config = load_test_config("folder")
    config["results_dir"] = results_dir
    config["dataset"]["root"] = str(root)
    config["split"].update(split)
    return config


def truncate(path: Path) -> Path:
    """Keep the first half of a file's bytes (an interrupted copy or a full disk)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --- the time each test file took, all phases (fixtures included), printed after --durations
_FILE_SECONDS: dict[str, float] = defaultdict(float)
#: files listed at the end of a run, slowest first
FILE_DURATIONS_SHOWN = 20


def pytest_runtest_logreport(report):
    _FILE_SECONDS[report.nodeid.split("::", 1)[0]] += report.duration


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    if not _FILE_SECONDS:
        return
    ranked = sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])
    terminalreporter.write_sep("=", f"slowest {min(len(ranked), FILE_DURATIONS_SHOWN)} test files "
                                    "(setup + call + teardown)")
    for path, seconds in ranked[:FILE_DURATIONS_SHOWN]:
        terminalreporter.write_line(f"{seconds:8.2f}s {path}")
    rest = ranked[FILE_DURATIONS_SHOWN:]
    if rest:
        terminalreporter.write_line(f"{sum(s for _, s in rest):8.2f}s {len(rest)} other files")


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


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """The tiny digits benchmark of :func:`build_digits_split` (``images.h5``, ``split.parquet``),
    built once per session: read it, write elsewhere."""
    return build_digits_split(tmp_path_factory.mktemp("digits"))


def link_digits(digits: Path, d: Path) -> Path:
    """``d`` with the ``digits`` fixture's ``images.h5`` and ``split.parquet`` linked into it: a
    folder of the test's own, to write its outputs beside them."""
    for name in ("images.h5", "split.parquet"):
        (d / name).symlink_to(digits / name)
    return d


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
    config = validate_config(load_test_config("tiny-experiment"))
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


#: the split of the ``stage1`` fixture
STAGE1_SPLIT = {"protocol": "cui", "imbalance_ratio": 10, "val_per_class": 15, "test_per_class": 30,
                "n_cap": None, "class_order": "count"}


@pytest.fixture(scope="session")
def stage1(tmp_path_factory):
    """Digits at 8 px: image cache, split manifest (STAGE1_SPLIT, seed 0) and a one-epoch CE
    checkpoint, each recording the dataset in its provenance; built once per session: read it,
    write elsewhere."""
    from lmdlt.config import validate_variant
    from lmdlt.data.image_cache import build_image_cache
    from lmdlt.data.sources import get_source
    from lmdlt.data.splits import build_split, write_manifest
    from lmdlt.io import provenance
    from lmdlt.stage1.trainer import train_stage1

    d = tmp_path_factory.mktemp("stage1")
    src = get_source("digits")
    build_image_cache(src, 8, d / "images.h5",
                      provenance("image_cache", {"source": "digits", "root": None, "options": {},
                                                 "image_size": 8}))
    index = src.index()
    write_manifest(d / "split.parquet", build_split(index, STAGE1_SPLIT, 0), index.class_names,
                   provenance("split", {"dataset": {"source": "digits", "root": None, "options": {}},
                                        "split": STAGE1_SPLIT}, seed=0))
    cfg = validate_variant("stage1", {"method": "ce", "epochs": 1, "batch_size": 64})
    train_stage1(d / "split.parquet", d / "images.h5", cfg, 0, d / "model.pt", threads=1, device="cpu")
    return d


#: views of the training split in the ``chain`` fixture's features files
N_VIEWS = 3


@pytest.fixture(scope="session")
def chain(digits, tmp_path_factory):
    """Stage 2 on augmented views (``features.train_views``): a 1-epoch digits CE checkpoint
    (padded crop + horizontal flip) and one without augmentation, beside the ``digits`` split
    and cache, and features files with 0 and N_VIEWS views (the latter twice); built once per
    session: read it, write elsewhere."""
    from lmdlt.config import validate_variant
    from lmdlt.features import extract_features
    from lmdlt.stage1.trainer import train_stage1

    d = link_digits(digits, tmp_path_factory.mktemp("views"))
    cfg = validate_variant("stage1", {"method": "ce", "epochs": 1, "batch_size": 32, "lr": 0.05,
                                      "augment": {"crop_padding": 1, "hflip": True}})
    train_stage1(d / "split.parquet", d / "images.h5", cfg, 0, d / "model.pt", threads=1, device="cpu")
    plain = validate_variant("stage1", {"method": "ce", "epochs": 1, "batch_size": 32, "lr": 0.05})
    train_stage1(d / "split.parquet", d / "images.h5", plain, 0, d / "plain.pt", threads=1, device="cpu")
    for name, n, ckpt in (("f0.h5", 0, "model.pt"), ("f3.h5", N_VIEWS, "model.pt"),
                          ("f3b.h5", N_VIEWS, "model.pt"), ("plain3.h5", N_VIEWS, "plain.pt")):
        extract_features(d / ckpt, d / "split.parquet", d / "images.h5", d / name, threads=1,
                         device="cpu", train_views=n)
    return d
