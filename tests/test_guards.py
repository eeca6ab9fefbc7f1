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
    with h5py.File(path, "w") as f:
        for split in ("train", "val", "test"):
            rows = table[table["split"] == split]
            g = f.create_group(split)
            g["logits"] = rng.normal(size=(len(rows), 2)).astype(np.float32)
            g["labels"] = rows["label"].to_numpy(np.int64)
            g.create_dataset("ids", data=np.array(rows["id"].tolist(), dtype=object),
                             dtype=h5py.string_dtype())
        f.attrs["class_names"] = ["a", "b"]
        f.attrs["split_hash"] = split_hash or content_hash(table)
        h5_write_provenance(f, provenance("stage2", {}, {"split": content_hash(table)}, 0))


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
