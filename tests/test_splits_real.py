"""Split protocols on the real metadata in ../shared/data (skipped when absent) and on small
synthetic indexes: the paper's counts, leak-free grouped splits, and clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmdlt.cli import main as lmdlt_main
from lmdlt.data.sources import SourceIndex, get_source
from lmdlt.data.splits import (build_split, content_hash, group_overlap, read_manifest, split_counts,
                               summary_text)

REPO = Path(__file__).resolve().parent.parent
LMD = {"protocol": "lmd", "imbalance_ratio": 100, "val_fraction": 0.1, "test_fraction": 0.2}
HAM_OPTS = {"image_dirs": ["images_200x150"]}


@pytest.fixture
def isic(shared_data):
    return get_source("isic2019", str(shared_data / "isic2019")).index()


@pytest.fixture
def ham(shared_data):
    return get_source("ham10000", str(shared_data / "ham10000"), HAM_OPTS).index()


@pytest.mark.realdata
def test_isic2019_lmd_r100_counts(isic):
    counts = split_counts(build_split(isic, LMD, 0), isic.class_names)
    assert counts["total"].to_dict() == {"NV": 12875, "MEL": 4140, "BCC": 2785, "BKL": 2013, "AK": 609,
                                         "SCC": 404, "VASC": 149, "DF": 129}
    # 7:1:2 within every class
    assert (counts["test"] == (counts["total"] * 0.2).round()).all()
    assert (counts["val"] == (counts["total"] * 0.1).round()).all()


@pytest.mark.parametrize("r", [300, 500])
@pytest.mark.realdata
def test_isic2019_lmd_higher_r(isic, r):
    t = build_split(isic, {**LMD, "imbalance_ratio": r}, 0)
    total = split_counts(t, isic.class_names)["total"]
    assert total["NV"] == 12875 and total.min() == total["DF"] == -(-12875 // r)  # ceil(n_max / r)
    assert total.max() / total.min() == pytest.approx(r, rel=0.02)


@pytest.mark.realdata
def test_isic2019_r_below_natural_imbalance_is_an_error(isic):
    with pytest.raises(ValueError, match=r"r=40 is below the data's natural imbalance 53.87"):
        build_split(isic, {**LMD, "imbalance_ratio": 40}, 0)


@pytest.mark.realdata
def test_split_is_reproducible_from_seed(isic):
    a, b, c = (content_hash(build_split(isic, LMD, s)) for s in (0, 0, 1))
    assert a == b and a != c


@pytest.mark.parametrize("r,train", [(100, [5000, 2590, 1342, 695, 360, 187, 97, 51]),
                                     (500, [5000, 2058, 847, 349, 144, 60, 25, 11])])
@pytest.mark.realdata
def test_ju_isic2019_predefined(shared_data, r, train):
    idx = get_source("isic_lists", str(shared_data / "isic_lt_splits" / "isic2019_8class"),
                     {"split_files": {s: f"{s}_{r}.npy" for s in ("train", "val", "test")}}).index()
    counts = split_counts(build_split(idx, {"protocol": "predefined"}, 0), idx.class_names)
    assert counts["train"].tolist() == train
    assert counts["val"].tolist() == [50] * 8 and counts["test"].tolist() == [100] * 8


@pytest.mark.realdata
def test_ju_isic_archive_predefined(shared_data):
    idx = get_source("isic_lists", str(shared_data / "isic_lt_splits" / "isic_archive_14class")).index()
    t = build_split(idx, {"protocol": "predefined", "folds": {"train": ["train"], "val": ["val"],
                                                            "test": ["test"]}}, 0)
    assert t["split"].value_counts().to_dict() == {"train": 17508, "test": 5009, "val": 2503}


@pytest.mark.realdata
def test_hyper_kvasir_random_811_and_official_folds(shared_data):
    root = str(shared_data / "hyper_kvasir")
    idx = get_source("hyper_kvasir", root, {"folds": "official_splits/5_fold_split.csv"}).index()
    t = build_split(idx, {"protocol": "random", "val_fraction": 0.1, "test_fraction": 0.1}, 0)
    counts = split_counts(t, idx.class_names)
    assert len(t) == 10662 and (counts[["train", "val", "test"]] > 0).all().all()
    assert counts.loc["bbps-2-3"].tolist() == [918, 115, 115, 1148]
    assert counts.loc["hemorrhoids"].tolist() == [4, 1, 1, 6]
    folds = {"train": [0, 1, 2], "val": [3], "test": [4]}
    t5 = build_split(idx, {"protocol": "predefined", "folds": folds}, 0)
    assert len(t5) == 10662
    assert t5.groupby("split").size().to_dict() == {"train": 6366, "val": 2122, "test": 2174}
    with pytest.raises(ValueError, match=r"split.folds.test: fold '7' is not in the source"):
        build_split(idx, {"protocol": "predefined", "folds": {**folds, "test": [7]}}, 0)
    with pytest.raises(ValueError, match=r"fold '3' is mapped to both 'val' and 'test'"):
        build_split(idx, {"protocol": "predefined", "folds": {**folds, "test": [3]}}, 0)


@pytest.mark.parametrize("cfg", [{**LMD, "grouped": True},
                                 {"protocol": "random", "val_fraction": 0.1, "test_fraction": 0.2,
                                  "grouped": True}])
@pytest.mark.realdata
def test_ham10000_grouped_split_shares_no_lesion(ham, cfg):
    t = build_split(ham, cfg, 0)
    per_split = {s: set(t.loc[t["split"] == s, "group"]) for s in ("train", "val", "test")}
    assert not per_split["train"] & per_split["val"]
    assert not per_split["train"] & per_split["test"]
    assert not per_split["val"] & per_split["test"]
    ov = group_overlap(t)
    assert ov["groups_in_several_splits"] == 0 and ov["test_images_with_train_group"] == 0
    # grouping costs little precision: every class within one lesion (<= 6 images) of 7:1:2
    counts = split_counts(t, ham.class_names)
    assert ((counts["test"] - counts["total"] * 0.2).abs() <= 6).all()


@pytest.mark.realdata
def test_ham10000_naive_split_leaks_and_is_reported(ham, capsys):
    with pytest.raises(ValueError, match="split leak: group 'HAM_"):
        build_split(ham, LMD, 0)  # groups present, grouped not said: an error
    t = build_split(ham, {**LMD, "grouped": False}, 0)
    ov = group_overlap(t)
    with capsys.disabled():
        print(f"\nHAM10000 LMD r=100 naive split (seed 0): {ov['groups_in_several_splits']} lesions in "
              f"several splits; {ov['test_images_with_train_group']} of {ov['test_images']} test images "
              f"have a lesion in train")
    assert ov["groups_in_several_splits"] > 100 and ov["test_images_with_train_group"] > 100
    assert "groups_in_several_splits" in summary_text(t, ham.class_names)


@pytest.mark.realdata
def test_ham10000_lmd_grouped_counts_match_ungrouped_subsample(ham):
    """Grouping changes which images are kept, never how many per class."""
    a = split_counts(build_split(ham, {**LMD, "grouped": False}, 0), ham.class_names)["total"]
    b = split_counts(build_split(ham, {**LMD, "grouped": True}, 0), ham.class_names)["total"]
    assert a.tolist() == b.tolist() == [229, 393, 919, 68, 1018, 6705, 91]


# ---------------------------------------------------------------- synthetic indexes: errors

def small_index(counts, groups=False):
    labels = np.repeat(np.arange(len(counts)), counts)
    table = pd.DataFrame({"id": [f"i{i}" for i in range(len(labels))], "label": labels})
    if groups:
        table["group"] = [f"g{i // 2}" for i in range(len(labels))]
    return SourceIndex(table, [f"c{k}" for k in range(len(counts))])


def test_class_too_small_for_ratios_names_class():
    idx = small_index([50, 20, 2])
    with pytest.raises(ValueError, match=r"class 'c2' has 2 images: too few"):
        build_split(idx, {"protocol": "random", "val_fraction": 0.1, "test_fraction": 0.2}, 0)


def test_grouped_without_groups_is_an_error():
    with pytest.raises(ValueError, match="split.grouped: the source index has no 'group' column"):
        build_split(small_index([30, 20]), {**LMD, "imbalance_ratio": 1.5, "grouped": True}, 0)


def test_grouped_class_with_one_group_cannot_fill_every_split():
    idx = small_index([40, 4], groups=True)  # class c1: two groups of two images, three splits
    with pytest.raises(ValueError, match=r"has no image of classes \['c1'\]"):
        build_split(idx, {"protocol": "random", "val_fraction": 0.1, "test_fraction": 0.2,
                          "grouped": True}, 0)


@pytest.mark.realdata
def test_cli_split_error_leaves_no_manifest(tmp_path, shared_data, capsys):
    out = tmp_path / "res" / "split.parquet"
    ds = ('{"source": "ham10000", "root": "%s", "options": {"image_dirs": ["images_200x150"]}}'
          % (shared_data / "ham10000"))
    rc = lmdlt_main(["split", "--dataset", ds, "--split", '{"protocol": "lmd", "imbalance_ratio": 10, '
                     '"val_fraction": 0.1, "test_fraction": 0.2, "grouped": true}', "--seed", "0",
                     "--out", str(out)])
    assert rc == 1 and "below the data's natural imbalance 58.30" in capsys.readouterr().err
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no temporary file either
    rc = lmdlt_main(["split", "--dataset", ds, "--split", '{"protocol": "lmd", "imbalance_ratio": 100, '
                     '"val_fraction": 0.1, "test_fraction": 0.2, "grouped": true}', "--seed", "0",
                     "--out", str(out)])
    assert rc == 0
    table, meta = read_manifest(out)
    assert group_overlap(table)["groups_in_several_splits"] == 0
    assert meta["provenance"]["seed"] == 0


@pytest.mark.realdata
def test_cli_split_summary_writes_nothing(tmp_path, shared_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = lmdlt_main(["split-summary", "--config", str(REPO / "workflow" / "experiments" / "ham10000-lt.yaml"),
                     "--seed", "1", "--root", str(shared_data / "ham10000")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "content hash" in out and "groups_in_several_splits 0" in out
    assert "nv" in out and "6705" in out
    assert list(tmp_path.iterdir()) == []
