"""Evaluation refuses predictions from another split and any leak of a test image or group."""
import h5py
import numpy as np
import pandas as pd
import pytest

from lmdlt.data.splits import content_hash, write_manifest
from lmdlt.io import h5_write_provenance, provenance
from lmdlt.metrics import evaluate_file

GROUPS = {"rule": "shots", "many": 100, "few": 20}


def make_manifest(path, rows):
    table = pd.DataFrame(rows, columns=["id", "label", "split", "group"])
    write_manifest(path, table, ["a", "b"], provenance("split", {}, seed=0))
    return table


def make_predictions(path, table, split_hash=None):
    rng = np.random.default_rng(0)
    k = max(int(table["label"].max()) + 1, 2)
    with h5py.File(path, "w") as f:
        for split in ("train", "val", "test"):
            rows = table[table["split"] == split]
            g = f.create_group(split)
            g["logits"] = rng.normal(size=(len(rows), k)).astype(np.float32)
            g["labels"] = rows["label"].to_numpy(np.int64)
            g.create_dataset("ids", data=np.array(rows["id"].tolist(), dtype=object),
                             dtype=h5py.string_dtype())
        f.attrs["class_names"] = ["a", "b"] if k == 2 else [f"c{i}" for i in range(k)]
        f.attrs["split_hash"] = split_hash or content_hash(table)
        h5_write_provenance(f, provenance("stage2", {}, {"split": split_hash or content_hash(table)}, 0))


def rows(n_per_split=4):
    out = []
    for split in ("train", "val", "test"):
        for i in range(n_per_split):
            out.append((f"{split}{i}", i % 2, split, f"lesion_{split}{i}"))
    return out


def test_clean_split_evaluates(tmp_path):
    table = make_manifest(tmp_path / "m.parquet", rows())
    make_predictions(tmp_path / "p.h5", table)
    rec = evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")
    assert rec["n_images"] == 4 and 0 <= rec["metrics"]["bacc"] <= 1


def test_predictions_from_another_split_are_refused(tmp_path):
    table = make_manifest(tmp_path / "m.parquet", rows())
    make_predictions(tmp_path / "p.h5", table, split_hash="0" * 64)
    with pytest.raises(ValueError, match="was computed on split 0000"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")
    assert not (tmp_path / "metrics.json").exists()


def test_a_test_image_in_training_is_a_leak(tmp_path):
    leaky = rows() + [("test0", 0, "train", "lesion_test0")]
    table = make_manifest(tmp_path / "m.parquet", leaky)
    make_predictions(tmp_path / "p.h5", table)
    with pytest.raises(ValueError, match="split leak: test image 'test0'"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")


def test_a_test_lesion_in_training_is_a_leak(tmp_path):
    leaky = rows()
    leaky[0] = ("train0", 0, "train", "lesion_test1")  # another image of a test lesion
    table = make_manifest(tmp_path / "m.parquet", leaky)
    make_predictions(tmp_path / "p.h5", table)
    with pytest.raises(ValueError, match="split leak: group 'lesion_test1'"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")


def test_predictions_must_cover_exactly_the_test_split(tmp_path):
    table = make_manifest(tmp_path / "m.parquet", rows())
    partial = table.drop(index=table.index[table["id"] == "test3"])
    make_predictions(tmp_path / "p.h5", partial, split_hash=content_hash(table))
    with pytest.raises(ValueError, match=r"missing: \['test3'\]"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")


def test_predictions_with_relabelled_images_are_refused(tmp_path):
    table = make_manifest(tmp_path / "m.parquet", rows())
    relabelled = table.copy()
    relabelled.loc[relabelled["id"] == "test2", "label"] = 1 - relabelled.loc[relabelled["id"] == "test2", "label"]
    make_predictions(tmp_path / "p.h5", relabelled, split_hash=content_hash(table))
    with pytest.raises(ValueError, match=r"1 test label\(s\) differ from .*image 'test2'"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")


def test_predictions_whose_provenance_contradicts_their_split_hash_are_refused(tmp_path):
    table = make_manifest(tmp_path / "m.parquet", rows())
    make_predictions(tmp_path / "p.h5", table)
    with h5py.File(tmp_path / "p.h5", "a") as f:
        h5_write_provenance(f, provenance("stage2", {}, {"split": "f" * 64}, 0))
    with pytest.raises(ValueError, match="inconsistent provenance, split .* but ffff"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")


# ---- leak guards for every split protocol -------------------------------------------------

from lmdlt.data.sources import SourceIndex  # noqa: E402
from lmdlt.data.splits import build_split  # noqa: E402

BASE = {"imbalance_ratio": 4, "val_fraction": 0.15, "test_fraction": 0.2, "val_per_class": 4,
        "test_per_class": 5, "n_cap": None, "class_order": "count"}
PROTOCOLS = {
    "lmd": {**BASE, "protocol": "lmd"},
    "cui": {**BASE, "protocol": "cui"},
    "random": {**BASE, "protocol": "random"},
    "predefined": {**BASE, "protocol": "predefined", "folds": None},
    "lmd_grouped": {**BASE, "protocol": "lmd", "grouped": True},
    "random_grouped": {**BASE, "protocol": "random", "grouped": True},
}


def synthetic_index(with_groups: bool) -> SourceIndex:
    """3 classes of 60/40/30 images; two images per group (a lesion); a published fold each."""
    labels = np.repeat([0, 1, 2], [60, 40, 30])
    n = len(labels)
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"id": [f"img{i:03d}" for i in range(n)], "label": labels,
                          "fold": rng.choice(["train", "train", "train", "val", "test"], size=n)})
    for c in range(3):  # every fold has every class
        idx = np.flatnonzero(labels == c)
        table.loc[idx[:3], "fold"] = ["train", "val", "test"]
    if with_groups:
        table["group"] = [f"lesion{i // 2:03d}" for i in range(n)]
    return SourceIndex(table, ["a", "b", "c"])


def split_manifest(path, protocol):
    cfg = PROTOCOLS[protocol]
    index = synthetic_index(with_groups="grouped" in protocol)
    table = build_split(index, cfg, 0)
    write_manifest(path, table, index.class_names,
                   provenance("split", {"dataset": {"source": "synthetic"}, "split": cfg}, seed=0))
    return table


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_protocol_s_split_evaluates_and_a_leaked_test_image_is_refused(tmp_path, protocol):
    table = split_manifest(tmp_path / "m.parquet", protocol)
    make_predictions(tmp_path / "p.h5", table)
    rec = evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "ok.json", manifest_path=tmp_path / "m.parquet")
    assert rec["n_images"] == int((table["split"] == "test").sum())
    for dest in ("train", "val"):  # one test image copied into training / validation
        victim = table[table["split"] == "test"].iloc[[0]].assign(split=dest)
        leaky = pd.concat([table, victim], ignore_index=True)
        path = tmp_path / f"leak_{dest}.parquet"
        write_manifest(path, leaky, ["a", "b", "c"], provenance("split", PROTOCOLS[protocol], seed=0))
        make_predictions(tmp_path / f"p_{dest}.h5", leaky)
        with pytest.raises(ValueError, match=f"split leak: test image {victim['id'].iloc[0]!r}"):
            evaluate_file(tmp_path / f"p_{dest}.h5", GROUPS, tmp_path / "m.json", manifest_path=path)


@pytest.mark.parametrize("protocol", ["lmd_grouped", "random_grouped"])
def test_grouped_protocols_refuse_a_test_lesion_in_training(tmp_path, protocol):
    table = split_manifest(tmp_path / "m.parquet", protocol)
    assert not (set(table.loc[table["split"] == "test", "group"])
                & set(table.loc[table["split"] != "test", "group"]))
    test_group = table.loc[table["split"] == "test", "group"].iloc[0]
    leaky = table.copy()
    leaky.loc[leaky.index[leaky["split"] == "train"][0], "group"] = test_group
    path = tmp_path / "leak.parquet"
    write_manifest(path, leaky, ["a", "b", "c"], provenance("split", {"split": PROTOCOLS[protocol]}, seed=0))
    make_predictions(tmp_path / "p.h5", leaky)
    with pytest.raises(ValueError, match=f"split leak: group {test_group!r}"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "m.json", manifest_path=path)


def test_a_naive_split_asked_for_is_evaluated_with_its_leak_recorded(tmp_path, caplog):
    cfg = {**BASE, "protocol": "lmd", "grouped": False}
    index = synthetic_index(with_groups=True)
    table = build_split(index, cfg, 0)
    write_manifest(tmp_path / "m.parquet", table, index.class_names,
                   provenance("split", {"dataset": {}, "split": cfg}, seed=0))
    make_predictions(tmp_path / "p.h5", table)
    rec = evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "m.json", manifest_path=tmp_path / "m.parquet")
    assert rec["naive_split_leak"]["shared_groups"] > 0
    assert "naive split (split.grouped: false)" in caplog.text


def test_leak_guard_on_a_real_source_split(tmp_path):
    """The embedded digits source through the cui protocol: clean, then a leaked test image."""
    from lmdlt.data.sources import get_source

    index = get_source("digits").index()
    cfg = {**BASE, "protocol": "cui", "imbalance_ratio": 10, "val_per_class": 15, "test_per_class": 30}
    table = build_split(index, cfg, 1)
    write_manifest(tmp_path / "m.parquet", table, index.class_names, provenance("split", cfg, seed=1))
    make_predictions(tmp_path / "p.h5", table)
    evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "ok.json", manifest_path=tmp_path / "m.parquet")
    leaky = pd.concat([table, table[table["split"] == "test"].iloc[[5]].assign(split="val")])
    write_manifest(tmp_path / "l.parquet", leaky, index.class_names, provenance("split", cfg, seed=1))
    make_predictions(tmp_path / "l.h5", leaky)
    with pytest.raises(ValueError, match="split leak: test image"):
        evaluate_file(tmp_path / "l.h5", GROUPS, tmp_path / "m.json", manifest_path=tmp_path / "l.parquet")


# ---- numerical guards of stage 2 ----------------------------------------------------------

import logging  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lmdlt.config import validate_variant  # noqa: E402
from lmdlt.resume import resume_path  # noqa: E402
from lmdlt.stage2.guards import NonFiniteError  # noqa: E402
from lmdlt.stage2.linear import train_linear  # noqa: E402
from lmdlt.stage2.runner import run_stage2, run_stage2_encoder  # noqa: E402
from test_resume_stage2 import ICC, stage1, write_features  # noqa: E402,F401


def _poison(path, split="train", row=7, value=np.nan):
    with h5py.File(path, "a") as f:
        x = f[f"{split}/features"][:]
        x[row, 3] = value
        f[f"{split}/features"][...] = x


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_loss_stops_stage2_with_epoch_step_and_term(tmp_path, value):
    write_features(tmp_path / "f.h5")
    _poison(tmp_path / "f.h5", value=value)
    cfg = validate_variant("stage2", {"method": "crt", "params": {"epochs": 2, "batch_size": 500, "sampler": "instance"}})
    with pytest.raises(NonFiniteError, match=r"crt: epoch 1, step 1: non-finite loss term 'loss'"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)
    assert not (tmp_path / "p.h5").exists()


def test_non_finite_gradient_names_the_parameter():
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    y = np.arange(40) % 2
    # finite loss, infinite gradient: d sqrt(u)/du at u = 0
    loss_fn = lambda logits, yb, idx: F.cross_entropy(logits, yb) + torch.sqrt((logits * 0).sum())  # noqa: E731
    with pytest.raises(NonFiniteError, match=r"test loop: epoch 1, step 1: non-finite gradient of "
                                             r"parameter 'weight'"):
        train_linear(x, y, 2, epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.0,
                     sampler="instance", generator=torch.Generator().manual_seed(0), loss_fn=loss_fn,
                     name="test loop")


def test_vfc_diverging_stops_naming_the_m_step(tmp_path):
    write_features(tmp_path / "f.h5")
    cfg = validate_variant("stage2", {"method": "vfc", "params": {
        "virtual_per_class": 50, "m_batch_size": 50, "m_lr": 1e30, "m_schedule": "constant"}})
    with pytest.raises(NonFiniteError, match=r"M-step 1: epoch 1, step \d+: non-finite"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)
    assert not (tmp_path / "p.h5").exists()


def test_vfc_on_non_finite_features_is_a_clear_error(tmp_path):
    write_features(tmp_path / "f.h5")
    _poison(tmp_path / "f.h5")
    cfg = validate_variant("stage2", {"method": "vfc", "params": {"virtual_per_class": 20}})
    with pytest.raises(ValueError, match=r"1 training features are non-finite .* row 7"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)


def _few_shot_features(path, tail_count, rank_deficient=False):
    write_features(path)
    with h5py.File(path, "a") as f:
        x, y, ids = f["train/features"][:], f["train/labels"][:], f["train/ids"][:]
        keep = np.concatenate([np.flatnonzero(y != 3), np.flatnonzero(y == 3)[:tail_count]])
        x, y, ids = x[keep], y[keep], ids[keep]
        if rank_deficient:
            x[:, 8:] = 0.0  # dead feature dimensions: every covariance singular
        for name, arr in (("features", x), ("labels", y), ("ids", ids)):
            del f[f"train/{name}"]
            f[f"train/{name}"] = arr


@pytest.mark.parametrize("tail_count,rank_deficient", [(1, False), (2, False), (5, True)])
def test_singular_covariance_is_regularised_and_logged_not_a_nan_classifier(tmp_path, caplog,
                                                                            tail_count, rank_deficient):
    _few_shot_features(tmp_path / "f.h5", tail_count, rank_deficient)
    cfg = validate_variant("stage2", {"method": "vfc", "params": {
        "virtual_per_class": 100, "m_batch_size": 50, "m_lr": 0.05, "cov_reg": 0.0,
        "m_sampler": "instance"}})
    with caplog.at_level(logging.WARNING, logger="lmdlt"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)
    assert "covariance of class 3 is singular" in caplog.text
    if tail_count == 1:
        assert "class 3 has 1 training feature(s) drawn" in caplog.text
    if rank_deficient:
        assert all(f"covariance of class {k} is singular" in caplog.text for k in range(4))
    with h5py.File(tmp_path / "p.h5") as f:
        for name in ("state/weight", "state/bias", "test/logits"):
            assert np.isfinite(f[name][:]).all(), name


def test_icc_with_singular_covariances_runs_and_logs(stage1, tmp_path, caplog):
    """Digits features (C = 64) from ~12 tail images with cov_reg 0: rank-deficient covariances;
    the Mahalanobis terms of the E-step use the jittered factors. (At ICC's e_lr 1e-3 the FDC
    term runs off to -1.6e5 and the divergence guard stops the run: tests/test_divergence.py.)"""
    cfg = validate_variant("stage2", {"method": "icc", "params": {**ICC, "iterations": 2, "cov_reg": 0.0,
                                                                  "e_lr": 1e-5}})
    with caplog.at_level(logging.WARNING, logger="lmdlt"):
        run_stage2_encoder(stage1 / "model.pt", stage1 / "split.parquet", stage1 / "images.h5", cfg, 0,
                           tmp_path / "p.h5", threads=1, device="cpu")
    assert "is singular (not positive definite): regularised" in caplog.text
    with h5py.File(tmp_path / "p.h5") as f:
        assert np.isfinite(f["test/logits"][:]).all()


def test_icc_non_finite_fdc_term_is_named(stage1, tmp_path, monkeypatch):
    import lmdlt.stage2.icc as icc

    monkeypatch.setattr(icc, "fdc_loss", lambda z, *a: z.sum() * float("nan"))
    cfg = validate_variant("stage2", {"method": "icc", "params": {**ICC, "iterations": 1}})
    with pytest.raises(NonFiniteError, match=r"ICC iteration 1 E-step: epoch 1, step 1: non-finite "
                                             r"loss term 'fdc'"):
        run_stage2_encoder(stage1 / "model.pt", stage1 / "split.parquet", stage1 / "images.h5", cfg, 0,
                           tmp_path / "p.h5", threads=1, device="cpu")
    assert not (tmp_path / "p.h5").exists() and not resume_path(tmp_path / "p.h5").exists()


# ---- provenance guards --------------------------------------------------------------------

from lmdlt.data.image_cache import (ImageCache, build_image_cache, check_checkpoint_inputs,  # noqa: E402
                                    load_split_images)
from lmdlt.data.sources import get_source  # noqa: E402
from lmdlt.data.splits import read_manifest  # noqa: E402
from lmdlt.models.checkpoint import load_checkpoint  # noqa: E402
from test_resume_stage2 import SPLIT  # noqa: E402

DIGITS = {"source": "digits", "root": None, "options": {}}


def _cache(path, size=8, **dataset):
    build_image_cache(get_source("digits"), size, path,
                      provenance("image_cache", {**DIGITS, **dataset, "image_size": size}))


def _other_split(path, seed=1):
    index = get_source("digits").index()
    write_manifest(path, build_split(index, SPLIT, seed), index.class_names,
                   provenance("split", {"dataset": DIGITS, "split": SPLIT}, seed=seed))


def test_image_cache_of_another_source_is_refused_naming_both_files(stage1, tmp_path):
    _cache(tmp_path / "other.h5", source="medmnist", root="/data/x.npz")  # digits pixels, other record
    with pytest.raises(ValueError, match=r"image cache .*other\.h5 was built from dataset source "
                                         r"'medmnist'.* but split .*split\.parquet .* from 'digits'"):
        load_split_images(stage1 / "split.parquet", tmp_path / "other.h5")
    _cache(tmp_path / "opts.h5", options={"subset": "x"})
    with pytest.raises(ValueError, match="built from dataset options"):
        load_split_images(stage1 / "split.parquet", tmp_path / "opts.h5")


def test_image_cache_of_another_size_is_refused(stage1):
    data = load_split_images(stage1 / "split.parquet", stage1 / "images.h5", image_size=8)
    assert data["train"][0].shape[1:3] == (8, 8)
    with pytest.raises(ValueError, match=r"holds 8x8 px images, not the 16x16 px expected"):
        load_split_images(stage1 / "split.parquet", stage1 / "images.h5", image_size=16)


def test_ids_missing_from_the_cache_are_named(stage1, tmp_path):
    table, _ = read_manifest(stage1 / "split.parquet")
    dropped = sorted(table["id"])[:7]
    with h5py.File(stage1 / "images.h5") as src, h5py.File(tmp_path / "partial.h5", "w") as dst:
        ids = src["ids"].asstr()[:]
        keep = np.flatnonzero(~np.isin(ids, dropped))
        dst["images"] = src["images"][:][keep]
        dst.create_dataset("ids", data=ids[keep].astype(object), dtype=h5py.string_dtype())
        dst["labels"] = src["labels"][:][keep]
        for k, v in src.attrs.items():
            dst.attrs[k] = v
    with pytest.raises(ValueError, match=r"7 image\(s\) of split .*split\.parquet are not in the image "
                                         rf"cache .*partial\.h5, e\.g\. \[{dropped[0]!r}"):
        load_split_images(stage1 / "split.parquet", tmp_path / "partial.h5")


def test_encoder_stage2_refuses_a_checkpoint_trained_on_another_split(stage1, tmp_path):
    _other_split(tmp_path / "other.parquet")
    other_hash = read_manifest(tmp_path / "other.parquet")[1]["content_hash"]
    trained_on = read_manifest(stage1 / "split.parquet")[1]["content_hash"]
    cfg = validate_variant("stage2", {"method": "icc", "params": {**ICC, "iterations": 1}})
    with pytest.raises(ValueError, match=rf"model\.pt was trained on split {trained_on}, not on "
                                         rf".*other\.parquet \({other_hash}\)"):
        run_stage2_encoder(stage1 / "model.pt", tmp_path / "other.parquet", stage1 / "images.h5", cfg, 0,
                           tmp_path / "p.h5", threads=1, device="cpu")
    assert not (tmp_path / "p.h5").exists()


def test_encoder_stage2_and_extraction_refuse_a_checkpoint_trained_on_another_cache(stage1, tmp_path):
    _cache(tmp_path / "images10.h5", size=10)  # same source, another image size
    cfg = validate_variant("stage2", {"method": "icc", "params": {**ICC, "iterations": 1}})
    with pytest.raises(ValueError, match=r"model\.pt was trained on the image cache [0-9a-f]{64}, not on "
                                         r".*images10\.h5 \([0-9a-f]{64}\): another source or image size"):
        run_stage2_encoder(stage1 / "model.pt", stage1 / "split.parquet", tmp_path / "images10.h5", cfg, 0,
                           tmp_path / "p.h5", threads=1, device="cpu")
    # the same guard, as feature extraction calls it
    _, meta = load_checkpoint(stage1 / "model.pt")
    man = read_manifest(stage1 / "split.parquet")[1]
    check_checkpoint_inputs(stage1 / "model.pt", meta, stage1 / "split.parquet", man,
                            ImageCache(stage1 / "images.h5"))  # consistent: no error
    with pytest.raises(ValueError, match="another source or image size"):
        check_checkpoint_inputs(stage1 / "model.pt", meta, stage1 / "split.parquet", man,
                                ImageCache(tmp_path / "images10.h5"))


def test_stage2_refuses_features_of_another_checkpoint_or_split(tmp_path):
    write_features(tmp_path / "f.h5")  # records checkpoint c..c and split s..s
    cfg = validate_variant("stage2", {"method": "crt", "params": {"epochs": 1}})
    (tmp_path / "model.pt").write_bytes(b"another checkpoint")
    with pytest.raises(ValueError, match=r"f\.h5 was extracted with checkpoint c{64}, not with "
                                         r".*model\.pt \([0-9a-f]{64}\); re-run feature extraction"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1, checkpoint_path=tmp_path / "model.pt")
    table = make_manifest(tmp_path / "m.parquet", rows())
    with pytest.raises(ValueError, match=rf"f\.h5 was extracted on split s{{64}}, not on .*m\.parquet "
                                         rf"\({content_hash(table)}\)"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1, manifest_path=tmp_path / "m.parquet")
    # the same refusal through the CLI flags the train_stage2 rule passes
    from lmdlt.cli import main
    assert main(["train-stage2", "--features", str(tmp_path / "f.h5"), "--split", str(tmp_path / "m.parquet"),
                 "--params", '{"method": "crt", "params": {"epochs": 1}}', "--seed", "0",
                 "--out", str(tmp_path / "p.h5")]) != 0
    with h5py.File(tmp_path / "f.h5", "a") as f:  # attributes edited after writing
        f.attrs["split_hash"] = "e" * 64
    with pytest.raises(ValueError, match=r"inconsistent provenance, split hash e{64} in its attributes "
                                         r"but s{64} in its provenance record"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)
    assert not (tmp_path / "p.h5").exists()
