"""CC-SAM (lmdlt/stage1/cc_sam.py) and the trainer's SAM-style two-pass step (base.SharpnessStep)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import link_digits
from lmdlt.stage1 import get_method
from lmdlt.stage1.base import SharpnessStep, Stage1Method
from lmdlt.stage1.cc_sam import class_radius_perturbation
from lmdlt.stage1.trainer import _sharpness_pass

DEFAULTS = {"flat_ratio": 0.3, "noise_ratio": 1.0e-6, "mixup": True, "mixup_alpha": 1.0, "step": "reference"}


class _Resume:
    def clear(self):
        pass


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(3, 2)


class _CE(Stage1Method):
    def loss(self, net, x, y, epoch):
        return {"ce": F.cross_entropy(net.classifier(x), y)}


def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    net = _Linear()
    with torch.no_grad():
        net.classifier.weight.copy_(torch.randn(2, 3, generator=g))
        net.classifier.bias.copy_(torch.randn(2, generator=g))
    return net, x, y


def _grad_at(w, b, x, y):
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    F.cross_entropy(F.linear(x, w, b), y).backward()
    return w.grad, b.grad


@pytest.mark.parametrize("a", [0.0, 0.4])
def test_two_pass_step_by_hand_on_a_linear_model(a):
    """Kills: the first-pass gradient used for the update; the weights not restored; e without
    the normalisation. Plain SAM: e = rho g / ||g|| (one norm over w and b), update gradient
    (1 - a) g(w + e) + a g(w), weights back at w before the optimiser step."""
    rho = 0.5
    net, x, y = _toy()
    w0, b0 = net.classifier.weight.detach().clone(), net.classifier.bias.detach().clone()
    method = _CE({}, np.array([3, 3]))
    extra = nn.ModuleDict()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    named = list(net.named_parameters())
    loss = method.loss(net, x, y, 0)["ce"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    _sharpness_pass(SharpnessStep(rho, first_pass_weight=a), net, extra, opt,
                    lambda: method.loss(net, x, y, 0), named, 0, 1, _Resume())
    # by hand
    gw, gb = _grad_at(w0, b0, x, y)
    norm = torch.sqrt((gw ** 2).sum() + (gb ** 2).sum())
    ew, eb = rho * gw / norm, rho * gb / norm
    gw2, gb2 = _grad_at(w0 + ew, b0 + eb, x, y)
    assert torch.equal(net.classifier.weight.detach(), w0) and torch.equal(net.classifier.bias.detach(), b0)
    torch.testing.assert_close(net.classifier.weight.grad, (1 - a) * gw2 + a * gw)
    torch.testing.assert_close(net.classifier.bias.grad, (1 - a) * gb2 + a * gb)
    assert not torch.allclose(gw2, gw, atol=1e-3)  # the two passes' gradients really differ here


def test_second_pass_leaves_batchnorm_statistics_of_the_first():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    net.classifier = nn.Linear(4, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    def loss():
        return {"ce": F.cross_entropy(net.classifier(net[1](net[0](x))), y)}

    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss()["ce"].backward()
    stats = [b.clone() for b in net[1].buffers()]
    _sharpness_pass(SharpnessStep(0.5), net, nn.ModuleDict(), opt, loss, list(net.named_parameters()),
                    0, 1, _Resume())
    assert all(torch.equal(b, s) for b, s in zip(net[1].buffers(), stats))


def test_class_radius_matches_the_reference_formula():
    """train_cifar.py:163-170 by hand for fixed counts: rho_c = nr sqrt(||w||) / sqrt(||g||) /
    sqrt(2) / (n_c - 1)^(1/4) / P^(1/4), e = rho_c sqrt(P) g / ||g||. Kills: the class condition
    dropped, the wrong power, ||w|| of the gradient instead of the weights."""
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # ||g|| = 5
    pnorm = torch.tensor(9.0)
    nr, p = 1e-6, 6
    for n in (2, 17, 82):
        (e,) = class_radius_perturbation([g], pnorm, n, p, nr)
        rho = nr * 3.0 / math.sqrt(5.0) / math.sqrt(2) / (n - 1) ** 0.25 / p ** 0.25
        torch.testing.assert_close(e, rho * math.sqrt(p) * g / 5.0)
    (head,) = class_radius_perturbation([g], pnorm, 82, p, nr)
    (tail,) = class_radius_perturbation([g], pnorm, 2, p, nr)
    torch.testing.assert_close(tail.norm() / head.norm(), torch.tensor(81.0 ** 0.25))
    (one,) = class_radius_perturbation([g], pnorm, 1, p, nr)  # guard: n_c - 1 clamped to 1
    assert torch.isfinite(one).all()


def test_flat_loss_uses_each_class_own_radius():
    """Kills: one perturbation for the whole batch, or counts ignored. The method's flat term
    equals a by-hand per-class computation with the reference's e_c."""
    from lmdlt.models import build_network

    torch.manual_seed(0)
    net = build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 1, 3, [0.5], [0.25])
    counts = np.array([50, 5, 2])
    params = {**DEFAULTS, "mixup": False, "noise_ratio": 0.05}
    m = get_method("cc_sam")(params, counts)
    x = torch.randint(0, 255, (9, 1, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 0, 1])
    terms = m.loss(net, x, y, 0)
    with torch.no_grad():
        z = net.features(x)
        w, b = net.classifier.weight, net.classifier.bias
        pnorm = torch.sqrt(w.norm() ** 2 + b.norm() ** 2) + 1e-12
        P = w.numel() + b.numel()
        total = []
        for c in range(3):
            idx = y == c
            with torch.enable_grad():
                wg, bg = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
                F.cross_entropy(F.linear(z[idx], wg, bg), y[idx]).backward()
            es = []
            for g in (wg.grad, bg.grad):
                rho = 0.05 * pnorm.sqrt() / g.norm().sqrt() / math.sqrt(2) / (counts[c] - 1) ** 0.25 / P ** 0.25
                es.append(rho * math.sqrt(P) * g / g.norm())
            total.append(F.cross_entropy(F.linear(z[idx], w + es[0], b + es[1]), y[idx], reduction="none"))
        flat = torch.cat(total).mean()
        ce = F.cross_entropy(net(x), y)
    torch.testing.assert_close(terms["flat"].detach(), 0.3 * flat)
    torch.testing.assert_close(terms["ce"].detach(), 0.7 * ce)
    assert not torch.allclose(flat, ce, atol=1e-4)  # the radius is large enough to matter here


@pytest.mark.parametrize("key,value,source", [
    ("flat_ratio", 0.3, "configs/Cifar10.json:25"),
    ("noise_ratio", 1.0e-6, "configs/Cifar10.json:26"),
    ("mixup", True, "configs/Cifar10.json:23"),
    ("mixup_alpha", 1.0, "configs/Cifar10.json:16"),
    ("step", "reference", "train_cifar.py:184-194 (one backward of the combined loss)"),
])
def test_defaults_are_the_reference_values(key, value, source):
    assert get_method("cc_sam").params[key]["default"] == value, source
    assert get_method("cc_sam")(DEFAULTS, np.array([3, 3])).sharpness_step() is None


def test_only_cc_sam_two_pass_asks_for_the_hook():
    from lmdlt.stage1 import available_methods

    for name in available_methods():
        if name != "cc_sam":
            assert get_method(name).sharpness_step is Stage1Method.sharpness_step, name
    step = get_method("cc_sam")({**DEFAULTS, "step": "two_pass"}, np.array([3, 3])).sharpness_step()
    assert step is not None and step.first_pass_weight == pytest.approx(0.7)


def _digits(digits, tmp_path):
    link_digits(digits, tmp_path)


def _train(tmp_path, name, method, params, epochs=2):
    from lmdlt.config import validate_variant
    from lmdlt.stage1.trainer import train_stage1

    cfg = validate_variant("stage1", {"method": method, "epochs": epochs, "batch_size": 64, "lr": 0.05,
                                      "params": params})
    meta = train_stage1(tmp_path / "split.parquet", tmp_path / "images.h5", cfg, 0, tmp_path / name,
                        threads=1, device="cpu", precision="fp32")
    return meta, torch.load(tmp_path / name, weights_only=True)["state_dict"]


@pytest.mark.parametrize("step", ["reference", "two_pass"])
def test_cc_sam_trains_and_saves_on_digits(digits, tmp_path, monkeypatch, step):
    """Also kills: the trainer ignoring the method's sharpness step (two_pass runs it every step)."""
    import lmdlt.stage1.trainer as trainer

    calls = []
    real = trainer._sharpness_pass
    monkeypatch.setattr(trainer, "_sharpness_pass", lambda *a, **k: calls.append(1) or real(*a, **k))
    _digits(digits, tmp_path)
    meta, state = _train(tmp_path, "model.pt", "cc_sam", {"step": step})
    assert (len(calls) > 0) == (step == "two_pass")
    assert (tmp_path / "model.pt").exists() and meta["selected_epoch"] >= 1
    hist = meta["history"]
    assert all(math.isfinite(r["loss"]) for r in hist) and hist[-1]["loss"] < hist[0]["loss"] + 0.5
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_single_pass_is_unchanged_for_other_methods(digits, tmp_path, monkeypatch):
    """A CE run's weights are bit-identical to the loop without the hook: the same run with the
    two-pass helper made to fail proves it is never entered, and two runs agree exactly."""
    import lmdlt.stage1.trainer as trainer

    _digits(digits, tmp_path)
    _, a = _train(tmp_path, "a.pt", "ce", {}, epochs=1)
    monkeypatch.setattr(trainer, "_sharpness_pass", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    _, b = _train(tmp_path, "b.pt", "ce", {}, epochs=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
