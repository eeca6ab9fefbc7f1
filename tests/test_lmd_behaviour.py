"""LMD behaviour pinned by tests that fail under a one-line edit of rrl.py / icc.py / vfc.py.

Each test names the edit it kills: views swapped, teacher replaced by the
student, KL reversed, a weight without effect, BatchNorm statistics from the strong view, a
warm-up epoch kept, the E-step never stepping or using the stage-1 classifier, its sampler
forced, FDC against zero means, milestones / select / features: real / eval_features ignored.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import link_digits
from lmdlt.config import validate_against
from lmdlt.models import build_network
from lmdlt.stage1 import get_method as get_stage1
from lmdlt.stage1.rrl import channel_loss, prob_loss, recalibrate_bn, sample_loss
from lmdlt.stage2 import get_method as get_stage2
from lmdlt.stage2.gaussian import cholesky, fdc_loss
from lmdlt.stage2.icc import e_step_loader
from lmdlt.stage2.vfc import MStep


def _net(k=3, channels=1, seed=0):
    torch.manual_seed(seed)
    return build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, channels, k,
                         [0.5] * channels, [0.25] * channels)


def _rrl(**kw):
    cls = get_stage1("rrl")
    return cls(validate_against(dict(kw), cls.params_schema()), np.array([5, 3, 1]))


def _icc_params(**kw):
    return validate_against(dict(kw), get_stage2("icc").params_schema())


def _bn_buffers(net):
    return {n: b.clone() for n, b in net.named_buffers() if "running" in n}


XS = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)          # the strong view: all black
XW = torch.full((6, 1, 8, 8), 255, dtype=torch.uint8)    # the weak view: all white
Y = torch.tensor([0, 1, 2, 0, 1, 2])


def _rand_views(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=g),
            torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=g))


# --- defaults: the paper / the reference code ------------------------------------------------

@pytest.mark.parametrize("key,value,source", [
    ("lambda_1", 10.0, "paper Eq. 5"),
    ("prob_weight", 0.5, "paper Eq. 5"),
    ("ce_weight", 1.0, "reference classification_loss_weight"),
    ("ce_view", "weak", "paper: L_CE on f.g(x_w)"),
    ("consistency_start_epoch", 21, "reference utils/train.py: epoch > 20"),
    ("ema_decay", 0.999, "reference config ema_decay"),
    ("teacher_bn", "batch", "reference: teacher never in eval mode"),
    ("bn_stats", "weak_pass", "ours: one distribution, as the reference's single pass"),
    ("flip", True, "reference HorizontalFlip p 0.5"),
    ("vflip", True, "reference VerticalFlip p 0.5"),
    ("affine_p", 0.5, "reference ShiftScaleRotate p 0.5"),
    ("rotation_degrees", 45.0, "reference rotate_limit 45"),
    ("border", "reflect", "albumentations BORDER_REFLECT_101"),
    ("grid_dropout_p", 0.2, "reference GridDropout p 0.2"),
])
def test_rrl_defaults(key, value, source):
    assert _rrl().p[key] == value, source


@pytest.mark.parametrize("key,value,source", [
    ("classifier_init", "once", "Algorithm 1; reference creates classifier_model once"),
    ("lr_milestones", [], "reference never steps its MultiStepLR: constant rates"),
    ("virtual_stats", "ema", "paper Sec. 3.2: virtual features from the EMA statistics"),
    ("eval_features", "post_e_step", "Algorithm 1 outputs f^J . g^J"),
    ("e_sampler", "instance", "paper Table 5"),
    ("m_sampler", "class_balanced", "paper Eq. 7"),
    ("lambda_e", 1e-4, "paper"),
    ("e_lr", 1e-6, "paper"),
    ("m_lr", 1e-5, "paper"),
    ("iterations", 200, "reference stage2_epochs"),
    ("virtual_per_class", 50000, "paper R"),
    ("e_batch_size", 352, "reference stage2_batch_size"),
    ("cov_reg", 1e-2, "reference virtual_representations"),
    ("fdc_reference_dim", None, "paper form"),
    ("fdc_floor", None, "paper form"),
])
def test_icc_defaults(key, value, source):
    assert _icc_params()[key] == value, source


def test_vfc_m_step_rate_is_constant_by_default_like_icc():
    p = validate_against({}, get_stage2("vfc").params_schema())
    assert p["m_schedule"] == "constant"


# --- RRL: views, teacher, weights, BatchNorm --------------------------------------------------

@pytest.mark.parametrize("ce_view,bn_stats", [("weak", "weak_pass"), ("strong", "all")])
def test_student_sees_strong_teacher_sees_weak(ce_view, bn_stats):
    """Kills: views swapped; the teacher fed the strong view; CE on the wrong view."""
    m = _rrl(consistency_start_epoch=0, ce_view=ce_view, bn_stats=bn_stats)
    net = _net()
    teacher = m._teacher(net)
    seen = {"student": [], "teacher": []}
    net.normalize.register_forward_hook(lambda mod, i, o: seen["student"].append(float(i[0].float().mean())))
    teacher.normalize.register_forward_hook(lambda mod, i, o: seen["teacher"].append(float(i[0].float().mean())))
    m.loss(net, (XS, XW), Y, epoch=0)
    assert seen["teacher"] == [255.0]
    assert seen["student"] == ([0.0, 255.0] if ce_view == "weak" else [0.0])


def test_teacher_is_a_separate_module_without_gradients():
    """Kills: the teacher replaced by the student (with gradients) or run outside no_grad."""
    m = _rrl(consistency_start_epoch=0)
    net = _net()
    outs = []
    m._teacher(net).encoder.register_forward_hook(lambda mod, i, o: outs.append(o))
    xs, xw = _rand_views()
    terms = m.loss(net, (xs, xw), Y, epoch=0)
    assert m.teacher is not net and len(outs) == 1 and not outs[0].requires_grad
    sum(terms.values()).backward()
    assert all(q.grad is None for q in m.teacher.parameters())


def test_kl_direction_teacher_to_student_on_an_asymmetric_pair():
    """Kills: KL(student || teacher). The pair is asymmetric: the two directions differ."""
    ls = torch.tensor([[0.0, 0.0, 3.0]])
    lt = torch.tensor([[3.0, 2.0, 0.0]])
    ps, pt = ls.softmax(1).numpy()[0], lt.softmax(1).numpy()[0]
    kl_ts = float((pt * np.log(pt / ps)).sum())
    kl_st = float((ps * np.log(ps / pt)).sum())
    assert abs(kl_ts - kl_st) > 0.3
    assert float(prob_loss(ls, lt)) == pytest.approx(kl_ts, rel=1e-6)


@pytest.mark.parametrize("ce_view,bn_stats", [("weak", "weak_pass"), ("strong", "all")])
def test_each_weight_scales_its_own_term(ce_view, bn_stats):
    """Kills: lambda_1 missing on any term, prob_weight or ce_weight without effect, ce_view
    ignored. Terms are recomputed from the pure functions on the same features."""
    lam, pw, cw = 2.0, 0.25, 0.5
    m = _rrl(consistency_start_epoch=0, lambda_1=lam, prob_weight=pw, ce_weight=cw,
             ce_view=ce_view, bn_stats=bn_stats, teacher_bn="running")
    net = _net()
    xs, xw = _rand_views()
    terms = m.loss(net, (xs, xw), Y, epoch=0)
    with torch.no_grad():
        z_s = net.features(xs)
        z_t = m.teacher.features(xw)  # eval mode (teacher_bn running), as in the loss
        logits_s, logits_t = net.classifier(z_s), m.teacher.classifier(z_t)
        logits_ce = logits_s if ce_view == "strong" else net(xw)
    terms = {n: float(v.detach()) for n, v in terms.items()}
    assert terms["ce"] == pytest.approx(cw * float(F.cross_entropy(logits_ce, Y)), rel=1e-5)
    assert terms["sample"] == pytest.approx(lam * float(sample_loss(z_s, z_t)), rel=1e-5)
    assert terms["channel"] == pytest.approx(lam * float(channel_loss(z_s, z_t)), rel=1e-5)
    assert terms["prob"] == pytest.approx(lam * pw * float(prob_loss(logits_s, logits_t)), rel=1e-5)
    assert terms["sample"] > 0 and terms["prob"] > 0


def test_teacher_bn_mode_and_buffer_copy():
    """Kills: teacher_bn without effect; the running mode's buffer copy dropped."""
    xs, xw = _rand_views()
    for mode in ("batch", "running"):
        m = _rrl(consistency_start_epoch=0, teacher_bn=mode)
        net = _net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(3):
            loss = sum(m.loss(net, (xs, xw), Y, epoch=0).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            m.after_step(net)
        assert m.teacher.training is (mode == "batch")
        s, t = _bn_buffers(net), _bn_buffers(m.teacher)
        same = all(torch.equal(s[n], t[n]) for n in s)
        assert same is (mode == "running"), mode


def test_strong_pass_leaves_running_statistics_to_the_weak_view():
    """Kills: bn_stats weak_pass without effect (the strong view moving the statistics)."""
    xs, xw = _rand_views()
    xs = (xs // 4).to(torch.uint8)  # a strong view of another distribution (darker)
    for mode in ("weak_pass", "all"):
        m = _rrl(consistency_start_epoch=0, bn_stats=mode)
        net = _net()
        ref = copy.deepcopy(net).train()
        m.loss(net, (xs, xw), Y, epoch=0)
        with torch.no_grad():
            ref(xw)  # only the weak pass
        a, b = _bn_buffers(net), _bn_buffers(ref)
        equal = all(torch.allclose(a[n], b[n]) for n in a)
        assert equal is (mode == "weak_pass"), mode
        assert all(mod.momentum == 0.1 for mod in net.modules() if isinstance(mod, nn.BatchNorm2d))


def test_recalibrated_statistics_are_those_of_the_clean_images():
    net = _net()
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1)).astype(np.uint8)
    bn = next(mod for mod in net.modules() if isinstance(mod, nn.BatchNorm2d))
    inputs = []
    h = bn.register_forward_hook(lambda mod, i, o: inputs.append(i[0].detach()))
    recalibrate_bn(net, x, torch.device("cpu"), batch_size=40)  # one batch: exact moments
    h.remove()
    acts = torch.cat(inputs)
    assert torch.allclose(bn.running_mean, acts.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, acts.var((0, 2, 3)), rtol=1e-4)
    assert net.training  # restored


def test_rrl_recalibrate_runs_at_epoch_end_only_in_that_mode(monkeypatch):
    import lmdlt.stage1.rrl as rrl_module
    calls = []
    monkeypatch.setattr(rrl_module, "recalibrate_bn", lambda *a, **k: calls.append(a))
    x = np.zeros((4, 8, 8, 1), np.uint8)
    _rrl(bn_stats="weak_pass").on_epoch_end(_net(), x, "cpu")
    assert calls == []
    _rrl(bn_stats="recalibrate").on_epoch_end(_net(), x, "cpu")
    assert len(calls) == 1


def test_weak_pass_with_strong_ce_view_is_refused():
    with pytest.raises(ValueError, match="weak_pass needs ce_view weak"):
        _rrl(ce_view="strong")


def test_strong_view_is_not_the_weak_view():
    """Kills: the strong view equal to the weak view (augmentations dropped)."""
    torch.manual_seed(0)
    m = _rrl(flip=False, vflip=False, blur_p=1.0, affine_p=1.0, rgb_shift_p=1.0, jitter_p=1.0,
             grid_dropout_p=1.0)
    tf = m.train_transform({}, 16)
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    strong, weak = tf(img)
    assert torch.equal(weak, img)  # no flip: the weak view is the image
    assert (strong.int() - img.int()).abs().float().mean() > 5
    # with flips on, the weak view is one of the four flips of the image
    weak = _rrl().train_transform({}, 16)(img)[1]
    flips = [img, img.flip(-1), img.flip(-2), img.flip(-1).flip(-2)]
    assert any(torch.equal(weak, f) for f in flips)


def test_reflect_border_leaves_no_black_corners():
    from lmdlt.stage1.rrl import ShiftScaleRotate
    torch.manual_seed(0)
    img = torch.full((1, 16, 16), 200, dtype=torch.uint8)
    assert int(ShiftScaleRotate(45, 0.0, 0.0, "reflect")(img).min()) >= 190
    assert int(ShiftScaleRotate(45, 0.0, 0.0, "constant")(torch.full((1, 16, 16), 200, dtype=torch.uint8)).min()) < 50


def test_best_val_never_keeps_a_warm_up_epoch(digits, tmp_path, monkeypatch):
    """Kills: best_val over every epoch. Validation BACC is forced to fall epoch by epoch, so an
    unrestricted best_val would keep epoch 1 (a plain CE model)."""
    import sklearn.metrics

    from lmdlt.config import validate_variant
    from lmdlt.stage1.trainer import train_stage1

    link_digits(digits, tmp_path)
    scores = iter([0.9, 0.8, 0.5, 0.4])
    monkeypatch.setattr(sklearn.metrics, "balanced_accuracy_score", lambda *a, **k: next(scores))
    cfg = validate_variant("stage1", {"method": "rrl", "epochs": 4, "batch_size": 64, "lr": 0.05,
                                      "params": {"consistency_start_epoch": 2, "flip": False,
                                                 "vflip": False}})
    meta = train_stage1(tmp_path / "split.parquet", tmp_path / "images.h5", cfg, 0,
                        tmp_path / "model.pt", threads=1, device="cpu")
    assert meta["selected_epoch"] == 3  # best of epochs 3-4 (0-based 2-3), not epoch 1
    cfg["params"]["consistency_start_epoch"] = 4
    with pytest.raises(ValueError, match="no epoch would train the consistency"):
        train_stage1(tmp_path / "split.parquet", tmp_path / "images.h5", cfg, 0,
                     tmp_path / "model2.pt", threads=1, device="cpu")


# --- ICC ---------------------------------------------------------------------------------------

K = 3


def _toy_images(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), [12, 6, 3])
    x = (rng.integers(0, 60, (len(y), 8, 8, 1)) + (y[:, None, None, None] * 60)).astype(np.uint8)
    return {"train": (x, y), "val": (x, y)}


def _fit_icc(net=None, **kw):
    base = dict(iterations=2, virtual_per_class=20, m_lr=0.1, m_batch_size=16, e_lr=0.05,
                e_batch_size=8)
    m = get_stage2("icc")(_icc_params(**{**base, **kw}), K)
    net = net if net is not None else _net(K)
    m.fit_encoder(net, _toy_images(), torch.Generator().manual_seed(0), torch.device("cpu"))
    return m


def _conv_weights(net):
    return [q.detach().clone() for n, q in net.encoder.named_parameters() if q.dim() == 4]


@pytest.mark.parametrize("e_label_grad", ["paper", "no_grad"])
def test_e_step_moves_the_encoder_weights(e_label_grad):
    """Kills: the E-step never stepping its optimiser, or stepping at rate 0. Weights, not
    features, are compared: BatchNorm drift alone changes features."""
    before = _conv_weights(_net(K))
    m = _fit_icc(e_label_grad=e_label_grad, lambda_e=1e-2, select="last")
    after = _conv_weights(m.net)
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    m0 = _fit_icc(e_lr=0.0, lambda_e=1e-2, select="last")  # the control: rate 0 moves nothing
    assert all(torch.equal(a, b) for a, b in zip(before, _conv_weights(m0.net)))


def test_e_step_label_loss_uses_the_calibrated_classifier_not_stage1():
    """Kills: the E-step using the stage-1 classifier instead of f^j. The stage-1 classifier is
    zeroed, so its CE would be exactly log K."""
    net = _net(K)
    with torch.no_grad():
        net.classifier.weight.zero_()
        net.classifier.bias.zero_()
    m = _fit_icc(net=net, lambda_e=0.0, e_lr=0.0)
    for row in m.history:
        assert abs(row["e_label"] - math.log(K)) > 1e-3


def test_e_step_loader_draws_with_the_configured_sampler():
    """Kills: the E-step sampler forced to class-balanced (or ignored)."""
    x, y = _toy_images()["train"]
    for sampler in ("instance", "class_balanced"):
        p = _icc_params(e_sampler=sampler, e_batch_size=len(y))
        loader = e_step_loader(x, y, p, torch.Generator().manual_seed(0), torch.device("cpu"))
        ys = torch.cat([b[1] for b in loader]).numpy()
        counts = np.bincount(ys, minlength=K)
        if sampler == "instance":
            assert counts.tolist() == [12, 6, 3]  # every image once
        else:
            assert counts[2] > 3  # the tail class over-drawn


def test_e_step_fdc_is_against_the_m_step_class_means():
    """Kills: FDC computed against zero means (or the wrong statistics)."""
    x, y = _toy_images()["train"]
    net = _net(K)
    p = _icc_params(lambda_e=1.0, e_lr=0.0, e_batch_size=len(y), e_label_grad="no_grad")
    m = get_stage2("icc")(p, K)
    mstep = MStep(p, K)
    g = torch.Generator().manual_seed(3)
    mstep.mu = torch.randn(K, net.feature_dim, generator=g, dtype=torch.float64) * 5
    mstep.cov = torch.eye(net.feature_dim, dtype=torch.float64).expand(K, -1, -1) * 2.0
    mstep.chol = cholesky(mstep.cov)
    ref = copy.deepcopy(net).train()
    loader = e_step_loader(x, y, p, torch.Generator().manual_seed(0), torch.device("cpu"))
    opt = torch.optim.SGD(net.encoder.parameters(), lr=0.0)
    layer = nn.Linear(net.feature_dim, K)
    out = m._e_step(net, layer, loader, mstep, opt, 0.0, torch.device("cpu"))
    with torch.no_grad():
        want = fdc_loss(ref.features(torch.from_numpy(x).permute(0, 3, 1, 2)), torch.from_numpy(y),
                        mstep.mu.float(), mstep.chol.float())
        zero = fdc_loss(ref.features(torch.from_numpy(x).permute(0, 3, 1, 2)), torch.from_numpy(y),
                        torch.zeros_like(mstep.mu).float(), mstep.chol.float())
    assert out["e_fdc"] == pytest.approx(float(want), rel=1e-4)
    assert abs(float(want) - float(zero)) > 1.0


def test_rates_constant_by_default_and_milestones_applied():
    """Kills: milestones ignored (or a decay applied by default). The optimisers' real rates."""
    m = _fit_icc(iterations=3)
    assert [r["m_lr"] for r in m.history] == [0.1] * 3
    assert [r["e_lr"] for r in m.history] == [0.05] * 3
    m = _fit_icc(iterations=3, lr_milestones=[2], lr_gamma=0.1)
    assert [r["m_lr"] for r in m.history] == pytest.approx([0.1, 0.1, 0.01])
    assert [r["e_lr"] for r in m.history] == pytest.approx([0.05, 0.05, 0.005])


@pytest.mark.parametrize("select,kept", [("best_val", 1), ("last", 3)])
def test_select_keeps_the_best_or_the_last_iteration(select, kept, monkeypatch):
    """Kills: select ignored. Validation BACC is forced to fall, so best_val keeps iteration 1."""
    import sklearn.metrics
    scores = iter([0.9, 0.5, 0.1])
    monkeypatch.setattr(sklearn.metrics, "balanced_accuracy_score", lambda *a, **k: next(scores))
    m = _fit_icc(iterations=3, select=select)
    assert m.kept["iteration"] == kept
    probe = torch.randn(4, m.net.feature_dim)
    layer = nn.Linear(m.net.feature_dim, K)
    layer.load_state_dict(m.kept["layer"])
    assert torch.allclose(torch.as_tensor(m.logits(probe.numpy())), layer(probe).detach())


def test_classifier_created_once_by_default(monkeypatch):
    """Kills: classifier_init default per_iteration (Algorithm 1 creates f^0 once)."""
    import lmdlt.stage2.icc as icc_module
    created = []
    real = icc_module.classifier_optimizer
    monkeypatch.setattr(icc_module, "classifier_optimizer",
                        lambda layer, p: created.append(layer) or real(layer, p))
    _fit_icc(iterations=3)
    assert len(created) == 1
    created.clear()
    _fit_icc(iterations=3, classifier_init="per_iteration")
    assert len(created) == 3


def test_eval_features_pre_e_step_keeps_the_encoder_it_scored():
    """Kills: eval_features ignored. J = 1, last: pre_e_step keeps the stage-1 encoder (the one
    f^1 was scored on), post_e_step the fine-tuned one."""
    before = _conv_weights(_net(K))
    pre = _fit_icc(iterations=1, select="last", eval_features="pre_e_step", lambda_e=1e-2)
    post = _fit_icc(iterations=1, select="last", eval_features="post_e_step", lambda_e=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(before, _conv_weights(pre.net)))
    assert all(not torch.equal(a, b) for a, b in zip(before, _conv_weights(post.net)))


def test_m_step_real_features_are_real_rows_and_virtual_are_not():
    """Kills: features: real ignored (w/o VFC training on virtual features)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(K), [10, 5, 2])
    feats = rng.normal(size=(len(y), 4)).astype(np.float32)
    rows = {tuple(r) for r in feats.round(5)}
    for features in ("real", "virtual"):
        p = _icc_params(features=features, virtual_per_class=7, m_batch_size=5)
        ms = MStep(p, K)
        g = torch.Generator().manual_seed(0)
        ms.estimate(feats, y, g)
        batches = list(ms._batches(feats, y, g))
        v = torch.cat([b[0] for b in batches]).numpy()
        labels = torch.cat([b[1] for b in batches]).numpy()
        assert np.bincount(labels, minlength=K).tolist() == [7, 7, 7]
        is_real = [tuple(r) in rows for r in v.round(5)]
        assert all(is_real) if features == "real" else not any(is_real)


def test_virtual_stats_ema_or_current():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(K), 6)
    a = rng.normal(size=(len(y), 3))
    b = a + 10.0
    for mode in ("ema", "current"):
        ms = MStep(_icc_params(virtual_stats=mode, m_sampler="instance", stats_decay=0.5), K)
        g = torch.Generator().manual_seed(0)
        ms.estimate(a, y, g)
        ms.estimate(b, y, g)
        mu, _ = ms.draw_statistics()
        want = (a[y == 0].mean(0) + b[y == 0].mean(0)) / 2 if mode == "ema" else b[y == 0].mean(0)
        assert np.allclose(mu[0].numpy(), want), mode


# --- FDC scale-free form and lower bound ------------------------------------------------------

def test_fdc_reference_dim_and_floor_by_hand():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    y = torch.tensor([0, 1])
    mu = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    chol = torch.eye(2).expand(2, -1, -1).clone()
    # Psi = 0 (each on its own mean), Phi = 9 (each 3 away from the other): Psi - Phi = -9
    assert float(fdc_loss(x, y, mu, chol)) == pytest.approx(-9.0)
    assert float(fdc_loss(x, y, mu, chol, reference_dim=512)) == pytest.approx(-9.0 * 512 / 2)
    assert float(fdc_loss(x, y, mu, chol, floor=1.0)) == pytest.approx(-2.0)  # max(-9, -1 * C)
    assert float(fdc_loss(x, y, mu, chol, floor=10.0)) == pytest.approx(-9.0)


# --- ablations change one thing ----------------------------------------------------------------

def _resolved(paths):
    import yaml

    from lmdlt.config import validate_config
    cfg = {}
    for path in paths:
        with open(path) as f:
            part = yaml.safe_load(f)
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                merged = cfg[key]
                for k2, v2 in value.items():
                    merged[k2] = ({**merged[k2], **v2} if isinstance(v2, dict) and isinstance(merged.get(k2), dict)
                                  else v2)
            else:
                cfg[key] = value
    if "root" in cfg.get("dataset", {}):
        cfg["dataset"]["root"] = "/nonexistent"  # validate_config does not read the data
    return validate_config(cfg)


ABLATIONS = {"icc_nofdc": {"lambda_e"}, "icc_novfc": {"features"},
             "icc_refcode": {"e_label_grad", "fdc_sign", "e_label_loss", "virtual_stats",
                             "eval_features", "select"}}


@pytest.mark.parametrize("paths", [
    ["config.yaml"],
    ["workflow/experiments/ham10000-lt.yaml", "workflow/experiments/overlays/lmd-ham10000.yaml"],
], ids=["digits", "ham10000"])
def test_every_ablation_differs_from_lmd_only_in_what_it_ablates(paths):
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    cfg = _resolved([root / p for p in paths])
    s2 = cfg["stage2"]
    lmd = s2["icc"]["params"]
    for name, ablated in ABLATIONS.items():
        p = s2[name]["params"]
        diff = {k for k in set(p) | set(lmd) if p.get(k) != lmd.get(k)}
        assert diff == ablated, name
    # w/o ICC: one M-step with exactly ICC's M-step settings
    vfc = s2["vfc"]["params"]
    shared = set(vfc) & set(lmd)
    assert shared and all(vfc[k] == lmd[k] for k in shared)
    assert vfc["m_schedule"] == "constant"


def test_inheritance_errors_name_the_key():
    from lmdlt.config import ConfigError, resolve_inheritance
    with pytest.raises(ConfigError, match=r"stage2.a.inherit: no stage-2 variant named 'zz'"):
        resolve_inheritance({"a": {"method": "icc", "inherit": "zz"}}, get_stage2)
    with pytest.raises(ConfigError, match="inheritance cycle"):
        resolve_inheritance({"a": {"method": "icc", "inherit": "b"},
                             "b": {"method": "icc", "inherit": "a"}}, get_stage2)
