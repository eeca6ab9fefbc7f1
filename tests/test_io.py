"""lmdlt.io: atomic writes (nothing half-written, the old file kept until success, a killed
writer's temporary removed; a stage killed mid-write leaves no file and its re-run is correct),
JSON and provenance records, and truncated artefacts named with the fix."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import truncate
from lmdlt.config import validate_variant
from lmdlt.data.image_cache import build_image_cache
from lmdlt.data.sources import get_source
from lmdlt.data.splits import build_split, write_manifest
from lmdlt.features import FeatureSet, extract_features
from lmdlt.io import ArtefactError, atomic_path, open_h5, provenance, read_json, sha256_json, write_json
from lmdlt.models.checkpoint import CheckpointError, load_checkpoint
from lmdlt.stage1.trainer import train_stage1


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_path_keeps_the_old_file_until_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_json_and_provenance(tmp_path):
    prov = provenance("stage2", {"b": 1, "a": [1, 2]}, {"features": "abc"}, seed=3)
    assert prov["config_hash"] == sha256_json({"a": [1, 2], "b": 1})
    assert prov["seed"] == 3 and prov["parents"] == {"features": "abc"}
    assert prov["code_version"].startswith("0.")
    write_json(tmp_path / "p.json", prov)
    assert read_json(tmp_path / "p.json") == prov


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".out.h5.tmp-{dead}"
    stale.write_bytes(b"half-written by a killed job")
    with atomic_path(tmp_path / "out.h5") as tmp:
        tmp.write_bytes(b"complete")
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_truncated_h5_and_json_and_checkpoint_name_the_file(tmp_path):
    """The same without a pipeline run: every reader of each artefact kind."""
    import h5py
    import torch

    from lmdlt.features import FeatureSet
    from lmdlt.metrics import evaluate_file
    from lmdlt.report.stats import read_test_predictions

    h5 = tmp_path / "predictions.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["provenance"] = "{}"
        f.create_dataset("test/logits", data=np.random.default_rng(0).random((2000, 10)))
    truncate(h5)
    for read in (FeatureSet, read_test_predictions,
                 lambda p: evaluate_file(p, {"rule": "rank", "sizes": [3, 4, 3]}, tmp_path / "m.json")):
        with pytest.raises(ArtefactError, match=r"'.*predictions\.h5' is truncated or corrupt.*"
                           r"rule train_stage2.*snakemake --forcerun .*predictions\.h5"):
            read(h5)
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(FileNotFoundError):
        with open_h5(tmp_path / "absent.h5"):
            pass

    js = tmp_path / "metrics.json"
    js.write_text('{"metrics": {"bacc": 0.5, "per_cl')
    with pytest.raises(ArtefactError, match=r"'.*metrics\.json' is truncated or corrupt.*rule extract_features, train_stage2 or train_stage2_encoder"):
        read_json(js)

    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(5000)}, "meta": {}}, ckpt)
    truncate(ckpt)
    with pytest.raises(CheckpointError, match=r"'.*model\.pt' is not a readable torch file, truncated or "
                       r"corrupt.*rule train_stage1.*--forcerun .*model\.pt"):
        load_checkpoint(ckpt)


KILL_SPLIT = {"protocol": "cui", "imbalance_ratio": 10, "val_per_class": 15, "test_per_class": 30,
         "n_cap": None, "class_order": "count"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    src = get_source("digits")
    # 32 px so that extraction takes long enough to be caught mid-write
    build_image_cache(src, 32, d / "images.h5", provenance("image_cache", {"size": 32}))
    index = src.index()
    write_manifest(d / "split.parquet", build_split(index, KILL_SPLIT, 0), index.class_names,
                   provenance("split", KILL_SPLIT, seed=0))
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


def test_check_config_hash_refuses_an_artefact_made_for_another_config(tmp_path):
    from lmdlt.io import ProvenanceError, check_config_hash, sha256_json

    made_for = provenance("stage1", {"method": "ce", "epochs": 3})
    check_config_hash("model.pt", made_for, {"epochs": 3, "method": "ce"}, "features.h5", "stage-1")
    with pytest.raises(ProvenanceError, match=r"model\.pt was made for another stage-1 config "
                                              rf"\(config_hash {made_for['config_hash']}; method 'ce'\) "
                                              rf"than features\.h5 is being made for \(config_hash "
                                              rf"{sha256_json({'method': 'ce', 'epochs': 4})}\)"):
        check_config_hash("model.pt", made_for, {"method": "ce", "epochs": 4}, "features.h5", "stage-1")


def test_extraction_refuses_a_checkpoint_of_another_stage1_config(stage1, tmp_path):
    """The checkpoint records its variant's config hash; extracting for another variant is
    refused naming both, before anything is written."""
    from lmdlt.io import ProvenanceError

    made_for = validate_variant("stage1", {"method": "ce", "epochs": 1, "batch_size": 64})
    other = {**made_for, "epochs": 2}
    with pytest.raises(ProvenanceError, match=r"model\.pt was made for another stage-1 config"):
        extract_features(stage1 / "model.pt", stage1 / "split.parquet", stage1 / "images.h5",
                         tmp_path / "f.h5", threads=1, device="cpu", stage1_params=other)
    assert not (tmp_path / "f.h5").exists()
    extract_features(stage1 / "model.pt", stage1 / "split.parquet", stage1 / "images.h5",
                     tmp_path / "f.h5", threads=1, device="cpu", stage1_params=made_for)
    assert FeatureSet(tmp_path / "f.h5")["test"]["features"].shape[0] > 0
