"""Correctness of the fast paths (nothing here is timed; the timings are in benchmarks/).

- bf16 extraction (autocast, forced on the CPU) matches fp32 within a stated tolerance, and the
  features file records the precision it was computed at;
- channels-last extraction gives the fp32 features of the default layout;
- the DataLoader options the code chooses from device, threads and data path.

The decoded-image cache equal to freshly decoded images is tested in test_sources.py
(``test_cache_equals_fresh_decode_on_real_jpegs``, real HAM10000 JPEGs) and test_stages.py
(``test_image_cache_holds_the_source_images``, rows across cache blocks).
"""
import h5py
import numpy as np
import pytest
import torch

from lmdlt.config import validate_variant
from lmdlt.data.image_cache import build_image_cache
from lmdlt.data.sources import get_source
from lmdlt.data.splits import build_split, write_manifest
from lmdlt.features import FeatureSet, encode, extract_features
from lmdlt.io import h5_read_provenance, provenance
from lmdlt.models.checkpoint import load_checkpoint
from lmdlt.runtime import loader_options

SPLIT = {"protocol": "cui", "imbalance_ratio": 50, "val_per_class": 15, "test_per_class": 30,
         "n_cap": None, "class_order": "count"}

# bf16 keeps 8 bits of mantissa (relative rounding 2**-9 per operation); through the small
# ResNet the features' relative L2 error measured 0.4-0.5 % (logits 0.3 %, 99.7-100 % of the
# predicted classes equal). Stated tolerance: relative L2 error of every split's features and
# logits below 2 %, and at least 95 % of the predicted classes equal.
BF16_REL_L2 = 0.02
BF16_ARGMAX_AGREEMENT = 0.95


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A stage-1 checkpoint trained for 2 epochs on digits-LT (8 px), with its split and cache."""
    from lmdlt.stage1.trainer import train_stage1

    d = tmp_path_factory.mktemp("fast")
    src = get_source("digits")
    build_image_cache(src, 8, d / "images.h5", provenance("image_cache", {"size": 8}))
    index = src.index()
    write_manifest(d / "split.parquet", build_split(index, SPLIT, 0), index.class_names,
                   provenance("split", SPLIT, seed=0))
    cfg = validate_variant("stage1", {"method": "ce", "epochs": 2, "batch_size": 32, "lr": 0.05})
    train_stage1(d / "split.parquet", d / "images.h5", cfg, 0, d / "model.pt", threads=1, device="cpu")
    return d


def _extract(d, name, **kw):
    out = d / name
    extract_features(d / "model.pt", d / "split.parquet", d / "images.h5", out, threads=1,
                     device="cpu", **kw)
    return out


def test_bf16_extraction_matches_fp32_within_tolerance(trained):
    fp32 = FeatureSet(_extract(trained, "fp32.h5", precision="fp32"))
    bf16 = FeatureSet(_extract(trained, "bf16.h5", precision="bf16"))
    for split in ("train", "val", "test"):
        a, b = bf16[split], fp32[split]
        assert a["features"].dtype == np.float32 and a["features"].shape == b["features"].shape
        assert 0 < rel_l2(a["features"], b["features"]) < BF16_REL_L2, split  # > 0: bf16 really ran
        assert rel_l2(a["logits"], b["logits"]) < BF16_REL_L2, split
        agree = (a["logits"].argmax(1) == b["logits"].argmax(1)).mean()
        assert agree >= BF16_ARGMAX_AGREEMENT, (split, agree)
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert list(a["ids"]) == list(b["ids"])


def test_features_file_records_its_precision(trained):
    auto = _extract(trained, "auto.h5")  # auto on the CPU: fp32, no channels-last
    forced = _extract(trained, "forced.h5", precision="bf16", channels_last="on")
    with h5py.File(auto, "r") as f:
        prov = h5_read_provenance(f)
        assert f.attrs["precision"] == "fp32"
        assert prov["config"]["precision"] == "fp32" and prov["config"]["channels_last"] is False
    with h5py.File(forced, "r") as f:
        prov = h5_read_provenance(f)
        assert f.attrs["precision"] == "bf16"
        assert prov["config"]["precision"] == "bf16" and prov["config"]["channels_last"] is True


def test_bad_precision_is_a_clear_error(trained):
    with pytest.raises(ValueError, match="compute.precision: 'fp16'"):
        _extract(trained, "bad.h5", precision="fp16")
    assert not (trained / "bad.h5").exists()


def test_channels_last_encode_equals_default_layout(trained):
    net, _ = load_checkpoint(trained / "model.pt", "cpu")
    images = np.random.default_rng(0).integers(0, 256, (70, 8, 8, 1), dtype=np.uint8)
    f0, z0 = encode(net, images, torch.device("cpu"), batch_size=32)
    f1, z1 = encode(net, images, torch.device("cpu"), batch_size=32, channels_last=True)
    np.testing.assert_allclose(f1, f0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z1, z0, rtol=1e-4, atol=1e-5)


def test_encode_of_nothing_has_the_right_shapes(trained):
    net, _ = load_checkpoint(trained / "model.pt", "cpu")
    f, z = encode(net, np.zeros((0, 8, 8, 1), np.uint8), torch.device("cpu"), precision="bf16")
    assert f.shape == (0, net.feature_dim) and z.shape == (0, net.classifier.out_features)


@pytest.mark.parametrize("device, threads, in_memory, workers", [
    ("cpu", 1, True, 0), ("cpu", 8, True, 0),         # decoded images in memory, CPU: none
    ("cpu", 1, False, 0), ("cpu", 4, False, 3),       # decoding on the fly: threads - 1
    ("cuda", 1, True, 1), ("cuda", 4, True, 3),       # CUDA: overlap with the GPU's work
    ("cuda", 16, True, 15), ("cuda", 64, True, 32),   # every core but the main process's, at most 32
    ("cuda", None, False, 1),                         # no threads given: 1
])
def test_loader_options(device, threads, in_memory, workers):
    opts = loader_options(device, threads, in_memory)
    # persistent workers: started once per loader (augmentation seeds are per sample, not per worker)
    assert opts == {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": device == "cuda"}


def test_loader_options_build_a_working_loader():
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.arange(10))
    for in_memory in (True, False):
        loader = DataLoader(ds, batch_size=4, **loader_options("cpu", 2, in_memory))
        assert torch.cat([b[0] for b in loader]).sort().values.tolist() == list(range(10))


def test_image_cache_folder_is_keyed_by_the_images_not_the_experiment():
    from lmdlt.data.image_cache import cache_dir_name

    isic = {"name": "isic2019-lt-r100", "source": "isic2019", "root": "/data/isic", "image_size": 224,
            "options": {"image_dir": "ISIC_2019_Training_Input"}}
    r300 = {**isic, "name": "isic2019-lt-r300", "image_size": 32}  # another experiment, size in the file name
    assert cache_dir_name(isic) == cache_dir_name(r300)
    assert cache_dir_name(isic).startswith("isic2019-")
    assert cache_dir_name({**isic, "root": "/other/isic"}) != cache_dir_name(isic)
    assert cache_dir_name({**isic, "options": {"image_dir": "resized"}}) != cache_dir_name(isic)


def test_setup_torch_is_deterministic_without_the_nan_fill():
    import torch.utils.deterministic as det

    from lmdlt.runtime import setup_torch

    before = (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory)
    try:
        setup_torch(0, 1)
        assert torch.are_deterministic_algorithms_enabled()
        assert det.fill_uninitialized_memory is False  # the 5% of docs/benchmarks.md, section 3
    finally:
        torch.use_deterministic_algorithms(before[0])
        det.fill_uninitialized_memory = before[1]
