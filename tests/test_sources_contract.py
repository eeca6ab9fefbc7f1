"""The data-source contract, for every registered source (``lmdlt.data.sources``): each is built
from a tiny synthetic tree in its published layout (one builder per source below; a source
without one fails ``test_every_registered_source_has_a_fixture``), then:

* its index has unique string ids, integer labels in 0..K-1 and K string class names, and the
  same tree gives the same index (ids, labels, classes, order);
* every image decodes to uint8 (N, size, size, C) in the table's row order, twice the same;
* each image's label names the class it was written for: a fixture image of class c is filled
  with the grey level 60 c + 30, so the decoded pixels say which class the source should have
  read (whatever id scheme the source uses);
* a source whose images are files lists one existing file per row (``image_files``).

Public behaviour only (the index, ``images``, ``image_files``); each source's format details and
errors are tested in tests/test_sources.py. Tiny trees: seconds."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lmdlt.data.sources import available_sources, get_source

SIZE = 8


def level(c: int) -> int:
    return 60 * c + 30


def write_image(path: Path, c: int, fmt: str = "JPEG", side: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), level(c), np.uint8)).save(path, fmt)


def class_grid(c: int, side: int, channels: int = 3) -> np.ndarray:
    return np.full((side, side, channels), level(c), np.uint8)


# Each builder writes the tree under ``root`` and returns (root or file, options, the class
# names the fixture wrote, in the order of their grey levels).

def build_isic2019(root: Path):
    cols = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    classes = ["MEL", "NV", "BCC"]
    rows = []
    for i, c in enumerate([0, 1, 1, 1, 2, 0, 1]):
        name = f"ISIC_{i:07d}" + ("_downsampled" if i == 3 else "")
        rows.append({k: (name if k == "image" else float(k == classes[c])) for k in cols})
        write_image(root / "ISIC_2019_Training_Input" / f"{name}.jpg", c)
    pd.DataFrame(rows, columns=cols).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    return root, {}, classes


def build_ham10000(root: Path):
    classes = ["bkl", "mel", "nv"]
    rows = []
    for i, c in enumerate([2, 2, 2, 1, 0, 2, 1, 0]):
        rows.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": f"ISIC_{i:07d}", "dx": classes[c],
                     "dx_type": "histo", "age": 50.0, "sex": "male", "localization": "back"})
        part = "HAM10000_images_part_1" if i % 2 else "HAM10000_images_part_2"
        write_image(root / part / f"ISIC_{i:07d}.jpg", c)
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root, {}, classes


def build_hyper_kvasir(root: Path):
    classes = ["cecum", "esophagitis-a", "polyps"]
    where = {"cecum": ("Lower GI", "lower-gi-tract", "anatomical-landmarks"),
             "esophagitis-a": ("Upper GI", "upper-gi-tract", "pathological-findings"),
             "polyps": ("Lower GI", "lower-gi-tract", "pathological-findings")}
    rows = []
    for j, c in enumerate([0, 0, 1, 2, 2, 2]):
        organ, organ_dir, group = where[classes[c]]
        uid = f"{c:08d}-0000-0000-0000-{j:012d}"
        rows.append({"Video file": uid, "Organ": organ, "Finding": classes[c], "Classification": group})
        write_image(root / "labeled-images" / organ_dir / group / classes[c] / f"{uid}.jpg", c)
    pd.DataFrame(rows).to_csv(root / "image-labels.csv", index=False)
    return root, {}, classes


def build_isic_lists(root: Path):
    classes = ["0", "1", "2"]
    names = {f"ISIC_{i:07d}.jpg": c for i, c in enumerate([0, 0, 1, 2, 1, 0, 2])}
    for name, c in names.items():
        write_image(root / name, c)
    pd.DataFrame({"name": list(names), "label": list(names.values())}).to_csv(root / "dic.csv", index=False)
    keys = list(names)
    for split, part in (("train", keys[:4]), ("val", keys[4:5]), ("test", keys[5:])):
        np.save(root / f"{split}.npy", np.array(part))
    return root, {}, classes


def build_imagefolder(root: Path):
    classes = ["cat", "dog", "owl"]
    for c, n in ((0, 3), (1, 2), (2, 1)):
        for i in range(n):
            write_image(root / classes[c] / f"{i}.png", c, "PNG")
    return root, {}, classes


def build_csv(root: Path):
    classes = ["benign", "malignant"]
    rows = []
    for i, c in enumerate([0, 0, 0, 1, 1, 0]):
        write_image(root / "img" / f"{i:02d}.png", c, "PNG")
        rows.append({"path": f"img/{i:02d}.png", "label": classes[c]})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv", {}, classes


def build_medmnist(root: Path):
    arrays = {}
    for fold, labels in (("train", [0, 1, 1, 2, 1]), ("val", [0, 2]), ("test", [1, 0])):
        arrays[f"{fold}_images"] = np.stack([class_grid(c, 28) for c in labels])
        arrays[f"{fold}_labels"] = np.array(labels).reshape(-1, 1)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "dermamnist.npz", **arrays)
    return root, {"file": "dermamnist.npz"}, ["0", "1", "2"]


def build_cifar(root: Path):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [0, 1, 2, 1]
        data = np.stack([class_grid(c, 32).transpose(2, 0, 1).reshape(-1) for c in labels])
        with open(folder / b, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b.encode()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird"]}, f)
    return root, {}, ["airplane", "automobile", "bird"]


def build_digits(root: Path):
    return None, {}, None  # embedded (scikit-learn's digits): no tree, no grey-level classes


BUILDERS = {"isic2019": build_isic2019, "ham10000": build_ham10000, "hyper_kvasir": build_hyper_kvasir,
            "isic_lists": build_isic_lists, "imagefolder": build_imagefolder, "csv": build_csv,
            "medmnist": build_medmnist, "cifar": build_cifar, "digits": build_digits}
SOURCES = available_sources()


def test_every_registered_source_has_a_fixture():
    assert sorted(BUILDERS) == SOURCES, "add a tiny-tree builder for the new source here"


@pytest.fixture(params=SOURCES)
def built(request, tmp_path):
    if request.param not in BUILDERS:
        pytest.fail(f"no fixture builder for source {request.param!r}")
    root, options, classes = BUILDERS[request.param](tmp_path / request.param)
    return request.param, (None if root is None else str(root)), options, classes


def test_index_ids_labels_and_class_names(built):
    name, root, options, classes = built
    idx = get_source(name, root, options).index()
    table, k = idx.table, len(idx.class_names)
    assert len(table) > 0 and k >= 2
    assert all(isinstance(c, str) for c in idx.class_names) and len(set(idx.class_names)) == k
    assert table["id"].map(type).eq(str).all() and table["id"].is_unique
    labels = table["label"].to_numpy()
    assert np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0 and labels.max() < k
    if classes is not None:  # every class the fixture wrote is a class of the index
        assert set(classes) <= set(idx.class_names), (classes, idx.class_names)
    again = get_source(name, root, options).index()
    pd.testing.assert_frame_equal(table.reset_index(drop=True), again.table.reset_index(drop=True))
    assert again.class_names == idx.class_names


def test_images_decode_in_row_order_to_uint8_squares_of_their_class(built):
    name, root, options, classes = built
    src = get_source(name, root, options)
    table = src.index().table
    x = src.images(table, SIZE)
    assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[:3] == (len(table), SIZE, SIZE)
    assert x.shape[3] in (1, 3)
    np.testing.assert_array_equal(src.images(table, SIZE), x)
    order = np.arange(len(table))[::-1]
    np.testing.assert_array_equal(src.images(table.iloc[order], SIZE), x[order])
    if classes is not None:
        names = src.index().class_names
        grey = x.reshape(len(x), -1).mean(1)
        written = np.rint((grey - 30) / 60).astype(int)
        assert np.abs(grey - np.array([level(c) for c in written])).max() < 6, "not a fixture image"
        read = [names[lab] for lab in table["label"]]
        assert read == [classes[c] for c in written]


def test_file_sources_list_one_existing_file_per_row(built):
    name, root, options, _ = built
    src = get_source(name, root, options)
    table = src.index().table
    files = src.image_files(table)
    if files is None:
        assert src.data_files() or not src.needs_root, f"{name}: neither image files nor data files"
        assert all(Path(p).is_file() for p in src.data_files())
        return
    assert len(files) == len(table)
    assert all(Path(p).is_file() for p in files)
    assert len(set(map(str, files))) == len(files)
