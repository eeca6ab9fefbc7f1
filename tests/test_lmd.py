"""LMD: RRL loss terms, EMA teacher, class statistics, Psi/Phi, FDC sign, E-step gradients, ICC."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import link_digits
from lmdlt.models import build_network
from lmdlt.stage1 import get_method as get_stage1
from lmdlt.stage1.rrl import (GridDropout, channel_loss, ema_update_, prob_loss, sample_loss)
from lmdlt.stage2 import get_method as get_stage2
from lmdlt.stage2.gaussian import (class_statistics, ema_decay, ema_update, fdc_loss,
                                   generalized_ce, mahalanobis_sq, psi_phi, cholesky)
from lmdlt.stage2.icc import e_step_terms

# --- RRL loss terms against hand computations ------------------------------------------------

Z_S = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
Z_T = torch.tensor([[1.0, 1.0], [0.0, 2.0]])


def test_sample_loss_paper_mode_by_hand():
    # S_b(z_s) = [[1,0],[0,4]], S_b(z_t) = [[2,2],[2,4]]; squared diffs 1+4+4+0 = 9; / B = 2
    assert float(sample_loss(Z_S, Z_T, "paper")) == pytest.approx(9 / 2)


def test_channel_loss_paper_mode_by_hand():
    # S_c(z_s) = [[1,0],[0,4]], S_c(z_t) = [[1,1],[1,5]]; squared diffs 0+1+1+1 = 3; / C = 2
    assert float(channel_loss(Z_S, Z_T, "paper")) == pytest.approx(3 / 2)


def test_sample_and_channel_loss_reference_mode_rows_normalised():
    # rows of S_b: s=[1,0],[0,1]; t=[2,2]/sqrt8,[2,4]/sqrt20
    t0 = np.array([2, 2]) / math.sqrt(8)
    t1 = np.array([2, 4]) / math.sqrt(20)
    want = (((np.array([1, 0]) - t0) ** 2).sum() + ((np.array([0, 1]) - t1) ** 2).sum()) / 2
    assert float(sample_loss(Z_S, Z_T, "reference")) == pytest.approx(want, rel=1e-6)
    c0 = np.array([1, 1]) / math.sqrt(2)
    c1 = np.array([1, 5]) / math.sqrt(26)
    want_c = (((np.array([1, 0]) - c0) ** 2).sum() + ((np.array([0, 1]) - c1) ** 2).sum()) / 2  # / B
    assert float(channel_loss(Z_S, Z_T, "reference")) == pytest.approx(want_c, rel=1e-6)


def test_consistency_terms_vanish_for_identical_features_and_are_differentiable():
    z = torch.randn(5, 3, requires_grad=True)
    for gram in ("reference", "paper"):
        assert float(sample_loss(z, z.detach(), gram)) == pytest.approx(0.0, abs=1e-10)
        assert float(channel_loss(z, z.detach(), gram)) == pytest.approx(0.0, abs=1e-10)
    loss = sample_loss(z, torch.randn(5, 3)) + channel_loss(z, torch.randn(5, 3))
    loss.backward()
    assert z.grad.abs().sum() > 0


def test_dead_channel_gives_no_nan():
    z = torch.randn(4, 3).relu()
    z[:, 1] = 0.0
    assert torch.isfinite(channel_loss(z, torch.randn(4, 3).relu()))


def test_prob_loss_is_kl_teacher_student_sum_over_batch():
    ls = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    lt = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    ps, pt = ls.softmax(1).numpy(), lt.softmax(1).numpy()
    want = float((pt * (np.log(pt) - np.log(ps))).sum()) / 2
    assert float(prob_loss(ls, lt)) == pytest.approx(want, rel=1e-6)
    assert float(prob_loss(lt, lt)) == pytest.approx(0.0, abs=1e-7)


def test_ema_update_schedule_by_hand():
    s, t = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    t.weight.data.fill_(0.0)
    s.weight.data.fill_(1.0)
    assert ema_update_(t, s, decay=0.999, step=0) == 0.0  # first step copies the student
    assert float(t.weight) == pytest.approx(1.0)
    s.weight.data.fill_(4.0)
    a = ema_update_(t, s, decay=0.999, step=1)  # a = min(1 - 1/2, 0.999) = 0.5
    assert a == 0.5 and float(t.weight) == pytest.approx(0.5 * 1 + 0.5 * 4)
    a = ema_update_(t, s, decay=0.6, step=9)  # min(0.9, 0.6) = 0.6
    assert a == pytest.approx(0.6) and float(t.weight) == pytest.approx(0.6 * 2.5 + 0.4 * 4)


def _tiny_net(k=3, channels=1):
    return build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, channels, k,
                         [0.5] * channels, [0.25] * channels)


def test_rrl_method_views_terms_warmup_and_teacher_not_in_student():
    torch.manual_seed(0)
    cls = get_stage1("rrl")
    from lmdlt.config import validate_against
    p = validate_against({"consistency_start_epoch": 2}, cls.params_schema())
    m = cls(p, np.array([5, 3, 1]))
    tf = m.train_transform({}, 8)
    img = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    strong, weak = tf(img)
    assert strong.shape == weak.shape == img.shape and strong.dtype == torch.uint8
    net = _tiny_net()
    xs = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    xw = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert set(m.loss(net, (xs, xw), y, epoch=1)) == {"ce"}  # warm-up
    terms = m.loss(net, (xs, xw), y, epoch=2)
    assert set(terms) == {"ce", "sample", "channel", "prob"}
    sum(terms.values()).backward()
    assert all(q.grad is None for q in m.teacher.parameters())  # teacher: EMA only
    with torch.no_grad():
        for q in net.parameters():
            q.add_(1.0)
    m.after_step(net)  # step 0: teacher <- student
    for qt, qs in zip(m.teacher.parameters(), net.parameters()):
        assert torch.equal(qt, qs)
    assert not any(n.startswith("teacher") for n in net.state_dict())


def test_grid_dropout_zeroes_a_grid_fraction():
    torch.manual_seed(0)
    img = torch.full((1, 16, 16), 200, dtype=torch.uint8)
    out = GridDropout(ratio=0.5, unit_min=0.25, unit_max=0.25, p=1.0)(img)
    frac = float((out == 0).float().mean())
    assert 0.15 < frac < 0.35  # (hole/unit)^2 = 1/4 of the pixels
    assert torch.equal(GridDropout(p=0.0)(img), img)


# --- class statistics, EMA, Psi/Phi, FDC -----------------------------------------------------

def test_class_statistics_by_direct_formula():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [5.0, 5.0], [7.0, 5.0]])
    y = np.array([0, 0, 0, 1, 1])
    mu, cov, counts = class_statistics(x, y, 2, cov_reg=0.1)
    assert counts.tolist() == [3, 2]
    np.testing.assert_allclose(mu.numpy(), [[2 / 3, 2 / 3], [6, 5]])
    np.testing.assert_allclose(cov[0].numpy(), np.cov(x[:3].T, ddof=1) + 0.1 * np.eye(2))
    np.testing.assert_allclose(cov[1].numpy(), np.cov(x[3:].T, ddof=1) + 0.1 * np.eye(2))


def test_class_balanced_estimate_draws_balanced_and_matches_in_expectation():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (900, 2)), rng.normal(3, 1, (100, 2))])
    y = np.array([0] * 900 + [1] * 100)
    g = torch.Generator().manual_seed(0)
    mu, cov, counts = class_statistics(x, y, 2, cov_reg=0.0, sampler="class_balanced", generator=g)
    assert counts.sum() == 1000
    assert abs(counts[0] - 500) < 60 and abs(counts[1] - 500) < 60  # E[N_hat_k] = N/K
    np.testing.assert_allclose(mu.numpy(), [x[:900].mean(0), x[900:].mean(0)], atol=0.15)


def test_class_statistics_missing_class_is_an_error():
    with pytest.raises(ValueError, match="no training features"):
        class_statistics(np.zeros((3, 2)), np.array([0, 0, 2]), 3)


def test_stats_ema_by_hand():
    a, b, c = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([6.0])
    e = ema_update(None, a, 0.999, 0)
    assert float(e) == 1.0
    e = ema_update(e, b, 0.999, 1)  # alpha 0.5
    assert float(e) == pytest.approx(2.0)
    e = ema_update(e, c, 0.999, 2)  # alpha 2/3: running mean of 1, 3, 6
    assert float(e) == pytest.approx(10 / 3)
    assert ema_decay(0.9, 1000) == 0.9


@pytest.mark.parametrize("y", [torch.tensor([0, 1]),    # class 2 absent from the batch
                               torch.tensor([2, 2])])  # one class only
def test_mahalanobis_psi_phi_by_direct_formula(y):
    mu = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    cov = torch.stack([torch.diag(torch.tensor([1.0, 4.0])), torch.eye(2) * 2,
                       torch.tensor([[2.0, 0.5], [0.5, 1.0]])]).double()
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    d_direct = torch.stack([torch.stack([(x[i] - mu[k]) @ torch.linalg.inv(cov[k]) @ (x[i] - mu[k])
                                         for k in range(3)]) for i in range(2)])
    d = mahalanobis_sq(x, mu, cholesky(cov))
    torch.testing.assert_close(d, d_direct)
    psi, phi = psi_phi(x, y, mu, cholesky(cov))
    own = [float(d_direct[i, y[i]]) for i in range(2)]
    others = [np.mean([float(d_direct[i, k]) for k in range(3) if k != y[i]]) for i in range(2)]
    assert float(psi) == pytest.approx(np.mean(own))
    assert float(phi) == pytest.approx(np.mean(others))


def test_fdc_paper_sign_pulls_feature_toward_own_class_mean():
    mu = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    chol = cholesky(torch.eye(2).expand(2, 2, 2).double().clone())
    y = torch.tensor([0])
    for sign, closer in (("paper", True), ("reference", False)):
        x = torch.tensor([[1.0, 1.0]], requires_grad=True)
        d_own_before = float(mahalanobis_sq(x.detach(), mu, chol.float())[0, 0])
        fdc_loss(x, y, mu, chol, sign).backward()
        with torch.no_grad():
            x_new = x - 0.05 * x.grad  # one gradient-descent step on the regulariser
        d_own_after = float(mahalanobis_sq(x_new, mu, chol.float())[0, 0])
        assert (d_own_after < d_own_before) == closer, sign
    x = torch.tensor([[1.0, 1.0]])
    assert float(fdc_loss(x, y, mu, chol, "paper")) == pytest.approx(-float(fdc_loss(x, y, mu, chol, "reference")))


def test_generalized_ce_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [1/4, 3/4]
    assert float(generalized_ce(logits, torch.tensor([1]), q=0.7)) == pytest.approx((1 - 0.75 ** 0.7) / 0.7)
    assert float(generalized_ce(logits, torch.tensor([1]), q=1.0)) == pytest.approx(0.25)


# --- E-step gradients: paper mode vs the reference code's no_grad mode ---------------------

def _e_params(**kw):
    from lmdlt.config import validate_against
    return validate_against(dict(kw), get_stage2("icc").params_schema())


@pytest.mark.parametrize("label_loss", ["ce", "gce"])
def test_e_step_label_loss_reaches_encoder_only_in_paper_mode(label_loss):
    torch.manual_seed(0)
    net = _tiny_net()
    layer = nn.Linear(net.feature_dim, 3)
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    mu = torch.randn(3, net.feature_dim)
    chol = torch.eye(net.feature_dim).expand(3, -1, -1).clone()
    grads = {}
    for mode in ("paper", "no_grad"):
        net.zero_grad()
        terms = e_step_terms(net, layer, x, y, mu, chol,
                             _e_params(e_label_grad=mode, e_label_loss=label_loss, lambda_e=0.0))
        assert set(terms) == {"label"}
        if terms["label"].requires_grad:
            terms["label"].backward()
        grads[mode] = sum(float(q.grad.abs().sum()) for q in net.encoder.parameters() if q.grad is not None)
    assert grads["paper"] > 0
    assert grads["no_grad"] == 0.0
    # with FDC switched on the encoder is trained in both modes
    net.zero_grad()
    terms = e_step_terms(net, layer, x, y, mu, chol, _e_params(e_label_grad="no_grad", lambda_e=1e-2))
    sum(terms.values()).backward()
    assert sum(float(q.grad.abs().sum()) for q in net.encoder.parameters() if q.grad is not None) > 0


# --- ICC end to end on tiny random data -----------------------------------------------------

def test_icc_runs_and_reinitialises_or_keeps_classifier(monkeypatch):
    import lmdlt.stage2.icc as icc_module

    created = []  # one classifier optimiser per classifier the M-steps create
    real = icc_module.classifier_optimizer
    monkeypatch.setattr(icc_module, "classifier_optimizer",
                        lambda layer, p: created.append(layer) or real(layer, p))
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    k = 3
    y = np.repeat(np.arange(k), [12, 6, 3])
    x = (rng.integers(0, 60, (len(y), 8, 8, 1)) + (y[:, None, None, None] * 60)).astype(np.uint8)
    images = {"train": (x, y), "val": (x, y)}
    for init in ("per_iteration", "once"):
        cls = get_stage2("icc")
        assert cls.needs_encoder
        m = cls(_e_params(iterations=2, virtual_per_class=20, m_lr=0.1, m_batch_size=16, e_lr=0.01,
                          e_batch_size=8, classifier_init=init, select="last"), k)
        g = torch.Generator().manual_seed(0)
        created.clear()
        m.fit_encoder(_tiny_net(k), images, g, torch.device("cpu"))
        # per_iteration: a fresh classifier in each of the 2 M-steps (a named option);
        # once: created in the first and trained on in the second (Algorithm 1, reference code)
        assert len(created) == (2 if init == "per_iteration" else 1)
        assert len({id(layer) for layer in created}) == len(created)
        assert len(m.history) == 2 and all(r["seconds"] > 0 for r in m.history)
        assert m.kept["iteration"] == 2
        st = m.state()
        assert st["weight"].shape == (k, m.net.feature_dim) and st["history/seconds"].shape == (2,)
        assert m.logits(np.zeros((4, m.net.feature_dim), np.float32)).shape == (4, k)
        with pytest.raises(RuntimeError, match="train-stage2-encoder"):
            m.fit({}, {}, None, g)


# --- the encoder path: lmdlt train-stage2-encoder writes the runner's predictions layout ------



@pytest.fixture(scope="module")
def digits_chain(digits, tmp_path_factory):
    from lmdlt.config import validate_variant
    from lmdlt.features import extract_features
    from lmdlt.stage1.trainer import train_stage1

    d = link_digits(digits, tmp_path_factory.mktemp("lmd"))
    cfg = validate_variant("stage1", {"method": "rrl", "epochs": 2, "batch_size": 32, "lr": 0.05,
                                      "params": {"consistency_start_epoch": 1, "flip": False}})
    train_stage1(d / "split.parquet", d / "images.h5", cfg, 0, d / "model.pt", threads=1, device="cpu")
    extract_features(d / "model.pt", d / "split.parquet", d / "images.h5", d / "features.h5",
                     threads=1, device="cpu")
    return d


def test_encoder_runner_writes_the_same_layout_as_the_features_runner(digits_chain):
    import h5py

    from lmdlt.config import validate_variant
    from lmdlt.io import h5_read_provenance
    from lmdlt.metrics import evaluate_file
    from lmdlt.stage2.runner import run_stage2, run_stage2_encoder

    d = digits_chain
    small = {"virtual_per_class": 50, "m_lr": 0.05, "m_batch_size": 64}
    icc = validate_variant("stage2", {"method": "icc", "params": {**small, "iterations": 2, "e_lr": 1e-3,
                                                                 "e_batch_size": 64}})
    vfc = validate_variant("stage2", {"method": "vfc", "params": dict(small)})
    summary = run_stage2_encoder(d / "model.pt", d / "split.parquet", d / "images.h5", icc, 0,
                                 d / "icc.h5", threads=1, device="cpu")
    assert summary["iterations"] == 2 and summary["seconds_per_iteration"] > 0
    run_stage2(d / "features.h5", vfc, 0, d / "vfc.h5", threads=1)
    with h5py.File(d / "icc.h5") as a, h5py.File(d / "vfc.h5") as b, h5py.File(d / "features.h5") as s1:
        for split in ("train", "val", "test"):
            # ICC also keeps its fine-tuned encoder's features (Figs. 4-5 draw them)
            assert set(a[split]) == set(b[split]) | {"features"} and set(b[split]) == {"logits", "labels", "ids"}
            assert a[split]["logits"].shape == b[split]["logits"].shape
            feats = a[split]["features"][:]
            assert feats.shape == s1[split]["features"].shape
            assert not np.allclose(feats, s1[split]["features"][:])  # the E-steps changed the encoder
            np.testing.assert_allclose(feats @ a["state/weight"][:].T + a["state/bias"][:],
                                       a[split]["logits"][:], rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(a[split]["labels"][:], b[split]["labels"][:])
            assert list(a[split]["ids"].asstr()[:]) == list(b[split]["ids"].asstr()[:])
        assert a.attrs["split_hash"] == b.attrs["split_hash"]
        assert a.attrs["checkpoint_sha256"] == b.attrs["checkpoint_sha256"]
        assert a["state/history/seconds"].shape == (2,)
        prov = h5_read_provenance(a)
        assert prov["config"]["method"] == "icc" and "checkpoint" in prov["parents"]
    metrics = evaluate_file(d / "icc.h5", {"rule": "rank", "sizes": [3, 4, 3]}, d / "icc.json")
    assert 0.0 <= metrics["metrics"]["bacc"] <= 1.0
    with pytest.raises(ValueError, match="train-stage2-encoder"):
        run_stage2(d / "features.h5", icc, 0, d / "bad.h5", threads=1)
    with pytest.raises(ValueError, match="cached features"):
        run_stage2_encoder(d / "model.pt", d / "split.parquet", d / "images.h5", vfc, 0, d / "bad.h5")
    assert not (d / "bad.h5").exists()


def test_snakemake_routes_encoder_methods_to_their_own_rule(tmp_path):
    from conftest import REPO, dry_run_jobs, write_config
    import yaml

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["seeds"] = [0]
    cfg["stage1"] = {"ce": cfg["stage1"]["ce"], "rrl": cfg["stage1"]["rrl"]}
    cfg["stage2"] = {k: cfg["stage2"][k] for k in ("crt", "vfc", "icc", "icc_nofdc")}
    cfg["stage2"]["crt"]["stage1"] = ["ce", "rrl"]
    cfg["report"] = {"title": "routing"}  # no paper tables: they name runs this subset lacks
    write_config(tmp_path, cfg)
    jobs = dry_run_jobs(tmp_path)
    # icc on ce and rrl + icc_nofdc on rrl: 3 encoder jobs; crt on both + vfc on rrl: 3 feature jobs
    assert jobs["train_stage2_encoder"] == 3
    assert jobs["train_stage2"] == 3
    assert "evaluate_stage2" not in jobs  # each producer scores its own predictions
