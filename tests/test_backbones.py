"""Encoders from torchvision and timm: every stage-1 method and ICC's E-step run with every encoder
family (the contract), the classifier is stripped, stems and feature maps are right, and the
fine-tuning settings (frozen stages, frozen BatchNorm statistics, the encoder's learning rate)
do what they say."""
import copy
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lmdlt.config import validate_variant
from lmdlt.data.image_cache import build_image_cache
from lmdlt.data.sources import get_source
from lmdlt.data.splits import build_split, write_manifest
from lmdlt.features import FeatureSet, extract_features
from lmdlt.io import provenance
from lmdlt.models import build_network, register_feature_map_hook
from lmdlt.models.checkpoint import load_checkpoint
from lmdlt.models.finetune import apply_finetune, param_groups
from lmdlt.stage1 import trainer
from lmdlt.stage1.base import available_methods
from lmdlt.stage1.trainer import train_stage1
from lmdlt.stage2.runner import run_stage2_encoder

# a tiny long-tailed digits split: 48 training images (one batch), 2 val / 2 test per class
SPLIT = {"protocol": "cui", "imbalance_ratio": 4, "val_per_class": 2, "test_per_class": 2,
         "n_cap": 8, "class_order": "count"}

#: (id, model config, image size): one encoder per family; tiny widths so that a step is cheap
ENCODERS = [
    ("small_resnet", {"arch": "small_resnet", "width": 4}, 16),
    # torchvision: BatchNorm, a hidden head layer (feature map 144 channels, features 256)
    ("torchvision_mobilenet", {"arch": "mobilenet_v3_small", "kwargs": {"width_mult": 0.25}}, 16),
    # timm ResNet with the CIFAR stem
    ("timm_resnet", {"arch": "timm:resnet18", "stem": "cifar",
                     "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}}, 16),
    # timm ViT: token features, LayerNorm only (no BatchNorm)
    ("timm_vit", {"arch": "timm:test_vit"}, 16),
    # timm ConvNeXt: LayerNorm, needs 32 px (4x4 stem, three 2x downsamplings)
    ("timm_convnext", {"arch": "timm:test_convnext"}, 32),
]

#: every stage-1 method, RRL also with its BatchNorm re-estimation (a ViT has none)
METHODS = [(m, {"consistency_start_epoch": 0} if m == "rrl" else {}) for m in available_methods()] + [
    ("rrl", {"consistency_start_epoch": 0, "bn_stats": "recalibrate"})]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    src = get_source("digits")
    for size in (16, 32):
        build_image_cache(src, size, d / f"images{size}.h5", provenance("image_cache", {"size": size}))
    index = src.index()
    write_manifest(d / "split.parquet", build_split(index, SPLIT, 0), index.class_names,
                   provenance("split", SPLIT, seed=0))
    return d


def _stage1(method: str, model: dict, params: dict | None = None, **over) -> dict:
    return validate_variant("stage1", {"method": method, "model": model, "epochs": 1, "batch_size": 48,
                                       "lr": 0.01, "params": dict(params or {}), **over})


def _train(tiny, cfg, size, out, monkeypatch=None, init=None):
    """Train; returns (initial state dict, checkpoint state dict, meta). ``init(net)`` changes
    the network before training (e.g. "pretrained" BatchNorm statistics)."""
    initial = {}
    if monkeypatch is not None:
        real = trainer.build_network

        def capture(*args, **kwargs):
            net = real(*args, **kwargs)
            if init is not None:
                init(net)
            initial.update(copy.deepcopy(net.state_dict()))
            return net
        monkeypatch.setattr(trainer, "build_network", capture)
    meta = train_stage1(tiny / "split.parquet", tiny / f"images{size}.h5", cfg, 0, out, threads=1, device="cpu")
    if monkeypatch is not None:
        monkeypatch.undo()
    return initial, torch.load(out, weights_only=True)["state_dict"], meta


@pytest.mark.parametrize("name,model,size", ENCODERS, ids=[e[0] for e in ENCODERS])
def test_every_method_trains_every_encoder(tiny, tmp_path, monkeypatch, name, model, size):
    """Each stage-1 method, one step through the trainer: finite losses, the stem's weights moved
    (the gradient reaches the whole encoder); the CE checkpoint reloads (no weights read) and its
    features extract, and ICC's E-step fine-tunes that encoder."""
    stem_prefixes = build_network(model, 1, 10, [0.5], [0.25], image_size=size).encoder.lmdlt_spec.stages[0]
    for i, (method, params) in enumerate(METHODS):
        out = tmp_path / f"{i}-{method}" / "model.pt"
        out.parent.mkdir()
        initial, state, meta = _train(tiny, _stage1(method, model, params), size, out, monkeypatch)
        row = meta["history"][-1]
        assert all(np.isfinite(v) for k, v in row.items() if k.startswith("loss")), (method, row)
        stem = [k for k in initial if k.startswith("encoder.")
                and any(k[len("encoder."):].startswith(p) for p in stem_prefixes)
                and initial[k].is_floating_point() and "running" not in k]
        assert stem, (method, stem_prefixes)
        assert any(not torch.equal(initial[k], state[k]) for k in stem), f"{method}: the stem did not move"

    ce = tmp_path / f"{[m for m, _ in METHODS].index('ce')}-ce" / "model.pt"
    extract_features(ce, tiny / "split.parquet", tiny / f"images{size}.h5", ce.with_name("f.h5"),
                     threads=1, device="cpu")
    fs = FeatureSet(ce.with_name("f.h5"))
    assert fs["train"]["features"].shape == (48, load_checkpoint(ce)[0].feature_dim)
    assert np.isfinite(fs["train"]["features"]).all()
    # ICC: one E/M iteration through the encoder
    icc = validate_variant("stage2", {"method": "icc", "params": {
        "iterations": 1, "virtual_per_class": 20, "m_epochs": 1, "m_batch_size": 32,
        "e_batch_size": 16, "e_lr": 0.05, "m_lr": 0.05}})
    run_stage2_encoder(ce, tiny / "split.parquet", tiny / f"images{size}.h5", icc, 0,
                       tmp_path / "icc.h5", threads=1, device="cpu")
    before = FeatureSet(ce.with_name("f.h5"))["train"]["features"]
    after = FeatureSet(tmp_path / "icc.h5")["train"]["features"]
    assert after.shape == before.shape and np.isfinite(after).all()
    assert not np.allclose(after, before, atol=1e-6), "the E-step left the encoder unchanged"


# --- architectures -----------------------------------------------------------------------------

def test_torchvision_resnet_stems():
    cifar = build_network({"arch": "resnet18", "stem": "cifar"}, 1, 3, [0.5], [0.25]).encoder
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and cifar.conv1.in_channels == 1
    assert isinstance(cifar.maxpool, nn.Identity) and isinstance(cifar.fc, nn.Identity)
    imagenet = build_network({"arch": "resnet18", "stem": "imagenet"}, 3, 3, [0.5] * 3, [0.25] * 3).encoder
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    # absent: cifar without pretrained weights (the earlier default), the weights' own with them
    assert build_network({"arch": "resnet18"}, 3, 3, [0.5] * 3, [0.25] * 3).encoder.conv1.kernel_size == (3, 3)
    spec = build_network({"arch": "resnet18", "pretrained": "imagenet"}, 3, 3, [0.5] * 3, [0.25] * 3,
                         load_weights=False).encoder.lmdlt_spec
    assert spec.extra["stem"] == "imagenet"
    with pytest.raises(ValueError, match="stem: cifar applies to ResNets"):
        build_network({"arch": "timm:test_vit", "stem": "cifar"}, 1, 3, [0.5], [0.25], image_size=16)


def test_torchvision_heads_are_stripped_and_dimensions_read():
    for arch, dim in (("convnext_tiny", 768), ("efficientnet_b0", 1280)):
        net = build_network({"arch": arch}, 3, 4, [0.5] * 3, [0.25] * 3)
        assert net.feature_dim == dim and net.classifier.in_features == dim
        linears = [m for m in net.encoder.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
        assert not linears, arch
        assert not any(isinstance(m, nn.Dropout) for m in net.encoder.modules()), arch
        assert net.features(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, dim)


def test_vit_feature_map_is_patch_tokens_without_the_class_token():
    """torchvision's vit_b_16 at 32 px (2 x 2 patches of 16) and timm's test ViT at 16 px:
    the map LCReg sees is (N, C, patches), the class token dropped."""
    net = build_network({"arch": "vit_b_16"}, 3, 4, [0.5] * 3, [0.25] * 3, image_size=32)
    seen = []
    register_feature_map_hook(net.encoder, seen.append)
    assert net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 4)
    assert seen[0].shape == (2, 768, 4) and net.feature_dim == 768
    tnet = build_network({"arch": "timm:test_vit", "kwargs": {"patch_size": 4}}, 1, 4, [0.5], [0.25], image_size=16)
    seen.clear()
    register_feature_map_hook(tnet.encoder, seen.append)
    tokens = tnet.encoder.model.forward_features(tnet.normalize(torch.zeros(2, 1, 16, 16, dtype=torch.uint8)))
    assert tokens.shape[1] == 16 + tnet.encoder.model.num_prefix_tokens
    tnet(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    torch.testing.assert_close(seen[0], tokens[:, tnet.encoder.model.num_prefix_tokens:].transpose(1, 2))


def test_arch_names_are_checked():
    from lmdlt import catalog
    from lmdlt.models.encoders import arch_problem

    assert arch_problem("resnet50") is None and arch_problem("timm:efficientnet_lite0") is None
    assert "unknown encoder 'resnet5'" in arch_problem("resnet5")
    assert "timm has no model 'no_such_net'" in arch_problem("timm:no_such_net")
    with pytest.raises(ValueError, match="timm has no model"):
        build_network({"arch": "timm:no_such_net"}, 3, 2, [0.5] * 3, [0.25] * 3)
    # the workflow's parse (no torch): the catalog's names
    cat = catalog.current()
    with monkeypatch_modules("lmdlt.models.encoders"):
        assert cat.arch_problem("convnext_tiny") is None and cat.arch_problem("timm:anything") is None
        assert "unknown encoder 'resnet5'" in cat.arch_problem("resnet5")
    with pytest.raises(Exception, match=r"stage1\.ce\.model\.arch: unknown encoder 'resnet5'"):
        from lmdlt.config import validate_config
        validate_config({"dataset": {"name": "d", "source": "digits"}, "split": {"protocol": "cui"},
                         "seeds": [0], "stage1": {"ce": {"method": "ce", "model": {"arch": "resnet5"}}}})


class monkeypatch_modules:
    """Hide modules from sys.modules inside the block (as in a process that never imported them)."""

    def __init__(self, *names):
        self.names = names

    def __enter__(self):
        self.saved = {n: sys.modules.pop(n) for n in self.names if n in sys.modules}

    def __exit__(self, *exc):
        sys.modules.update(self.saved)


# --- fine-tuning -------------------------------------------------------------------------------

def _bn_stats(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix) and ("running" in k)}


def test_frozen_stages_do_not_move(tiny, tmp_path, monkeypatch):
    """frozen_stages 1 on small_resnet (stem + first stage): their weights and BatchNorm
    statistics stay bit for bit; the later stages and the classifier train."""
    model = {"arch": "small_resnet", "width": 4}
    initial, state, meta = _train(tiny, _stage1("ce", model, finetune={"frozen_stages": 1}), 16,
                                  tmp_path / "m.pt", monkeypatch)
    frozen = [k for k in initial if k.startswith(("encoder.stem.", "encoder.layers.0."))]
    moving = [k for k in initial if k.startswith("encoder.layers.2.") and initial[k].is_floating_point()]
    assert frozen and moving
    for k in frozen:
        torch.testing.assert_close(state[k], initial[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(state[k], initial[k]) for k in moving)
    assert not torch.equal(state["classifier.weight"], initial["classifier.weight"])
    assert meta["finetune"]["frozen_stages"] == 1 and meta["finetune"]["frozen_parameters"] > 0


def test_freeze_bn_keeps_the_statistics_but_trains_the_affine_weights(tiny, tmp_path, monkeypatch):
    model = {"arch": "small_resnet", "width": 4}
    initial, state, _ = _train(tiny, _stage1("ce", model, finetune={"freeze_bn": True}), 16,
                               tmp_path / "m.pt", monkeypatch)
    stats = _bn_stats(initial, "encoder.")
    assert stats
    for k in stats:
        torch.testing.assert_close(state[k], initial[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(state["encoder.stem.1.weight"], initial["encoder.stem.1.weight"])
    # without it the statistics move
    initial, state, _ = _train(tiny, _stage1("ce", model), 16, tmp_path / "n.pt", monkeypatch)
    assert not torch.equal(state["encoder.stem.1.running_mean"], initial["encoder.stem.1.running_mean"])


def test_rrl_recalibration_keeps_frozen_statistics(tiny, tmp_path, monkeypatch):
    """RRL's BatchNorm re-estimation (bn_stats: recalibrate) resets every BatchNorm; a frozen
    one gets its (here: non-default, as if pretrained) statistics back."""
    def pretrained_statistics(net):
        bn = net.encoder.stem[1]
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.5)

    model = {"arch": "small_resnet", "width": 4}
    cfg = _stage1("rrl", model, {"consistency_start_epoch": 0, "bn_stats": "recalibrate"},
                  finetune={"frozen_stages": 0})
    initial, state, _ = _train(tiny, cfg, 16, tmp_path / "m.pt", monkeypatch, pretrained_statistics)
    assert float(initial["encoder.stem.1.running_var"][0]) == 2.5
    for k in _bn_stats(initial, "encoder.stem."):
        torch.testing.assert_close(state[k], initial[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(state["encoder.layers.1.bn1.running_var"], initial["encoder.layers.1.bn1.running_var"])


def test_encoder_learning_rate_is_its_own_group(tiny, tmp_path, monkeypatch):
    """One SGD step by hand: each parameter moves by -its group's lr x gradient; end to end, an
    encoder rate of 1e-9 leaves the encoder where it started while the classifier trains."""
    net = build_network({"arch": "small_resnet", "width": 4}, 1, 3, [0.5], [0.25])
    extra = nn.ModuleDict({"head": nn.Linear(16, 2)})
    groups = param_groups(net, extra, 0.1, {"encoder_lr": 0.01})
    assert [g["lr"] for g in groups] == [0.1, 0.01]
    assert {id(q) for q in groups[1]["params"]} == {id(q) for q in net.encoder.parameters()}
    assert {id(q) for q in groups[0]["params"]} == {id(q) for q in [*net.classifier.parameters(), *extra.parameters()]}
    opt = torch.optim.SGD(groups, lr=0.1)
    before = {id(q): q.detach().clone() for q in [*net.parameters(), *extra.parameters()]}
    for q in [*net.parameters(), *extra.parameters()]:
        q.grad = torch.ones_like(q)
    opt.step()
    for q in net.encoder.parameters():
        torch.testing.assert_close(q.detach(), before[id(q)] - 0.01)
    for q in [*net.classifier.parameters(), *extra.parameters()]:
        torch.testing.assert_close(q.detach(), before[id(q)] - 0.1)
    # absent: one group, every parameter at lr (LMD); frozen parameters are left out
    assert len(param_groups(net, extra, 0.1, None)) == 1
    apply_finetune(net, {"frozen_stages": 0})
    assert len(param_groups(net, extra, 0.1, None)[0]["params"]) == len(list(net.parameters())) + 2 - 3

    cfg = _stage1("ce", {"arch": "small_resnet", "width": 4}, finetune={"encoder_lr": 1e-9}, lr=0.1)
    initial, state, meta = _train(tiny, cfg, 16, tmp_path / "m.pt", monkeypatch)
    enc = [k for k in initial if k.startswith("encoder.") and "running" not in k and initial[k].is_floating_point()]
    assert max(float((state[k] - initial[k]).abs().max()) for k in enc) < 1e-6
    assert float((state["classifier.weight"] - initial["classifier.weight"]).abs().max()) > 1e-3


def test_frozen_stages_of_a_vit_and_the_limits(caplog):
    net = build_network({"arch": "timm:test_vit"}, 1, 3, [0.5], [0.25], image_size=16)
    stages = net.encoder.lmdlt_spec.stages
    apply_finetune(net, {"frozen_stages": 1})
    frozen = {n for n, q in net.encoder.named_parameters() if not q.requires_grad}
    assert frozen == {n for stage in stages[:2] for n in stage}
    assert any("pos_embed" in n for n in frozen) and any(".blocks.0." in n for n in frozen)
    with caplog.at_level("WARNING"):
        apply_finetune(net, {"freeze_bn": True})
    assert "no BatchNorm" in caplog.text
    with pytest.raises(ValueError, match=r"frozen_stages: 9, but the encoder has the stem and \d+ stages"):
        apply_finetune(build_network({"arch": "small_resnet", "width": 4}, 1, 3, [0.5], [0.25]),
                       {"frozen_stages": 9})


def test_frozen_modules_stay_in_eval_mode():
    net = build_network({"arch": "small_resnet", "width": 4}, 1, 3, [0.5], [0.25])
    apply_finetune(net, {"frozen_stages": 0})
    net.train()
    assert not net.encoder.stem[1].training and net.encoder.layers[0].bn1.training
    teacher = copy.deepcopy(net).train()  # RRL's EMA teacher is a copy
    assert not teacher.encoder.stem[1].training


def test_synchronised_batchnorm_keeps_timm_activations():
    """DDP's BatchNorm conversion: timm's BatchNormAct2d (norm, then its activation) stays a
    norm followed by the activation (torch's converter would drop the activation)."""
    import timm
    from timm.layers import BatchNormAct2d

    from lmdlt.stage1.distributed import CPUSyncBatchNorm, sync_batchnorm

    model = timm.create_model("test_efficientnet").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        cpu = sync_batchnorm(copy.deepcopy(model), "cpu").eval()
        assert any(isinstance(m, CPUSyncBatchNorm) for m in cpu.modules())
        torch.testing.assert_close(cpu(x), expected)  # not distributed: plain BatchNorm + act
    norm_act = {n for n, m in model.named_modules() if isinstance(m, BatchNormAct2d)}
    assert norm_act
    cuda = dict(sync_batchnorm(copy.deepcopy(model), "cuda").named_modules())
    assert {type(cuda[n]).__name__ for n in norm_act} == {"SyncBatchNormAct"}


def test_the_lite0_overlay_changes_ce_and_rrl_only():
    """overlays/lite0-digits.yaml over config.yaml: CE and RRL on ImageNet Lite0 at 32 px, in
    their own folder; every other variant is config.yaml's."""
    from pathlib import Path

    from lmdlt.config import load_config

    repo = Path(__file__).resolve().parents[1]
    base = load_config(repo / "config.yaml")
    cfg = load_config(repo / "config.yaml", overlays=[repo / "workflow/experiments/overlays/lite0-digits.yaml"])
    assert cfg["dataset"]["name"] == "digits-lt-lite0" and cfg["dataset"]["image_size"] == 32
    for name in ("ce", "rrl"):
        model = cfg["stage1"][name]["model"]
        assert model["arch"] == "timm:efficientnet_lite0" and model["pretrained"] == "imagenet"
        assert {k: v for k, v in cfg["stage1"][name].items() if k != "model"} == \
            {k: v for k, v in base["stage1"][name].items() if k != "model"}
    assert {n: v for n, v in cfg["stage1"].items() if n not in ("ce", "rrl")} == \
        {n: v for n, v in base["stage1"].items() if n not in ("ce", "rrl")}
    assert cfg["stage2"] == base["stage2"]
