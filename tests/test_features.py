"""lmdlt.features: extraction's fast paths give the features of the plain path (nothing here is
timed; the timings are in benchmarks/).

- bf16 extraction (autocast, forced on the CPU) matches fp32 within a stated tolerance, and the
  features file records the precision it was computed at;
- channels-last extraction gives the fp32 features of the default layout;
- encoding nothing gives empty arrays of the right shapes;
- the features file holds N views of the training split (``features.train_views``) that differ
  from each other and from the clean features, with the stage-1 classifier's logits of each;
  N = 0 is the layout without views; extraction is deterministic; the views are the stage-1
  variant's own training augmentation (with no augmentation they are the clean features; RRL:
  the weak view).

The decoded-image cache equal to freshly decoded images is tested in test_sources.py
(``test_cache_equals_fresh_decode_on_real_jpegs``, real HAM10000 JPEGs) and test_stages.py
(``test_image_cache_holds_the_source_images``, rows across cache blocks).
"""
import h5py
import numpy as np
import pytest
import torch

from conftest import N_VIEWS, link_digits
from lmdlt.config import validate_variant
from lmdlt.features import FeatureSet, encode, extract_features, view_transform
from lmdlt.io import h5_read_provenance
from lmdlt.models.checkpoint import load_checkpoint


# bf16 keeps 8 bits of mantissa (relative rounding 2**-9 per operation); through the small
# ResNet the features' relative L2 error measured 0.4-0.5 % (logits 0.3 %, 99.7-100 % of the
# predicted classes equal). Stated tolerance: relative L2 error of every split's features and
# logits below 2 %, and at least 95 % of the predicted classes equal.
BF16_REL_L2 = 0.02
BF16_ARGMAX_AGREEMENT = 0.95


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """A stage-1 checkpoint trained for 2 epochs on digits-LT (8 px), beside its split and cache."""
    from lmdlt.stage1.trainer import train_stage1

    d = link_digits(digits, tmp_path_factory.mktemp("fast"))
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


def test_file_holds_n_views_that_differ_from_each_other_and_from_the_clean_features(chain):
    fs0, fs = FeatureSet(chain / "f0.h5"), FeatureSet(chain / "f3.h5")
    clean = fs["train"]["features"]
    views, logits = fs.train_views["features"], fs.train_views["logits"]
    assert views.shape == (N_VIEWS, *clean.shape) and views.dtype == np.float32
    assert logits.shape == (N_VIEWS, *fs["train"]["logits"].shape)
    for v in range(N_VIEWS):
        # most images differ from their clean feature in every view (a padded crop may keep a few)
        moved = np.abs(views[v] - clean).max(axis=1) > 1e-4
        assert moved.mean() > 0.5, v
        for w in range(v):
            assert (np.abs(views[v] - views[w]).max(axis=1) > 1e-4).mean() > 0.5, (v, w)
        w_, b_ = fs.classifier["weight"], fs.classifier["bias"]
        np.testing.assert_allclose(logits[v], views[v] @ w_.T + b_, rtol=1e-4, atol=1e-4)
    assert fs.num_train_views == N_VIEWS and int(fs.attrs["train_views"]) == N_VIEWS
    assert "weak" not in fs.provenance["config"]["view_transform"]
    assert fs.provenance["config"]["view_augment"]["crop_padding"] == 1
    # N = 0: the layout without views (no /train_views), and the same clean features
    assert fs0.train_views is None and fs0.num_train_views == 0
    with h5py.File(chain / "f0.h5") as f:
        assert "train_views" not in f and sorted(f["train"]) == ["features", "ids", "labels", "logits"]
    for split in ("train", "val", "test"):
        for k in ("features", "logits", "labels"):
            np.testing.assert_array_equal(fs0[split][k], fs[split][k])


def test_extraction_is_deterministic(chain):
    a, b = FeatureSet(chain / "f3.h5"), FeatureSet(chain / "f3b.h5")
    for k in ("features", "logits"):
        np.testing.assert_array_equal(a.train_views[k], b.train_views[k])
    assert a.provenance["config"]["view_seed"] == 0


def test_views_are_drawn_from_their_own_seed():
    """``augmented_views``: the same for a seed whatever the global random state, different for
    another seed, and the global random state is left as it was."""
    from lmdlt.data.transforms import train_transform
    from lmdlt.features import augmented_views

    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    t = train_transform({"crop_padding": 2, "hflip": True}, 8)
    torch.manual_seed(123)
    a = augmented_views(images, t, 2, seed=5)
    torch.manual_seed(456)
    b = augmented_views(images, t, 2, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augmented_views(images, t, 2, seed=6))
    assert not np.array_equal(a[0], a[1])
    torch.manual_seed(9)
    state = torch.get_rng_state()
    augmented_views(images, t, 1, seed=5)
    assert torch.equal(torch.get_rng_state(), state)


def test_without_augmentation_the_views_are_the_clean_features(chain):
    """The views go through the stage-1 variant's own augmentation, image by image in the order
    of /train/ids: with none (crop 0, no flips) they are exactly the clean features."""
    fs = FeatureSet(chain / "plain3.h5")
    for v in range(N_VIEWS):
        np.testing.assert_allclose(fs.train_views["features"][v], fs["train"]["features"], atol=1e-5)


def test_rrl_views_use_the_weak_augmentation():
    cfg = validate_variant("stage1", {"method": "rrl", "epochs": 2, "batch_size": 32, "lr": 0.05,
                                      "augment": {"crop_padding": 0},
                                      "params": {"flip": False, "vflip": False}})
    transform, described = view_transform(cfg, np.array([20, 10, 5]), 16)
    assert "weak" in described
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(0)
    for _ in range(5):  # the weak view is the identity here, the strong one is not
        assert torch.equal(transform(img), img)
