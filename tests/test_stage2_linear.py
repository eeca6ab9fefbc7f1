"""lmdlt.stage2.linear on augmented views (``features.train_views``, docs/train_views.md); the
views' extraction is tested in test_features.py.

- a linear stage-2 method with N views sees, in every epoch, exactly one view per image (a spy
  on the DataLoader), drawn afresh per epoch, never the clean feature; KD's teacher is the
  stage-1 classifier's output on the same view;
- N = 0: bit-identical weights to a plain linear training loop without views (copied here);
  NCM / tau-norm / logit adjustment give the same predictions with or without views;
- the runner refuses a file whose views disagree with its record or with the config.
"""
import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import N_VIEWS
from lmdlt.config import validate_variant
from lmdlt.data.samplers import make_sampler, set_sampler_epoch
from lmdlt.features import FeatureSet
from lmdlt.stage2 import get_method, linear as linear_mod
from lmdlt.stage2.linear import LINEAR_PARAMS, ViewedFeatures, train_linear, with_train_views
from lmdlt.stage2.runner import check_train_views, run_stage2


def _synthetic(n=48, c=6, k=3, n_views=4, seed=0):
    g = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), [n // 2, n // 3, n - n // 2 - n // 3])
    clean = g.normal(size=(n, c)).astype(np.float32)
    views = (clean[None] + g.normal(size=(n_views, n, c))).astype(np.float32)
    w, b = g.normal(size=(k, c)).astype(np.float32), g.normal(size=k).astype(np.float32)
    train = {"features": clean, "labels": labels, "logits": (clean @ w.T + b).astype(np.float32)}
    tv = {"features": views, "logits": (views @ w.T + b).astype(np.float32)}
    return train, tv, {"weight": w, "bias": b}


class _SpyLoader(DataLoader):
    epochs: list = []

    def __iter__(self):
        batches = []
        _SpyLoader.epochs.append(batches)
        for xb, yb, ib in super().__iter__():
            batches.append((xb.clone(), ib.clone()))
            yield xb, yb, ib


def _views_seen(epoch_batches, views, clean):
    """{image: set of view indices} of one epoch; every row must be one of its image's views."""
    seen: dict[int, set] = {}
    for xb, ib in epoch_batches:
        for row, i in zip(xb.numpy(), ib.tolist()):
            assert not np.array_equal(row, clean[i]), f"image {i}: the clean feature was trained on"
            hits = [v for v in range(len(views)) if np.array_equal(row, views[v, i])]
            assert len(hits) == 1, f"image {i}: a row that is none of its views"
            seen.setdefault(i, set()).add(hits[0])
    return seen


@pytest.mark.parametrize("method,params", [("crt", {"sampler": "instance"}), ("crt", {}),
                                           ("lws", {}), ("kd_rebalance", {})])
def test_a_linear_method_sees_one_view_per_image_per_epoch(monkeypatch, method, params):
    train, tv, clf = _synthetic()
    epochs = 6
    monkeypatch.setattr(linear_mod, "DataLoader", _SpyLoader)
    _SpyLoader.epochs = []
    teachers = []
    if method == "kd_rebalance":
        from lmdlt.stage2 import kd_rebalance

        real = kd_rebalance.kd_loss
        monkeypatch.setattr(kd_rebalance, "kd_loss",
                            lambda s, t, y, w, tau: (teachers.append(t.clone()), real(s, t, y, w, tau))[1])
    cls = get_method(method)
    p = validate_variant("stage2", {"method": method, "params": {"epochs": epochs, "batch_size": 16,
                                                                  **params}})["params"]
    m = cls(p, 3)
    viewed = with_train_views(train, tv)
    m.fit(viewed, train, clf, torch.Generator().manual_seed(0))
    assert len(_SpyLoader.epochs) == epochs
    per_epoch = []
    for e, batches in enumerate(_SpyLoader.epochs):
        seen = _views_seen(batches, tv["features"], train["features"])
        assert all(len(s) == 1 for s in seen.values()), f"epoch {e}: an image seen in two views"
        if p["sampler"] == "instance":
            assert sorted(seen) == list(range(len(train["labels"])))
        per_epoch.append({i: next(iter(s)) for i, s in seen.items()})
    # the draw is fresh per epoch and uses every view (not always the same one)
    drawn = [v for ep in per_epoch for v in ep.values()]
    assert set(drawn) == set(range(len(tv["features"])))
    common = set(per_epoch[0]) & set(per_epoch[1])
    assert any(per_epoch[0][i] != per_epoch[1][i] for i in common)
    if method == "kd_rebalance":  # the teacher's logits are those of the same view
        t_iter = iter(teachers)
        for e, batches in enumerate(_SpyLoader.epochs):
            for _, ib in batches:
                t = next(t_iter).numpy()
                want = tv["logits"][[per_epoch[e][i] for i in ib.tolist()], ib.numpy()]
                np.testing.assert_array_equal(t, want)
        np.testing.assert_array_equal(viewed["logits"], train["logits"])  # restored after the fit


def _plain_train_linear(features, labels, num_classes, *, epochs, batch_size, lr, momentum,
                         weight_decay, sampler, generator, init=None, sampler_options=None,
                         loss_fn=None, after_step=None):
    """``train_linear`` without views and without resume: the reference the N = 0 path must equal."""
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    layer = init if init is not None else nn.Linear(x.shape[1], num_classes)
    smp = make_sampler(labels, sampler, generator, epochs=epochs, **(sampler_options or {}))
    loader = DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=batch_size, sampler=smp)
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    steps = max(epochs * len(loader), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for epoch in range(epochs):
        set_sampler_epoch(smp, epoch)
        for xb, yb, ib in loader:
            logits = layer(xb)
            loss = F.cross_entropy(logits, yb) if loss_fn is None else loss_fn(logits, yb, ib)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(layer)
    return layer


@pytest.mark.parametrize("sampler", ["class_balanced", "instance"])
def test_no_views_is_bit_identical_to_the_plain_loop(sampler):
    train, _, _ = _synthetic()
    hp = {k: v["default"] for k, v in LINEAR_PARAMS.items()}
    outs = []
    for fn in (_plain_train_linear, train_linear):
        torch.manual_seed(3)
        outs.append(fn(train["features"], train["labels"], 3, sampler=sampler,
                       generator=torch.Generator().manual_seed(1), **hp))
    for a, b in zip(outs[0].state_dict().values(), outs[1].state_dict().values()):
        assert torch.equal(a, b)
    # a slice of viewed features carries no views: plain features again
    viewed = ViewedFeatures(train["features"], _synthetic()[1]["features"])
    assert viewed[:10].views is None and (viewed + 0).views is None


@pytest.mark.parametrize("method", ["crt", "lws", "kd_rebalance"])
def test_runner_no_views_file_equals_the_plain_loop_and_views_change_the_fit(chain, tmp_path,
                                                                             monkeypatch, method):
    cfg = validate_variant("stage2", {"method": method, "params": {"epochs": 3}})
    preds = {}
    for name in ("f0.h5", "f3.h5"):
        run_stage2(chain / name, cfg, 0, tmp_path / f"p_{name}", threads=1,
                   checkpoint_path=chain / "model.pt", manifest_path=chain / "split.parquet",
                   train_views=FeatureSet(chain / name).num_train_views)
        with h5py.File(tmp_path / f"p_{name}") as f:
            preds[name] = f["test/logits"][:]
    # the same method by hand, with the plain loop, on the N = 0 file: bit-identical
    import importlib

    from lmdlt.runtime import setup_torch

    fs = FeatureSet(chain / "f0.h5")
    m = get_method(method)(cfg["params"], len(fs.class_names))
    monkeypatch.setattr(importlib.import_module(f"lmdlt.stage2.{method}"), "train_linear",
                        lambda *a, resume=None, name=None, **kw: _plain_train_linear(*a, **kw))
    gen = setup_torch(0, 1)  # as the runner
    m.fit(fs["train"], fs["val"], fs.classifier, gen)
    np.testing.assert_array_equal(m.logits(fs["test"]["features"]), preds["f0.h5"])
    assert not np.array_equal(preds["f0.h5"], preds["f3.h5"])


@pytest.mark.parametrize("method", ["ncm", "tau_norm", "logit_adjust", "vfc"])
def test_methods_off_the_linear_loop_are_unaffected(chain, tmp_path, method):
    small = {"vfc": {"virtual_per_class": 20, "m_epochs": 1}}.get(method, {})
    cfg = validate_variant("stage2", {"method": method, "params": small})
    out = []
    for name in ("f0.h5", "f3.h5"):
        run_stage2(chain / name, cfg, 0, tmp_path / f"p_{name}", threads=1)
        with h5py.File(tmp_path / f"p_{name}") as f:
            out.append(f["test/logits"][:])
    np.testing.assert_array_equal(*out)


def test_runner_checks_views_against_record_and_config(chain, tmp_path):
    fs = FeatureSet(chain / "f3.h5")
    assert check_train_views(fs) == N_VIEWS and check_train_views(fs, N_VIEWS) == N_VIEWS
    cfg = validate_variant("stage2", {"method": "crt", "params": {"epochs": 1}})
    with pytest.raises(ValueError, match="features.train_views 4"):
        run_stage2(chain / "f3.h5", cfg, 0, tmp_path / "p.h5", train_views=4)
    with pytest.raises(ValueError, match="features.train_views 2"):
        run_stage2(chain / "f0.h5", cfg, 0, tmp_path / "p.h5", train_views=2)
    bad = tmp_path / "bad.h5"
    bad.write_bytes((chain / "f3.h5").read_bytes())
    with h5py.File(bad, "a") as f:  # views lost, record kept
        del f["train_views"]
    with pytest.raises(ValueError, match="records train_views 3"):
        run_stage2(bad, cfg, 0, tmp_path / "p.h5")
    bad.write_bytes((chain / "f3.h5").read_bytes())
    with h5py.File(bad, "a") as f:
        f.attrs["train_views"] = 1
    with pytest.raises(ValueError, match="inconsistent provenance"):
        run_stage2(bad, cfg, 0, tmp_path / "p.h5")
    bad.write_bytes((chain / "f0.h5").read_bytes())
    with h5py.File(bad, "a") as f:  # views without a record
        f["train_views/features"] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match="records train_views 0"):
        run_stage2(bad, cfg, 0, tmp_path / "p.h5")


def test_config_section_and_rule_param():
    from pathlib import Path

    from lmdlt.config import validate_config

    root = Path(__file__).resolve().parents[1]
    cfg = {"dataset": {"name": "d", "source": "digits"}, "split": {"protocol": "cui"}, "seeds": [0],
           "stage1": {"ce": {"method": "ce"}}}
    validate_config(cfg, root / "workflow/schemas/config.schema.yaml")
    assert cfg["features"] == {"train_views": 0}
    rule = (root / "workflow/rules/features.smk").read_text()
    assert 'train_views=config["features"]["train_views"]' in rule
    assert "--train-views {params.train_views}" in rule


def test_an_interrupted_views_fit_resumes_bit_identical(tmp_path):
    from lmdlt.resume import ResumeState

    train, tv, _ = _synthetic()
    hp = {**{k: v["default"] for k, v in LINEAR_PARAMS.items()}, "epochs": 5, "batch_size": 16}

    def fit(resume=None, stop_at=None):
        steps = {"n": 0}

        def after(layer):
            steps["n"] += 1
            if steps["n"] == stop_at:
                raise RuntimeError("killed")

        torch.manual_seed(0)
        return train_linear(ViewedFeatures(train["features"], tv["features"]), train["labels"], 3,
                            sampler="class_balanced", generator=torch.Generator().manual_seed(1),
                            resume=resume, after_step=after, **hp)

    whole = fit()
    state = ResumeState(tmp_path / "p.h5", {"run": "views"})
    with pytest.raises(RuntimeError, match="killed"):
        fit(state, stop_at=8)  # in epoch 3 (3 steps per epoch)
    resumed = fit(ResumeState(tmp_path / "p.h5", {"run": "views"}))
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_the_views_are_drawn_with_the_fits_generator(monkeypatch):
    train, tv, _ = _synthetic()
    monkeypatch.setattr(linear_mod, "DataLoader", _SpyLoader)
    hp = {**{k: v["default"] for k, v in LINEAR_PARAMS.items()}, "epochs": 3, "batch_size": 16}

    def drawn(gen_seed, global_seed):
        _SpyLoader.epochs = []
        torch.manual_seed(global_seed)
        train_linear(ViewedFeatures(train["features"], tv["features"]), train["labels"], 3,
                     sampler="instance", generator=torch.Generator().manual_seed(gen_seed), **hp)
        return [sorted((i, v) for i, s in _views_seen(b, tv["features"], train["features"]).items()
                       for v in s) for b in _SpyLoader.epochs]

    assert drawn(1, 0) == drawn(1, 5)  # the global random state plays no part
    assert drawn(1, 0) != drawn(2, 0)
