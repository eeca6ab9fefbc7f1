"""The stages run without Snakemake, deterministically, each leaving a self-describing artefact."""
import json

import h5py
import numpy as np
import pytest
import torch

from lmdlt.config import validate_variant
from conftest import DIGITS_SPLIT, link_digits
from lmdlt.data.image_cache import ImageCache
from lmdlt.data.sources import get_source
from lmdlt.data.splits import build_split, read_manifest, write_manifest
from lmdlt.features import FeatureSet, extract_features
from lmdlt.io import provenance, read_json, sha256_file
from lmdlt.metrics import evaluate_file
from lmdlt.models.checkpoint import load_checkpoint
from lmdlt.stage1.trainer import train_stage1
from lmdlt.stage2.runner import run_stage2

GROUPS = {"rule": "rank", "sizes": [3, 4, 3]}


@pytest.fixture(scope="module")
def data(digits, tmp_path_factory):
    return link_digits(digits, tmp_path_factory.mktemp("data"))


def stage1_cfg(**over):
    return validate_variant("stage1", {"method": "ce", "epochs": 3, "batch_size": 32, "lr": 0.05,
                                       "augment": {"crop_padding": 1}, **over})


def run_chain(data, out, seed=0):
    out.mkdir()
    train_stage1(data / "split.parquet", data / "images.h5", stage1_cfg(), seed, out / "model.pt",
                 threads=1, device="cpu")
    extract_features(out / "model.pt", data / "split.parquet", data / "images.h5", out / "features.h5",
                     threads=1, device="cpu")
    crt = validate_variant("stage2", {"method": "crt", "params": {"epochs": 3}})
    run_stage2(out / "features.h5", crt, seed, out / "predictions.h5", threads=1)
    evaluate_file(out / "features.h5", GROUPS, out / "metrics_s1.json")
    evaluate_file(out / "predictions.h5", GROUPS, out / "metrics_s2.json")


def test_image_cache_holds_the_source_images(data):
    cache = ImageCache(data / "images.h5")
    src = get_source("digits")
    table = src.index().table.iloc[[5, 0, 1000]]
    np.testing.assert_array_equal(cache.load(table["id"].tolist()), src.images(table, 8))
    assert cache.shape == (1797, 8, 8, 1)
    with pytest.raises(KeyError, match="'nope' is not in the image cache"):
        cache.load(["nope"])


def test_same_seed_gives_identical_weights_and_metrics(data, tmp_path):
    run_chain(data, tmp_path / "a")
    run_chain(data, tmp_path / "b")
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    for name in ("metrics_s1.json", "metrics_s2.json"):
        ma, mb = read_json(tmp_path / "a" / name), read_json(tmp_path / "b" / name)
        assert ma["metrics"] == mb["metrics"]
    # and each artefact names its parents
    fs = FeatureSet(tmp_path / "a" / "features.h5")
    assert fs.attrs["checkpoint_sha256"] == sha256_file(tmp_path / "a" / "model.pt")
    assert fs.attrs["split_hash"] == read_manifest(data / "split.parquet")[1]["content_hash"]
    with h5py.File(tmp_path / "a" / "predictions.h5") as f:
        prov = json.loads(f.attrs["provenance"])
    assert prov["parents"]["features"] == sha256_file(tmp_path / "a" / "features.h5")
    assert prov["config"]["method"] == "crt" and prov["seed"] == 0


def test_checkpoint_loads_weights_only_and_reproduces_the_features(data, tmp_path):
    out = tmp_path / "c"
    run_chain(data, out, seed=1)
    net, meta = load_checkpoint(out / "model.pt")
    assert meta["provenance"]["seed"] == 1 and len(meta["history"]) == 3
    assert 1 <= meta["selected_epoch"] <= 3
    fs = FeatureSet(out / "features.h5")
    table, _ = read_manifest(data / "split.parquet")
    ids = table.loc[table["split"] == "val", "id"].tolist()
    x = torch.from_numpy(ImageCache(data / "images.h5").load(ids)).permute(0, 3, 1, 2)
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net.features(x).numpy(), fs["val"]["features"], atol=1e-5)
    assert list(fs["val"]["ids"]) == ids
    # the stage-1 classifier's logits are stored with the features
    np.testing.assert_allclose(fs["val"]["features"] @ fs.classifier["weight"].T + fs.classifier["bias"],
                               fs["val"]["logits"], atol=1e-4)


def test_features_refuse_a_checkpoint_from_another_split(data, tmp_path):
    run_chain(data, tmp_path / "d")
    index = get_source("digits").index()
    other = build_split(index, DIGITS_SPLIT, 7)
    write_manifest(tmp_path / "other.parquet", other, index.class_names, provenance("split", DIGITS_SPLIT, seed=7))
    with pytest.raises(ValueError, match="was trained on split"):
        extract_features(tmp_path / "d" / "model.pt", tmp_path / "other.parquet", data / "images.h5",
                         tmp_path / "bad.h5", device="cpu")
    assert not (tmp_path / "bad.h5").exists()


def test_missing_pretrained_weights_is_a_clear_error(data, tmp_path):
    cfg = stage1_cfg(model={"arch": "resnet18", "pretrained": str(tmp_path / "none.pth")})
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        train_stage1(data / "split.parquet", data / "images.h5", cfg, 0, tmp_path / "m.pt", device="cpu")
    assert not (tmp_path / "m.pt").exists()
