"""The stage-2 method contract, for every registered stage-2 method (a new method file is
covered with no edit here):

* fitted on tiny synthetic features (or, for a method that fine-tunes the encoder, a tiny
  network and images), it scores every split: logits of shape (N, K), finite; its ``state()``
  is arrays and its ``summary()`` plain JSON data;
* the same seed gives the same fit (logits and state identical);
* no test data reaches ``fit``: the runner hands it the training and validation splits only (a
  spy reads its arguments: no test id, no array of the test split's size), and a fit on a
  features file whose test split is scrambled (labels reversed, features replaced) is the
  same fit; for ``fit_encoder`` the images handed over are the manifest's training and
  validation images only.

Each method's own behaviour is tested elsewhere (hand-computed values); this file is the
interface every method shares. Tiny sizes: the whole file runs in seconds."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from lmdlt.config import validate_variant
from lmdlt.io import h5_write_provenance, provenance
from lmdlt.models import build_network
from lmdlt.runtime import setup_torch
from lmdlt.stage2 import available_methods, get_method
from lmdlt.stage2.runner import run_stage2

K, C = 3, 6
COUNTS = {"train": (24, 8, 3), "val": (5, 5, 5), "test": (6, 6, 6)}
FEATURE_METHODS = [m for m in available_methods() if not get_method(m).needs_encoder]
ENCODER_METHODS = [m for m in available_methods() if get_method(m).needs_encoder]
# small sizes for whichever of these a method has (the rest keep their defaults)
TINY = {"epochs": 2, "batch_size": 16, "virtual_per_class": 20, "m_batch_size": 20, "iterations": 2,
        "e_batch_size": 16, "implicit_steps": 5, "m_lr": 0.01, "e_lr": 1e-4}


def tiny_params(name: str) -> dict:
    return {k: v for k, v in TINY.items() if k in get_method(name).params}


def variant(name: str) -> dict:
    return validate_variant("stage2", {"method": name, "params": tiny_params(name)})


def synthetic(seed=0) -> dict:
    """Gaussian classes in C dimensions, a long-tailed training split, a stage-1 classifier and
    its logits (as extraction stores them)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(K, C))
    w = rng.normal(size=(K, C)).astype(np.float32)
    b = rng.normal(size=K).astype(np.float32)
    out = {"classifier": {"weight": w, "bias": b}}
    for split, counts in COUNTS.items():
        labels = np.repeat(np.arange(K), counts)
        feats = (means[labels] + rng.normal(size=(len(labels), C))).astype(np.float32)
        out[split] = {"features": feats, "logits": feats @ w.T + b, "labels": labels.astype(np.int64),
                      "ids": np.array([f"{split}{i}" for i in range(len(labels))])}
    return out


def fitted(name: str, data: dict, seed: int):
    cfg = variant(name)
    m = get_method(name)(cfg["params"], K)
    gen = setup_torch(seed, 1)
    m.fit(data["train"], data["val"], data["classifier"], gen)
    return m


def assert_contract(m, features: dict) -> None:
    for split, x in features.items():
        out = np.asarray(m.logits(x))
        assert out.shape == (len(x), K), (split, out.shape)
        assert np.isfinite(out).all(), split
    state = m.state()
    assert all(isinstance(v, np.ndarray) for v in state.values()), {k: type(v) for k, v in state.items()}
    json.dumps(m.summary(), allow_nan=False)


def test_every_registered_method_is_covered_by_one_contract():
    assert sorted(FEATURE_METHODS + ENCODER_METHODS) == available_methods()
    assert FEATURE_METHODS and ENCODER_METHODS


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_fit_on_tiny_features_scores_every_split(name):
    data = synthetic()
    m = fitted(name, data, seed=0)
    assert_contract(m, {s: data[s]["features"] for s in COUNTS})


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_the_same_seed_gives_the_same_fit(name):
    data = synthetic()
    a, b = fitted(name, data, seed=3), fitted(name, data, seed=3)
    np.testing.assert_array_equal(a.logits(data["test"]["features"]), b.logits(data["test"]["features"]))
    sa, sb = a.state(), b.state()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


# --- no test data reaches fit (through the runner) -------------------------------------------

def write_features(path, data: dict) -> None:
    """``data`` in the features file layout extraction writes."""
    with h5py.File(path, "w") as f:
        for split in COUNTS:
            g = f.create_group(split)
            for key in ("features", "logits", "labels"):
                g[key] = data[split][key]
            g.create_dataset("ids", data=data[split]["ids"].astype(object), dtype=h5py.string_dtype())
        for key, arr in data["classifier"].items():
            f[f"classifier/{key}"] = arr
        f.attrs["checkpoint_sha256"] = "c" * 64
        f.attrs["split_hash"] = "s" * 64
        f.attrs["class_names"] = [f"class{k}" for k in range(K)]
        h5_write_provenance(f, provenance("features", {}, {"checkpoint": "c" * 64, "split": "s" * 64}, 0))


def scrambled_test(data: dict) -> dict:
    """The same file with another test split: labels reversed, features replaced by noise."""
    out = {**data, "test": dict(data["test"])}
    out["test"]["labels"] = (K - 1 - data["test"]["labels"]).astype(np.int64)
    out["test"]["features"] = np.random.default_rng(9).normal(size=data["test"]["features"].shape).astype(np.float32)
    out["test"]["logits"] = out["test"]["features"] @ data["classifier"]["weight"].T + data["classifier"]["bias"]
    return out


def arrays_in(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from arrays_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from arrays_in(v)
    elif isinstance(value, (np.ndarray, torch.Tensor)):
        yield np.asarray(value)


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_the_runner_hands_fit_no_test_data_and_the_fit_ignores_the_test_split(name, tmp_path, monkeypatch):
    cls = get_method(name)
    calls = []
    real_fit = cls.fit

    def spy(self, train, val, stage1_classifier, generator):
        calls.append((train, val, stage1_classifier))
        return real_fit(self, train, val, stage1_classifier, generator)

    monkeypatch.setattr(cls, "fit", spy)
    data = synthetic()
    write_features(tmp_path / "a.h5", data)
    write_features(tmp_path / "b.h5", scrambled_test(data))
    cfg = variant(name)
    run_stage2(tmp_path / "a.h5", cfg, 0, tmp_path / "pa.h5", threads=1)
    run_stage2(tmp_path / "b.h5", cfg, 0, tmp_path / "pb.h5", threads=1)
    n_test = sum(COUNTS["test"])
    assert len(calls) == 2
    for train, val, _ in calls:
        assert len(train["labels"]) == sum(COUNTS["train"]) and len(val["labels"]) == sum(COUNTS["val"])
        ids = np.concatenate([np.asarray(train["ids"]), np.asarray(val["ids"])]).astype(str)
        assert not any(i.startswith("test") for i in ids)
        for arr in arrays_in((train, val)):
            assert n_test not in arr.shape, f"an array of the test split's size {arr.shape} reached fit"
    with h5py.File(tmp_path / "pa.h5") as a, h5py.File(tmp_path / "pb.h5") as b:
        for key in [f"{s}/logits" for s in ("train", "val")] + [f"state/{k}" for k in a.get("state", {})]:
            np.testing.assert_array_equal(a[key][()], b[key][()], err_msg=f"{name}: {key}")
        np.testing.assert_array_equal(b["test/labels"][:], K - 1 - data["test"]["labels"])


# --- methods that fine-tune the encoder -------------------------------------------------------

def tiny_net(seed=0):
    torch.manual_seed(seed)
    return build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 1, K, [0.5], [0.25])


def tiny_images(seed=0) -> dict:
    g = np.random.default_rng(seed)
    out = {}
    for split in ("train", "val"):
        y = np.repeat(np.arange(K), COUNTS[split])
        x = (g.integers(0, 60, (len(y), 8, 8, 1)) + 60 * y[:, None, None, None]).astype(np.uint8)
        out[split] = (x, y.astype(np.int64))
    return out


def fitted_encoder(name: str, seed: int):
    from lmdlt.stage2.icc import encode_images

    cfg = variant(name)
    m = get_method(name)(cfg["params"], K)
    images = tiny_images()
    m.fit_encoder(tiny_net(), images, setup_torch(seed, 1), "cpu")
    feats = {s: encode_images(m.net, x, "cpu") for s, (x, _) in images.items()}
    return m, feats


@pytest.mark.parametrize("name", ENCODER_METHODS)
def test_fit_encoder_on_tiny_images_scores_every_split_and_repeats_per_seed(name):
    a, feats = fitted_encoder(name, seed=0)
    assert a.net is not None
    assert_contract(a, feats)
    b, feats_b = fitted_encoder(name, seed=0)
    for s in feats:
        np.testing.assert_array_equal(feats[s], feats_b[s], err_msg=s)
        np.testing.assert_array_equal(a.logits(feats[s]), b.logits(feats_b[s]), err_msg=s)


@pytest.mark.parametrize("name", ENCODER_METHODS)
def test_the_encoder_runner_hands_fit_encoder_the_training_and_validation_images_only(name, digits, tmp_path,
                                                                                        monkeypatch):
    from lmdlt.data.splits import read_manifest
    from lmdlt.stage1.trainer import train_stage1
    from lmdlt.stage2.runner import run_stage2_encoder

    cls = get_method(name)
    seen = []
    real = cls.fit_encoder
    monkeypatch.setattr(cls, "fit_encoder", lambda self, net, images, gen, dev:
                        seen.append(images) or real(self, net, images, gen, dev))
    s1 = validate_variant("stage1", {"method": "ce", "epochs": 1, "batch_size": 64})
    train_stage1(digits / "split.parquet", digits / "images.h5", s1, 0, tmp_path / "ce.pt",
                 threads=1, device="cpu")
    run_stage2_encoder(tmp_path / "ce.pt", digits / "split.parquet", digits / "images.h5",
                       variant(name), 0, tmp_path / "p.h5", threads=1, device="cpu")
    table, _ = read_manifest(digits / "split.parquet")
    (images,) = seen
    assert sorted(images) == ["train", "val"]
    for split, (x, y) in images.items():
        want = table[table["split"] == split]["label"].to_numpy()
        assert len(x) == len(want)
        np.testing.assert_array_equal(y, want)
