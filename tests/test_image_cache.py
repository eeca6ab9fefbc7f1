"""lmdlt.data.image_cache: the cache's folder is keyed by the images, and its provenance guards
(a cache of another source or size, ids missing from it, a checkpoint trained on another split
or cache) refuse naming both files."""
import h5py
import numpy as np
import pytest

from conftest import STAGE1_SPLIT
from lmdlt.config import validate_variant
from lmdlt.data.image_cache import ImageCache, build_image_cache, check_checkpoint_inputs, load_split_images
from lmdlt.data.sources import get_source
from lmdlt.data.splits import build_split, read_manifest, write_manifest
from lmdlt.io import provenance
from lmdlt.models.checkpoint import load_checkpoint
from lmdlt.stage2.runner import run_stage2_encoder
from test_resume_stage2 import ICC


DIGITS = {"source": "digits", "root": None, "options": {}}


def _cache(path, size=8, **dataset):
    build_image_cache(get_source("digits"), size, path,
                      provenance("image_cache", {**DIGITS, **dataset, "image_size": size}))


def _other_split(path, seed=1):
    index = get_source("digits").index()
    write_manifest(path, build_split(index, STAGE1_SPLIT, seed), index.class_names,
                   provenance("split", {"dataset": DIGITS, "split": STAGE1_SPLIT}, seed=seed))


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


def test_image_cache_folder_is_keyed_by_the_images_not_the_experiment():
    from lmdlt.data.image_cache import cache_dir_name

    isic = {"name": "isic2019-lt-r100", "source": "isic2019", "root": "/data/isic", "image_size": 224,
            "options": {"image_dir": "ISIC_2019_Training_Input"}}
    r300 = {**isic, "name": "isic2019-lt-r300", "image_size": 32}  # another experiment, size in the file name
    assert cache_dir_name(isic) == cache_dir_name(r300)
    assert cache_dir_name(isic).startswith("isic2019-")
    assert cache_dir_name({**isic, "root": "/other/isic"}) != cache_dir_name(isic)
    assert cache_dir_name({**isic, "options": {"image_dir": "resized"}}) != cache_dir_name(isic)
