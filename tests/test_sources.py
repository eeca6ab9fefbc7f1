"""Sources: index building from the published layouts (real metadata from ../shared/data where it
is there, small fake trees otherwise), image decoding, and clear errors for bad input."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lmdlt.data.image_cache import ImageCache, build_image_cache
from lmdlt.data.sources import get_source
from lmdlt.data.sources._files import load_image
from lmdlt.data.sources.hyper_kvasir import ALIASES, CLASSES as HK_CLASSES
from lmdlt.io import provenance


def write_jpeg(path, seed=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG")


def no_leftovers(folder) -> bool:
    return not any(p.name.startswith(".") and ".tmp-" in p.name for p in folder.rglob("*"))


# ---------------------------------------------------------------------------- ISIC 2019

ISIC_COLS = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def fake_isic(root, rows):
    """rows: (image name, class column)"""
    recs = []
    for name, cls in rows:
        recs.append({c: (name if c == "image" else (1.0 if c == cls else 0.0)) for c in ISIC_COLS})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(recs, columns=ISIC_COLS).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)


@pytest.mark.realdata
def test_isic2019_real_csv(shared_data):
    idx = get_source("isic2019", str(shared_data / "isic2019")).index()
    counts = dict(zip(idx.class_names, np.bincount(idx.table["label"], minlength=8)))
    assert counts == {"NV": 12875, "MEL": 4522, "BCC": 3323, "BKL": 2624, "AK": 867,
                      "SCC": 628, "VASC": 253, "DF": 239}
    assert len(idx.table) == 25331
    assert idx.table["id"].str.endswith("_downsampled").sum() == 2074


def test_isic2019_fake_tree_downsampled_and_unk(tmp_path):
    root = tmp_path / "isic"
    fake_isic(root, [("ISIC_0000001", "NV"), ("ISIC_0000002_downsampled", "MEL"),
                     ("ISIC_0000003", "UNK"), ("ISIC_0000004", "SCC")])
    img = root / "ISIC_2019_Training_Input"
    write_jpeg(img / "ISIC_0000001.jpg", 1)
    write_jpeg(img / "ISIC_0000002.jpg", 2)  # a redistribution without the suffix
    write_jpeg(img / "ISIC_0000004_downsampled.jpg", 4)  # and the other way round
    src = get_source("isic2019", str(root))
    idx = src.index()
    assert idx.table["id"].tolist() == ["ISIC_0000001", "ISIC_0000002_downsampled", "ISIC_0000004"]
    assert [idx.class_names[i] for i in idx.table["label"]] == ["NV", "MEL", "SCC"]  # UNK dropped
    x = src.images(idx.table, 16)
    assert x.shape == (3, 16, 16, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[1], load_image(img / "ISIC_0000002.jpg", 16))


def test_isic2019_missing_column_names_it(tmp_path):
    root = tmp_path / "isic"
    fake_isic(root, [("ISIC_0000001", "NV")])
    df = pd.read_csv(root / "ISIC_2019_Training_GroundTruth.csv").drop(columns="VASC")
    df.to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    with pytest.raises(ValueError, match=r"ISIC_2019_Training_GroundTruth.csv' lacks column\(s\) \['VASC'\]"):
        get_source("isic2019", str(root)).index()


def test_ham10000_missing_column_names_it(tmp_path):
    fake_ham(tmp_path, n=3)
    df = pd.read_csv(tmp_path / "HAM10000_metadata.csv").drop(columns="lesion_id")
    df.to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"HAM10000_metadata.csv' lacks column\(s\) \['lesion_id'\]"):
        get_source("ham10000", str(tmp_path), {"image_dirs": ["images"]}).index()


def test_hyper_kvasir_missing_column_names_it(tmp_path):
    fake_hk_official(tmp_path)
    df = pd.read_csv(tmp_path / "image-labels.csv").drop(columns="Finding")
    df.to_csv(tmp_path / "image-labels.csv", index=False)
    with pytest.raises(ValueError, match=r"image-labels.csv' lacks column\(s\) \['Finding'\]"):
        get_source("hyper_kvasir", str(tmp_path)).index()


@pytest.mark.parametrize("name", ["../outside", "sub/../../outside", "/etc/passwd"])
def test_image_path_cannot_escape_root(tmp_path, name):
    root = tmp_path / "isic"
    fake_isic(root, [(name, "NV")])
    write_jpeg(tmp_path / "outside.jpg")
    src = get_source("isic2019", str(root), {"image_dir": "."})
    idx = src.index()
    with pytest.raises(ValueError, match="data root"):
        src.images(idx.table, 8)


def test_image_dir_option_cannot_escape_root(tmp_path):
    root = tmp_path / "isic"
    fake_isic(root, [("ISIC_0000001", "NV")])
    src = get_source("isic2019", str(root), {"image_dir": "../elsewhere"})
    with pytest.raises(ValueError, match="escapes the data root"):
        src.images(src.index().table, 8)


# ---------------------------------------------------------------------------- HAM10000

def fake_ham(root, n=12, dx=None, image_dir="images"):
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows = []
    for i in range(n):
        rows.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": f"ISIC_{i:07d}",
                     "dx": dx or classes[(i // 2) % 7], "dx_type": "histo", "age": 50.0,
                     "sex": "male", "localization": "back"})
        write_jpeg(root / image_dir / f"ISIC_{i:07d}.jpg", i)
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


@pytest.mark.realdata
def test_ham10000_real_metadata(shared_data):
    src = get_source("ham10000", str(shared_data / "ham10000"), {"image_dirs": ["images_200x150"]})
    idx = src.index()
    counts = dict(zip(idx.class_names, np.bincount(idx.table["label"], minlength=7)))
    assert counts == {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
    assert idx.table["group"].nunique() == 7470
    x = src.images(idx.table.iloc[:4], 28)
    assert x.shape == (4, 28, 28, 3) and x.std() > 0


def test_ham10000_label_not_in_class_list(tmp_path):
    fake_ham(tmp_path, n=3, dx="melanoma-ish")
    with pytest.raises(ValueError, match=r"HAM10000_metadata.csv.*'melanoma-ish' is not in the class list"):
        get_source("ham10000", str(tmp_path), {"image_dirs": ["images"]}).index()


def test_ham10000_missing_and_corrupt_image_named(tmp_path):
    fake_ham(tmp_path, n=4)
    src = get_source("ham10000", str(tmp_path), {"image_dirs": ["images"]})
    idx = src.index()
    (tmp_path / "images" / "ISIC_0000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="ISIC_0000002.jpg"):
        src.images(idx.table, 8)
    (tmp_path / "images" / "ISIC_0000002.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"ISIC_0000002.jpg.*corrupt"):
        src.images(idx.table, 8)


def test_ham10000_official_two_part_layout(tmp_path):
    fake_ham(tmp_path, n=4, image_dir="HAM10000_images_part_1")
    (tmp_path / "HAM10000_images_part_2").mkdir()
    os.replace(tmp_path / "HAM10000_images_part_1" / "ISIC_0000003.jpg",
               tmp_path / "HAM10000_images_part_2" / "ISIC_0000003.jpg")
    src = get_source("ham10000", str(tmp_path))  # default image_dirs: the two official parts
    assert src.images(src.index().table, 8).shape == (4, 8, 8, 3)


# ---------------------------------------------------------------------------- Hyper-Kvasir

@pytest.mark.realdata
def test_hyper_kvasir_real_labels_and_official_folds(shared_data):
    root = shared_data / "hyper_kvasir"
    idx = get_source("hyper_kvasir", str(root)).index()
    assert idx.class_names == HK_CLASSES and len(HK_CLASSES) == 23
    counts = dict(zip(idx.class_names, np.bincount(idx.table["label"], minlength=23)))
    assert len(idx.table) == 10662
    assert counts == {  # ../shared/data/README.md
        "bbps-2-3": 1148, "polyps": 1028, "cecum": 1009, "dyed-lifted-polyps": 1002, "pylorus": 999,
        "dyed-resection-margins": 989, "z-line": 932, "retroflex-stomach": 764, "bbps-0-1": 646,
        "ulcerative-colitis-grade-2": 443, "esophagitis-a": 403, "retroflex-rectum": 391,
        "esophagitis-b-d": 260, "ulcerative-colitis-grade-1": 201, "ulcerative-colitis-grade-3": 133,
        "impacted-stool": 131, "barretts-short-segment": 53, "barretts": 41,
        "ulcerative-colitis-grade-0-1": 35, "ulcerative-colitis-grade-2-3": 28,
        "ulcerative-colitis-grade-1-2": 11, "ileum": 9, "hemorrhoids": 6}
    assert max(counts.values()) / min(counts.values()) == pytest.approx(191.3, abs=0.1)
    for folds, n_folds in (("2_fold_split.csv", 2), ("5_fold_split.csv", 5)):
        fidx = get_source("hyper_kvasir", str(root), {"folds": f"official_splits/{folds}"}).index()
        # one-to-one: every image of image-labels.csv has exactly one fold entry, same class
        raw = pd.read_csv(root / "official_splits" / folds, sep=";")
        assert len(raw) == len(idx.table) == len(fidx.table)
        assert set(raw["file-name"].str.removesuffix(".jpg")) == set(idx.table["id"])
        assert fidx.table["label"].tolist() == idx.table["label"].tolist()
        assert fidx.table["fold"].nunique() == n_folds
        assert set(raw["class-name"]) - set(HK_CLASSES) <= set(ALIASES)


def fake_hk_official(root, per_class=2):
    rows = []
    organ_dir = {"Lower GI": "lower-gi-tract", "Upper GI": "upper-gi-tract"}
    for c_i, cls in enumerate(["polyps", "cecum", "esophagitis-a"]):
        organ = "Upper GI" if cls.startswith("eso") else "Lower GI"
        group = "pathological-findings" if cls != "cecum" else "anatomical-landmarks"
        for j in range(per_class):
            uid = f"{c_i:08d}-0000-0000-0000-{j:012d}"
            rows.append({"Video file": uid, "Organ": organ, "Finding": cls, "Classification": group})
            write_jpeg(root / "labeled-images" / organ_dir[organ] / group / cls / f"{uid}.jpg", c_i * 10 + j)
    pd.DataFrame(rows).to_csv(root / "image-labels.csv", index=False)
    return pd.DataFrame(rows)


def test_hyper_kvasir_fake_trees_official_and_flat_agree(tmp_path):
    official = tmp_path / "hk"
    rows = fake_hk_official(official)
    src = get_source("hyper_kvasir", str(official))
    idx = src.index()
    x = src.images(idx.table, 12)
    # the flat tree, with the fold-file spellings (polyp, normal-cecum, oesophagitis-a)
    flat = tmp_path / "flat"
    spelling = {"polyps": "polyp", "cecum": "normal-cecum", "esophagitis-a": "oesophagitis-a"}
    for r, p in zip(rows.itertuples(), idx.table["path"]):
        dest = flat / spelling[r.Finding] / f"{r._1}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((official / "labeled-images" / p).read_bytes())
    fsrc = get_source("hyper_kvasir", str(flat), {"layout": "flat"})
    fidx = fsrc.index()
    merged = idx.table.merge(fidx.table, on="id", suffixes=("", "_flat"))
    assert len(merged) == len(idx.table) == 6
    assert (merged["label"] == merged["label_flat"]).all()
    order = fidx.table.set_index("id").loc[idx.table["id"]].reset_index()
    np.testing.assert_array_equal(fsrc.images(order, 12), x)


def test_hyper_kvasir_fold_file_mismatch_named(tmp_path):
    root = tmp_path / "hk"
    rows = fake_hk_official(root)
    folds = pd.DataFrame({"file-name": rows["Video file"] + ".jpg", "class-name": rows["Finding"],
                          "split-index": [0, 1] * 3})
    folds.loc[0, "class-name"] = "normal-cecum"  # a polyp said to be cecum
    folds.to_csv(root / "folds.csv", sep=";", index=False)
    with pytest.raises(ValueError, match=rf"folds.csv.*{rows['Video file'][0]}.*'cecum'.*'polyps'"):
        get_source("hyper_kvasir", str(root), {"folds": "folds.csv"}).index()
    folds.iloc[1:].to_csv(root / "folds.csv", sep=";", index=False)  # one image without a fold
    with pytest.raises(ValueError, match=rf"{rows['Video file'][0]}.*has no fold"):
        get_source("hyper_kvasir", str(root), {"folds": "folds.csv"}).index()


# ---------------------------------------------------------------------------- ISIC lists (Ju et al.)

JU_TRAIN = {100: [5000, 2590, 1342, 695, 360, 187, 97, 51], 200: [5000, 2346, 1101, 517, 243, 114, 54, 25],
            500: [5000, 2058, 847, 349, 144, 60, 25, 11]}


@pytest.mark.parametrize("r", [100, 200, 500])
@pytest.mark.realdata
def test_ju_isic2019_lists(shared_data, r):
    files = {s: f"{s}_{r}.npy" for s in ("train", "val", "test")}
    idx = get_source("isic_lists", str(shared_data / "isic_lt_splits" / "isic2019_8class"),
                     {"split_files": files}).index()
    per = idx.table.groupby(["fold", "label"]).size().unstack(fill_value=0)
    assert per.loc["train"].tolist() == JU_TRAIN[r]
    assert per.loc["val"].tolist() == [50] * 8 and per.loc["test"].tolist() == [100] * 8


@pytest.mark.realdata
def test_ju_isic_archive_lists(shared_data):
    idx = get_source("isic_lists", str(shared_data / "isic_lt_splits" / "isic_archive_14class")).index()
    sizes = idx.table["fold"].value_counts().to_dict()
    assert sizes == {"train": 17508, "val": 2503, "test": 5009}
    train = np.bincount(idx.table.loc[idx.table["fold"] == "train", "label"], minlength=14)
    assert train.tolist() == [9012, 3165, 2375, 1024, 608, 459, 268, 189, 177, 172, 22, 18, 10, 9]
    # two different images share an ISIC number, one with the _downsampled suffix: ids keep it
    assert {"ISIC_0013863", "ISIC_0013863_downsampled"} <= set(idx.table["id"])


def test_isic_lists_name_missing_from_label_map(tmp_path):
    pd.DataFrame({"name": ["A.jpg", "B.jpg"], "label": [0, 1]}).to_csv(tmp_path / "dic.csv", index=False)
    np.save(tmp_path / "train.npy", np.array(["A.jpg", "C.jpg"]))
    np.save(tmp_path / "val.npy", np.array(["B.jpg"]))
    np.save(tmp_path / "test.npy", np.array([], dtype="<U5"))
    with pytest.raises(ValueError, match=r"train.npy.*'C.jpg' is not in the label map"):
        get_source("isic_lists", str(tmp_path)).index()
    np.save(tmp_path / "train.npy", np.array(["A.jpg"]))
    with pytest.raises(ValueError, match=r"dic.csv.*'B.jpg' has label 1, not in the class list \['x'\]"):
        get_source("isic_lists", str(tmp_path), {"class_names": ["x"]}).index()


# ---------------------------------------------------------------------------- MedMNIST, ImageFolder, CIFAR

def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for fold, n in (("train", 10), ("val", 3), ("test", 4)):
        arrays[f"{fold}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{fold}_labels"] = (np.arange(n) % 3).reshape(-1, 1)
    np.savez(tmp_path / "dermamnist.npz", **arrays)
    src = get_source("medmnist", str(tmp_path), {"file": "dermamnist.npz"})
    idx = src.index()
    assert idx.table["fold"].value_counts().to_dict() == {"train": 10, "test": 4, "val": 3}
    assert idx.class_names == ["0", "1", "2"]
    x = src.images(idx.table.iloc[[12, 0, 15]], None)
    np.testing.assert_array_equal(x, np.stack([arrays["val_images"][2], arrays["train_images"][0],
                                               arrays["test_images"][2]]))
    # the .npz as the root itself, and a multi-label file rejected
    assert len(get_source("medmnist", str(tmp_path / "dermamnist.npz")).index().table) == 17
    arrays["train_labels"] = np.zeros((10, 14), np.int64)
    np.savez(tmp_path / "chest.npz", **arrays)
    with pytest.raises(ValueError, match=r"chest.npz.*multi-label"):
        get_source("medmnist", str(tmp_path), {"file": "chest.npz"}).index()
    arrays["train_labels"] = np.zeros((10, 1), np.int64)
    del arrays["val_labels"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(ValueError, match=r"broken.npz.*lacks array 'val_labels'"):
        get_source("medmnist", str(tmp_path), {"file": "broken.npz"}).index()


def test_imagefolder_and_split_dirs(tmp_path):
    for split in ("train", "test"):
        for c, n in (("cat", 3), ("dog", 2)):
            for i in range(n):
                write_jpeg(tmp_path / split / c / f"{split}{i}.png".replace(".png", ".jpg"), i)
    src = get_source("imagefolder", str(tmp_path / "train"))
    idx = src.index()
    assert idx.class_names == ["cat", "dog"] and len(idx.table) == 5 and "fold" not in idx.table
    assert src.images(idx.table, 10).shape == (5, 10, 10, 3)
    idx2 = get_source("imagefolder", str(tmp_path), {"split_dirs": {"train": "train", "test": "test"}}).index()
    assert idx2.table["fold"].value_counts().to_dict() == {"train": 5, "test": 5}
    with pytest.raises(ValueError, match=r"folder .*dog.*'dog' is not in the class list \['cat'\]"):
        get_source("imagefolder", str(tmp_path / "train"), {"class_names": ["cat"]}).index()


def test_cifar_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = {}
    for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data[b] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(folder / b, "wb") as f:
            pickle.dump({b"data": data[b], b"labels": [0, 1, 2, 1], b"batch_label": b.encode()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird"]}, f)
    src = get_source("cifar", str(tmp_path))
    idx = src.index()
    assert idx.class_names == ["airplane", "automobile", "bird"]
    assert idx.table["fold"].value_counts().to_dict() == {"train": 20, "test": 4}
    x = src.images(idx.table.iloc[[21]], None)
    np.testing.assert_array_equal(x[0], data["test_batch"][1].reshape(3, 32, 32).transpose(1, 2, 0))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"test_batch.*refusing to load"):
        src.index()


# ---------------------------------------------------------------------------- image cache

@pytest.mark.realdata
def test_cache_equals_fresh_decode_on_real_jpegs(shared_data, tmp_path):
    meta = pd.read_csv(shared_data / "ham10000" / "HAM10000_metadata.csv").iloc[::500]
    root = tmp_path / "ham"
    root.mkdir()
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    (root / "images").symlink_to(shared_data / "ham10000" / "images_200x150")  # links stay allowed
    src = get_source("ham10000", str(root), {"image_dirs": ["images"]})
    out = tmp_path / "cache.h5"
    n = build_image_cache(src, 28, out, provenance("image_cache", {"test": True}))
    assert n == len(meta) == 21
    cache = ImageCache(out)
    ids = meta["image_id"].tolist()[::-1]
    cached = cache.load(ids)
    fresh = np.stack([load_image(shared_data / "ham10000" / "images_200x150" / f"{i}.jpg", 28) for i in ids])
    np.testing.assert_array_equal(cached, fresh)
    assert cache.shape == (21, 28, 28, 3) and cached.std() > 10


def test_cache_build_error_leaves_nothing(tmp_path):
    fake_ham(tmp_path / "ham", n=6)
    (tmp_path / "ham" / "images" / "ISIC_0000004.jpg").write_bytes(b"garbage")
    src = get_source("ham10000", str(tmp_path / "ham"), {"image_dirs": ["images"]})
    out = tmp_path / "out" / "images_8px.h5"
    with pytest.raises(ValueError, match=r"ISIC_0000004.jpg.*corrupt"):
        build_image_cache(src, 8, out, provenance("image_cache", {}))
    assert not out.exists() and no_leftovers(tmp_path / "out")


# ---------------------------------------------------------------------------- unreadable files


def _png_tree(root, counts):
    for c, n in counts.items():
        for i in range(n):
            p = root / c / f"{i:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((6, 6, 3), i % 256, np.uint8)).save(p)
    return root


def test_a_dangling_symlink_is_counted_and_named_in_the_cache_log(tmp_path, caplog):
    import json

    from lmdlt.cli import main
    from lmdlt.io import h5_read_provenance, open_h5

    root = _png_tree(tmp_path / "data", {"a": 60, "b": 60, "c": 30})
    (root / "a" / "zz_gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "images.h5"
    dataset = json.dumps({"source": "imagefolder", "root": str(root), "options": {}})
    with caplog.at_level("WARNING"):
        assert main(["cache", "--dataset", dataset, "--size", "6", "--out", str(out)]) == 0
    log = caplog.text
    assert "1 of 151 image files" in log and "zz_gone.png" in log and "dangling symbolic link" in log
    assert ImageCache(out).shape[0] == 150
    with open_h5(out) as f:
        skipped = h5_read_provenance(f)["config"]["skipped_files"]
    assert [Path(p).name for p, _ in skipped] == ["zz_gone.png"]


def test_unreadable_files_above_one_percent_are_an_error_naming_them(tmp_path):
    root = _png_tree(tmp_path / "data", {"a": 14, "b": 10, "c": 8})
    (root / "b" / "broken.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ValueError, match=r"1 of 33 image files cannot be read.*broken\.png.*"
                                         r"dangling symbolic link.*more than 1%"):
        get_source("imagefolder", str(root)).index()


# ---------------------------------------------------------------------------- numeric-looking labels


def test_csv_labels_0_and_0_0_are_one_class(tmp_path, caplog):
    import json

    from lmdlt.cli import main
    from lmdlt.data.splits import read_manifest

    rows = []
    for i in range(24):
        label = ("0", "0.0", "1", "1")[i % 4] if i < 16 else "2"
        p = tmp_path / "img" / f"{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(p)
        rows.append({"path": f"img/{i:02d}.png", "label": label})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    with caplog.at_level("WARNING"):
        idx = get_source("csv", str(tmp_path / "labels.csv")).index()
    assert idx.class_names == ["0", "1", "2"]
    assert np.bincount(idx.table["label"]).tolist() == [8, 8, 8]
    assert "label '0' written '0', '0.0'" in caplog.text
    # the split sees the same three classes (no contradictory "class '0.0' has 0 images")
    out = tmp_path / "split.parquet"
    split = {"protocol": "random", "val_fraction": 0.25, "test_fraction": 0.25}
    dataset = json.dumps({"source": "csv", "root": str(tmp_path / "labels.csv"), "options": {}})
    assert main(["split", "--dataset", dataset, "--split", json.dumps(split), "--seed", "0",
                 "--out", str(out)]) == 0
    table, meta = read_manifest(out)
    assert meta["class_names"] == ["0", "1", "2"] and len(table) == 24
    # class names given in the config are compared the same way; two that collide are an error
    idx2 = get_source("csv", str(tmp_path / "labels.csv"), {"class_names": [2, "1.0", "000"]}).index()
    assert idx2.class_names == ["2", "1", "0"]
    with pytest.raises(ValueError, match=r"class_names: '0' and '0.0' are one class"):
        get_source("csv", str(tmp_path / "labels.csv"), {"class_names": ["0", "0.0", "1"]}).index()
