"""A stage killed mid-write leaves no file at its output path, and the re-run is correct."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lmdlt.config import validate_variant
from lmdlt.data.image_cache import build_image_cache
from lmdlt.data.sources import get_source
from lmdlt.data.splits import build_split, write_manifest
from lmdlt.features import FeatureSet, extract_features
from lmdlt.io import provenance
from lmdlt.stage1.trainer import train_stage1

SPLIT = {"protocol": "cui", "imbalance_ratio": 10, "val_per_class": 15, "test_per_class": 30,
         "n_cap": None, "class_order": "count"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    src = get_source("digits")
    # 32 px so that extraction takes long enough to be caught mid-write
    build_image_cache(src, 32, d / "images.h5", provenance("image_cache", {"size": 32}))
    index = src.index()
    write_manifest(d / "split.parquet", build_split(index, SPLIT, 0), index.class_names,
                   provenance("split", SPLIT, seed=0))
    cfg = validate_variant("stage1", {"method": "ce", "epochs": 1, "batch_size": 128})
    train_stage1(d / "split.parquet", d / "images.h5", cfg, 0, d / "model.pt", threads=1, device="cpu")
    return d


def test_feature_extraction_killed_mid_write(trained, tmp_path):
    out = tmp_path / "features.h5"
    cmd = [sys.executable, "-m", "lmdlt.cli", "extract", "--checkpoint", str(trained / "model.pt"),
           "--split", str(trained / "split.parquet"), "--images", str(trained / "images.h5"),
           "--threads", "1", "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = tmp_path / f".features.h5.tmp-{proc.pid}"
    deadline = time.time() + 120
    while not tmp.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    assert tmp.exists(), "extraction finished before it could be killed mid-write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing that looks complete
    # the re-run produces a correct file and sweeps the killed writer's temporary away
    extract_features(trained / "model.pt", trained / "split.parquet", trained / "images.h5", out,
                     threads=1, device="cpu")
    assert not tmp.exists()
    ref = tmp_path / "reference.h5"
    extract_features(trained / "model.pt", trained / "split.parquet", trained / "images.h5", ref,
                     threads=1, device="cpu")
    a, b = FeatureSet(out), FeatureSet(ref)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a[split]["features"], b[split]["features"])
        assert list(a[split]["ids"]) == list(b[split]["ids"])
