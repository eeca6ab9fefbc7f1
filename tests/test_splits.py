import re

import numpy as np
import pandas as pd
import pytest

from conftest import folder_config, image_tree
from lmdlt.data.sources import SourceIndex, get_source
from lmdlt.data.splits import build_split, content_hash, read_manifest, split_counts, write_manifest
from lmdlt.io import provenance


CUI = {"protocol": "cui", "imbalance_ratio": 100, "val_per_class": 15, "test_per_class": 30,
       "n_cap": None, "class_order": "count"}
LMD = {"protocol": "lmd", "imbalance_ratio": 20, "val_fraction": 0.1, "test_fraction": 0.2}


@pytest.fixture(scope="module")
def digits():
    return get_source("digits").index()


def test_same_seed_same_split_hash(digits):
    a, b = build_split(digits, CUI, 0), build_split(digits, CUI, 0)
    pd.testing.assert_frame_equal(a, b)
    assert content_hash(a) == content_hash(b)
    assert content_hash(build_split(digits, CUI, 1)) != content_hash(a)


def test_cui_split_counts_follow_the_profile(digits):
    t = build_split(digits, CUI, 0)
    counts = split_counts(t, digits.class_names)
    assert (counts["val"] == 15).all() and (counts["test"] == 30).all()
    assert sorted(counts["train"], reverse=True) == [129, 78, 47, 28, 17, 10, 6, 4, 3, 2]
    # the head is the class with the most images (digit 3: 183)
    assert counts["train"].idxmax() == "3"


def test_lmd_split_counts_and_fractions(digits):
    t = build_split(digits, LMD, 0)
    counts = split_counts(t, digits.class_names)
    natural = np.bincount(digits.table["label"])
    order = sorted(range(10), key=lambda c: (-natural[c], c))
    totals = counts["total"].to_numpy()[order]
    mu = (natural.max() / (natural.min() * 20)) ** (1 / 9)
    expected = [int(np.ceil(natural[c] * mu**i)) for i, c in enumerate(order)]
    assert totals.tolist() == expected
    assert totals[0] / totals[-1] == pytest.approx(20, rel=0.1)
    for c in range(10):
        n = counts["total"].iloc[c]
        assert counts["test"].iloc[c] == max(1, round(0.2 * n))
        assert counts["val"].iloc[c] == max(1, round(0.1 * n))


def test_splits_are_disjoint(digits):
    for cfg in (CUI, LMD):
        t = build_split(digits, cfg, 3)
        assert not t["id"].duplicated().any()
        assert set(t["split"]) == {"train", "val", "test"}


def test_lmd_split_rejects_r_below_natural_imbalance(digits):
    with pytest.raises(ValueError, match="below the data's natural imbalance"):
        build_split(digits, {**LMD, "imbalance_ratio": 1.01}, 0)


def test_class_too_small_for_cui(digits):
    with pytest.raises(ValueError, match=r"class '\d' has \d+ images; the cui protocol needs"):
        build_split(digits, {**CUI, "val_per_class": 100, "test_per_class": 100}, 0)


def test_group_leak_is_detected():
    idx = SourceIndex(pd.DataFrame({"id": [f"i{i}" for i in range(60)],
                                    "label": [i % 2 for i in range(60)],
                                    "group": [i // 2 for i in range(60)]}), ["a", "b"])
    with pytest.raises(ValueError, match="split leak: group"):
        build_split(idx, {**LMD, "imbalance_ratio": 1}, 0)


def test_manifest_roundtrip_and_tamper_detection(digits, tmp_path):
    t = build_split(digits, CUI, 0)
    path = tmp_path / "split.parquet"
    digest = write_manifest(path, t, digits.class_names, provenance("split", CUI, seed=0))
    back, meta = read_manifest(path)
    assert meta["content_hash"] == digest and meta["class_names"] == digits.class_names
    assert meta["provenance"]["seed"] == 0 and meta["provenance"]["config"] == CUI
    pd.testing.assert_frame_equal(back, t)
    # a manifest edited behind the pipeline's back is refused
    tampered = back.copy()
    tampered.loc[0, "split"] = "test" if tampered.loc[0, "split"] != "test" else "train"
    import json
    import pyarrow as pa
    import pyarrow.parquet as pq
    arrow = pa.Table.from_pandas(tampered, preserve_index=False).replace_schema_metadata(
        {b"lmdlt": json.dumps(meta).encode()})
    pq.write_table(arrow, path)
    with pytest.raises(ValueError, match="content hash mismatch"):
        read_manifest(path)


def test_cli_split_then_show_split_prints_counts_and_hash(tmp_path, capsys):
    """`lmdlt split` by hand with a partial split section (defaults filled), then `show-split`."""
    from lmdlt.cli import main

    out = tmp_path / "split.parquet"
    assert main(["split", "--dataset", '{"source": "digits"}', "--split",
                 '{"protocol": "cui", "imbalance_ratio": 10, "val_per_class": 15, "test_per_class": 30}',
                 "--seed", "0", "--out", str(out)]) == 0
    table, meta = read_manifest(out)
    capsys.readouterr()
    assert main(["show-split", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"content hash {meta['content_hash']}" in printed
    counts = table.groupby(["label", "split"]).size()
    for label in range(10):  # one row per class: train, val, test, total
        n_tr, n_val, n_te = (int(counts.get((label, s), 0)) for s in ("train", "val", "test"))
        assert n_val == 15 and n_te == 30
        assert re.search(rf"^{label}\s+{n_tr}\s+{n_val}\s+{n_te}\s+{n_tr + n_val + n_te}$", printed, re.M)
    assert f"total: train {(table['split'] == 'train').sum()}, val 150, test 300" in printed
    assert main(["show-split", str(tmp_path / "nope.parquet")]) == 1
    assert "split manifest" in capsys.readouterr().err


def _patients_csv(root, spellings=("{p}", "{p}.0", "00{p}")):
    """24 patients, 3 images each, one patient's group written three ways (the CSV a
    spreadsheet round trip gives); returns the CSV and the true patient of every image path."""
    from PIL import Image

    rows, patient_of = [], {}
    for p in range(1, 25):
        for k, spelled in enumerate(spellings):
            rel = f"img/p{p:02d}_{k}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4, 3), p, np.uint8)).save(root / rel)
            rows.append({"path": rel, "label": "benign" if p % 3 else "malignant",
                         "group": spelled.format(p=p)})
            patient_of[rel] = p
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv", patient_of


def test_a_group_written_4_4_0_and_004_is_one_group_in_the_split_and_its_leak_report(tmp_path):
    from lmdlt.data.splits import group_overlap

    csv, patient_of = _patients_csv(tmp_path)
    idx = get_source("csv", str(csv)).index()
    split_cfg = {"protocol": "random", "val_fraction": 0.2, "test_fraction": 0.2}
    table = build_split(idx, {**split_cfg, "grouped": True}, 0)
    per_patient = table.assign(patient=table["path"].map(patient_of)).groupby("patient")["split"]
    assert (per_patient.nunique() == 1).all(), "a patient crosses splits"
    report = group_overlap(table)
    assert report["groups"] == 24 and report["groups_in_several_splits"] == 0
    # a naive split: the leak report counts patients, exactly the groups the split compared
    naive = build_split(idx, {**split_cfg, "grouped": False}, 0)
    per_patient = naive.assign(patient=naive["path"].map(patient_of)).groupby("patient")["split"]
    assert group_overlap(naive)["groups"] == 24
    assert group_overlap(naive)["groups_in_several_splits"] == int((per_patient.nunique() > 1).sum()) > 0


def test_the_leak_report_and_check_compare_groups_as_the_split_does():
    """A manifest whose group column has one patient in several spellings (hand-made, or from
    an older index): the report and the leak check still see one patient."""
    from lmdlt.data.splits import check_disjoint, group_overlap

    table = pd.DataFrame({"id": ["a", "b", "c", "d"], "label": [0, 0, 1, 1],
                          "split": ["train", "test", "train", "val"],
                          "group": ["4", "004", "7.0", "7"]})
    report = group_overlap(table)
    assert report["groups"] == 2 and report["groups_in_several_splits"] == 2
    assert report["train_test_groups"] == 1 and report["test_images_with_train_group"] == 1
    with pytest.raises(ValueError, match="split leak: group '4' crosses splits"):
        check_disjoint(table)


@pytest.mark.parametrize("counts, message", [
    ({"a": 10, "b": 10, "c": 1}, "class 'c' has 1 images: too few to split"),
    ({"a": 10, "b": 10, "c": 0}, r"classes without images: \['c'\]"),
])
def test_an_empty_or_one_image_class_is_caught_from_the_index(tmp_path, counts, message):
    data = image_tree(tmp_path / "data", counts)
    cfg = folder_config(data)
    from lmdlt.config import validate_config
    from lmdlt.data.splits import check_data

    cfg = validate_config(cfg)
    with pytest.raises(ValueError, match=message):
        check_data(cfg["dataset"], cfg["split"], cfg["seeds"])


# --- the split's own guards and its leak report, each on a table made by hand ------------------

def test_an_image_id_twice_in_a_split_is_a_leak():
    from lmdlt.data.splits import check_disjoint

    table = pd.DataFrame({"id": ["a", "b", "a"], "label": [0, 1, 0], "split": ["train", "val", "test"]})
    with pytest.raises(ValueError, match="split leak: image id 'a' appears more than once"):
        check_disjoint(table)


def test_the_leak_report_counts_only_the_images_whose_group_is_in_training():
    from lmdlt.data.splits import group_overlap

    table = pd.DataFrame({"id": list("abcdef"), "label": [0, 1, 0, 1, 0, 1],
                          "split": ["train", "train", "val", "val", "test", "test"],
                          "group": ["p1", "p2", "p1", "p3", "p4", "p2"]})
    report = group_overlap(table)
    assert (report["val_images_with_train_group"], report["val_images"]) == (1, 2)
    assert (report["test_images_with_train_group"], report["test_images"]) == (1, 2)
    assert (report["train_val_groups"], report["train_test_groups"], report["val_test_groups"]) == (1, 1, 0)


def test_a_split_without_an_image_of_some_class_is_refused():
    idx = SourceIndex(pd.DataFrame({"id": [f"i{i}" for i in range(6)], "label": [0, 1, 0, 1, 0, 0],
                                    "fold": ["train", "train", "val", "test", "test", "val"]}), ["a", "b"])
    with pytest.raises(ValueError, match=r"split 'val' has no image of classes \['b'\]"):
        build_split(idx, {"protocol": "predefined", "folds": None}, 0)


def test_a_small_class_keeps_one_val_and_one_test_image():
    """round(4 x 0.1) = 0: a class of at least 3 images still gets one val and one test image."""
    idx = SourceIndex(pd.DataFrame({"id": [f"i{i}" for i in range(24)], "label": [0] * 20 + [1] * 4}),
                      ["big", "small"])
    counts = split_counts(build_split(idx, {"protocol": "random", "val_fraction": 0.1,
                                            "test_fraction": 0.1}, 0), ["big", "small"])
    assert counts.loc["small"].tolist() == [2, 1, 1, 4]
    assert counts.loc["big"].tolist() == [16, 2, 2, 20]


def test_cui_n_cap_sets_the_head_class_count(digits):
    counts = split_counts(build_split(digits, {**CUI, "imbalance_ratio": 10, "n_cap": 100}, 0),
                          digits.class_names)
    assert max(counts["train"]) == 100  # without n_cap: the fewest images a class has left, 129
