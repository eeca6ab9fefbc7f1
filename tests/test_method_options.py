"""No method option is silently ignored: for every option of every registered method (an enum,
a boolean, a nullable, string or list param), the method run with another value does something
else than with its default, on a tiny deterministic protocol:

* stage 1: the method on a tiny network, two optimiser steps (epochs 0 and 2 of 4) on a batch
  through its own training transform (and its paired batch): its sampler specs, learning-rate
  factors, selectable epochs and sharpness step, every loss term, every gradient, the weights
  after its ``after_step`` and the BatchNorm statistics after ``on_epoch_end``;
* stage 2: the method fitted on tiny synthetic features (ICC: a tiny network and images): its
  logits of every split and its state.

"Something else" is any difference in those numbers; the same value twice gives the same
numbers (checked), so a difference is the option's doing. An option is found from the schema as
the mutation check finds it (scripts/mutation_check.py ``is_option``), whose ``options`` group
makes each method ignore one option at a time: this file is what turns those edits red. A new
option needs no edit here unless its other value cannot be derived (``ALTERNATIVES``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lmdlt.config import validate_variant
from lmdlt.models import build_network
from lmdlt.runtime import setup_torch
from lmdlt.stage1 import available_methods as stage1_methods, get_method as get1
from lmdlt.stage2 import available_methods as stage2_methods, get_method as get2

K = 4
COUNTS = np.array([40, 12, 6, 3])
SAMPLERS = ["instance", "class_balanced", "sqrt"]

# other values of the options whose alternative is not an enum's other member or a boolean's
# negation: (value, further params the comparison needs, both sides)
ALTERNATIVES = {
    (1, "aduc", "t_decay"): [(6.0, {})],
    (1, "aduc", "logit_tau"): [(1.0, {})],
    (1, "cb_focal", "prior"): [(None, {}), (0.3, {})],
    (1, "cb_wd_max", "max_norm_thresh"): [(0.1, {})],
    (1, "cb_wd_max", "max_norm"): [(0.05, {})],
    (1, "ce_drw", "drw_start"): [(None, {})],
    (1, "ldam", "drw_start"): [(None, {})],
    (1, "iccl", "warmup_epochs"): [(4, {}), (0, {})],
    (1, "rrl", "blur_sigma"): [([2.0, 3.0], {"blur_p": 1.0})],
    (1, "rrl", "grid_dropout_unit"): [(0.5, {"grid_dropout_p": 1.0})],
    (2, "cb_wd_max", "max_norm"): [(0.05, {})],
    (2, "icc", "lr_milestones"): [([1], {})],
    (2, "icc", "fdc_reference_dim"): [(512, {})],
    (2, "icc", "fdc_floor"): [(0.0, {})],
}
# settings the comparison of an option needs on both sides (a combination the method refuses
# otherwise, or an effect that needs the option's partner on)
TOGETHER = {
    (1, "rrl", "ce_view"): {"bn_stats": "all"},  # ce_view strong refuses bn_stats weak_pass
    (1, "rrl", "border"): {"affine_p": 1.0},
    (1, "rrl", "flip"): {"vflip": False},
    (1, "rrl", "vflip"): {"flip": False},
    (2, "icc", "e_label_loss"): {"e_label_grad": "paper"},
}
# every method's own base settings for the tiny protocol
BASE = {
    (1, "rrl"): {"consistency_start_epoch": 0},
    (2, "icc"): {"iterations": 2, "virtual_per_class": 20, "m_batch_size": 20, "e_batch_size": 16,
                 "m_lr": 0.05, "e_lr": 1e-3},
    (2, "vfc"): {"virtual_per_class": 20, "m_batch_size": 20, "m_lr": 0.05, "implicit_steps": 3},
}
TINY2 = {"epochs": 2, "batch_size": 16}
EPOCHS = (0, 2)  # of 4: before and after a half-run warm-up, alpha mid-decay


def is_option(spec: dict) -> bool:
    types = spec.get("type")
    types = set(types) if isinstance(types, list) else {types}
    return "enum" in spec or bool(types & {"boolean", "null", "string", "array"})


def alternatives(stage: int, name: str, key: str, spec: dict) -> list[tuple]:
    if (stage, name, key) in ALTERNATIVES:
        return ALTERNATIVES[(stage, name, key)]
    default = spec.get("default")
    if "enum" in spec:
        return [(v, {}) for v in spec["enum"] if v != default]
    if isinstance(default, bool):
        return [(not default, {})]
    if key == "sampler" or key.endswith("_sampler"):
        return [(s, {}) for s in SAMPLERS if s != default]
    raise AssertionError(f"stage-{stage} {name}.{key}: give the option another value in ALTERNATIVES")


CASES = []
for stage, names, get in ((1, stage1_methods(), get1), (2, stage2_methods(), get2)):
    for name in names:
        for key, spec in get(name).params.items():
            if is_option(spec):
                for value, extra in alternatives(stage, name, key, spec):
                    CASES.append((stage, name, key, value, extra))
IDS = [f"s{s}-{n}-{k}={v}" for s, n, k, v, _ in CASES]


# --- the two protocols --------------------------------------------------------------------------

def tiny_net(seed=0):
    torch.manual_seed(seed)
    return build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 1, K, [0.5], [0.25])


def images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)


def batch(transform, x):
    samples = [transform(img) for img in x]
    if isinstance(samples[0], (tuple, list)):
        return tuple(torch.stack(parts) for parts in zip(*samples))
    return torch.stack(samples)


def stage1_trace(name: str, params: dict) -> dict:
    cfg = validate_variant("stage1", {"method": name, "params": params})
    setup_torch(0, 1)
    net = tiny_net()
    m = get1(name)(cfg["params"], COUNTS)
    m.on_train_start(net, 4, 2)
    lr = m.lr_lambda(8)
    out = {"sampler": repr(m.train_sampler()), "paired": repr(m.paired_sampler()),
           "sharp": m.sharpness_step() is None, "lr": None if lr is None else [lr(s) for s in range(8)],
           "selectable": [m.selectable(e) for e in range(4)]}
    transform = m.train_transform(cfg["augment"], 8)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3] * 2)
    params_ = [q for q in list(net.parameters()) + list(m.modules().parameters()) if q.requires_grad]
    opt = torch.optim.SGD(params_, lr=0.1)
    for epoch in EPOCHS:
        torch.manual_seed(10 + epoch)
        x = batch(transform, images(len(y), seed=epoch))
        kw = {}
        if m.paired_sampler() is not None:
            kw["paired"] = (batch(transform, images(len(y), seed=20 + epoch)), torch.tensor([3, 2, 1, 0] * 4))
        net.train()
        terms = m.loss(net, x, y, epoch, **kw)
        opt.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        out[f"terms{epoch}"] = {k: float(v) for k, v in terms.items()}
        out[f"grads{epoch}"] = [None if q.grad is None else q.grad.detach().clone() for q in params_]
        opt.step()
        m.after_step(net)
    m.on_epoch_end(net, images(16, seed=5).permute(0, 2, 3, 1).numpy(), torch.device("cpu"))
    out["state"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return out


def synthetic(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(K, 6))
    w = rng.normal(size=(K, 6)).astype(np.float32)
    b = rng.normal(size=K).astype(np.float32)
    out = {"classifier": {"weight": w, "bias": b}}
    for split, counts in (("train", COUNTS), ("val", (5,) * K), ("test", (5,) * K)):
        labels = np.repeat(np.arange(K), counts)
        feats = (means[labels] + rng.normal(size=(len(labels), 6))).astype(np.float32)
        out[split] = {"features": feats, "logits": feats @ w.T + b, "labels": labels.astype(np.int64),
                      "ids": np.array([f"{split}{i}" for i in range(len(labels))])}
    return out


def stage2_trace(name: str, params: dict) -> dict:
    cls = get2(name)
    full = {**{k: v for k, v in TINY2.items() if k in cls.params}, **params}
    cfg = validate_variant("stage2", {"method": name, "params": full})
    m = cls(cfg["params"], K)
    gen = setup_torch(0, 1)
    if cls.needs_encoder:
        from lmdlt.stage2.icc import encode_images

        rng = np.random.default_rng(1)
        data = {}
        for split, counts in (("train", COUNTS), ("val", (4,) * K)):
            y = np.repeat(np.arange(K), counts)
            data[split] = ((rng.integers(0, 50, (len(y), 8, 8, 1)) + 50 * y[:, None, None, None]).astype(np.uint8),
                           y.astype(np.int64))
        m.fit_encoder(tiny_net(), data, gen, "cpu")
        feats = {s: encode_images(m.net, x, "cpu") for s, (x, _) in data.items()}
    else:
        data = synthetic()
        m.fit(data["train"], data["val"], data["classifier"], gen)
        feats = {s: data[s]["features"] for s in ("train", "val", "test")}
    state = {k: v for k, v in m.state().items() if "seconds" not in k}  # wall-clock timings
    return {"logits": {s: np.asarray(m.logits(f)) for s, f in feats.items()},
            "features": feats, "state": state}


def differs(a, b) -> bool:
    if (a is None) != (b is None) or type(a) is not type(b) and not isinstance(a, (int, float)):
        return True
    if isinstance(a, dict):
        return a.keys() != b.keys() or any(differs(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) != len(b) or any(differs(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
            return True
        return not torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) != np.shape(b) or not np.array_equal(a, b)
    return a != b


def trace(stage: int, name: str, params: dict) -> dict:
    full = {**BASE.get((stage, name), {}), **params}
    return stage1_trace(name, full) if stage == 1 else stage2_trace(name, full)


# --- the tests ----------------------------------------------------------------------------------

METHODS = sorted({(s, n) for s, n, *_ in CASES})


@pytest.mark.parametrize("stage,name", METHODS, ids=[f"s{s}-{n}" for s, n in METHODS])
def test_the_protocol_repeats_exactly(stage, name):
    assert not differs(trace(stage, name, {}), trace(stage, name, {}))


@pytest.mark.parametrize("stage,name,key,value,extra", CASES, ids=IDS)
def test_every_option_changes_what_the_method_does(stage, name, key, value, extra):
    together = {**TOGETHER.get((stage, name, key), {}), **extra}
    default = get1(name).params[key]["default"] if stage == 1 else get2(name).params[key]["default"]
    a = trace(stage, name, {**together, key: default})
    b = trace(stage, name, {**together, key: value})
    assert differs(a, b), f"stage-{stage} {name}: {key}={value!r} does what {key}={default!r} does"
