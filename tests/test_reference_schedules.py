"""LDAM-DRW's (and CE-DRW's) reference learning-rate schedule and DRW-aware
checkpoint selection; AdUni's alpha trajectory and log-prior logit compensation. Every expected
value is written out by hand from the reference code or the paper's formula."""
import math

import numpy as np
import pytest
import torch

from lmdlt.config import validate_variant
from lmdlt.stage1 import get_method as get1

COUNTS = [60, 20, 5]


def method1(name, counts=COUNTS, epochs=10, steps_per_epoch=5, net=None, **params):
    from lmdlt.models import build_network

    p = validate_variant("stage1", {"method": name, "params": params})["params"]
    m = get1(name)(p, np.asarray(counts))
    if net is None:
        torch.manual_seed(0)
        net = build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 1,
                            len(counts), [0.5], [0.25])
    m.on_train_start(net, epochs, steps_per_epoch)
    return m


def ref_adjust_learning_rate(epoch0: int) -> float:
    """kaidic/LDAM-DRW@2536330 cifar_train.py:366-376, copied: the factor of 0-based epoch."""
    epoch = epoch0 + 1
    if epoch <= 5:
        return epoch / 5
    if epoch > 180:
        return 0.0001
    if epoch > 160:
        return 0.01
    return 1.0


# --- LDAM-DRW / CE-DRW schedule ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["ldam", "ce_drw"])
def test_reference_schedule_at_200_epochs_is_adjust_learning_rate(name):
    m = method1(name, epochs=200, steps_per_epoch=1)
    f = m.lr_lambda(200)
    got = [f(e) for e in range(200)]
    assert got == pytest.approx([ref_adjust_learning_rate(e) for e in range(200)])
    # by hand, the points that matter
    assert got[:6] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert (got[159], got[160], got[179], got[180], got[199]) == pytest.approx((1, 0.01, 0.01, 1e-4, 1e-4))


def test_reference_schedule_scaled_to_20_epochs_per_epoch_by_hand():
    m = method1("ldam", epochs=20, steps_per_epoch=10)
    f = m.lr_lambda(200)
    # warm-up: 5/200 of 20 epochs = 0.5 epoch = 5 steps, staircase 0.2 .. 1.0
    assert [f(s) for s in range(7)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])
    # per epoch (first step of each): 1 until epoch 15, 0.01 at 16-17 (DRW epoch floor(0.8 * 20)),
    # 1e-4 from floor(0.9 * 20) = 18
    per_epoch = [f(10 * e) for e in range(20)]
    assert per_epoch == pytest.approx([0.2] + [1.0] * 15 + [0.01, 0.01, 1e-4, 1e-4])
    assert m.drw_epoch() == 16


def test_reference_schedule_decays_at_the_drw_epoch_and_ldam_rs_keeps_the_reference_steps():
    m = method1("ldam", epochs=10, steps_per_epoch=4, drw_start=0.5)
    f = m.lr_lambda(40)
    assert [f(4 * e) for e in range(10)] == pytest.approx([0.2, 1, 1, 1, 1, 0.01, 0.01, 0.01, 0.01, 1e-4])
    rs = method1("ldam", epochs=10, steps_per_epoch=4, drw_start=None)  # LDAM-RS
    f = rs.lr_lambda(40)
    assert [f(4 * e) for e in range(10)] == pytest.approx([0.2] + [1] * 7 + [0.01, 1e-4])
    assert all(rs.selectable(e) for e in range(10))
    assert rs.drw_weight(9) is None


@pytest.mark.parametrize("name", ["ldam", "ce_drw"])
def test_trainer_schedule_is_a_named_option_and_the_default_is_the_reference(name):
    assert method1(name).p["lr_schedule"] == "reference"
    assert method1(name, lr_schedule="trainer").lr_lambda(50) is None
    assert method1(name).lr_lambda(50) is not None


@pytest.mark.parametrize("name", ["ldam", "ce_drw"])
def test_selectable_only_from_the_drw_epoch(name):
    m = method1(name, epochs=10)
    assert [m.selectable(e) for e in range(10)] == [False] * 8 + [True] * 2
    m = method1(name, epochs=10, drw_start=1.0)  # DRW never starts: nothing to protect
    assert all(m.selectable(e) for e in range(10))


@pytest.mark.parametrize("name", ["ldam", "ce_drw"])
def test_trainer_keeps_a_post_drw_epoch_and_runs_the_reference_schedule(name, digits, tmp_path,
                                                                        monkeypatch):
    """Validation BACC forced to fall epoch by epoch: an unrestricted best_val keeps epoch 1,
    a pre-DRW model; DRW starts at 0-based epoch floor(0.8 * 10) = 8, so epoch 9 (1-based)."""
    import sklearn.metrics

    from lmdlt.stage1.trainer import train_stage1

    scores = iter([1.0 - 0.05 * i for i in range(10)])
    monkeypatch.setattr(sklearn.metrics, "balanced_accuracy_score", lambda *a, **k: next(scores))
    cfg = validate_variant("stage1", {"method": name, "epochs": 10, "batch_size": 64, "lr": 0.05,
                                      "model": {"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}})
    meta = train_stage1(digits / "split.parquet", digits / "images.h5", cfg, 0,
                        tmp_path / "model.pt", threads=1, device="cpu")
    assert meta["selected_epoch"] == 9
    # the lr logged after epoch e (1-based) is the rate of the next step: epoch e's (0-based)
    lrs = [row["lr"] for row in meta["history"]]
    assert lrs[:8] == pytest.approx([0.05] * 7 + [0.05 * 0.01])
    assert lrs[8] == pytest.approx(0.05 * 1e-4)


# --- AdUni --------------------------------------------------------------------------------------

def aduc_by_hand(f, g, y, alpha, tau, c, logit_tau):
    """Eq. 3 per anchor with the classifier branch u_ij = g_ij / logit_tau + c_j, in floats."""
    n, total = len(y), 0.0
    for i in range(n):
        u = [float(g[i, j]) / logit_tau + c[j] for j in range(g.shape[1])]
        den = sum(math.exp(v) for v in u) + sum(math.exp(float(f[i] @ f[k]) / tau) for k in range(n) if k != i)
        pos = [p for p in range(n) if p != i and int(y[p]) == int(y[i])]
        feat = sum(float(f[i] @ f[p]) / tau - math.log(den) for p in pos)
        label = u[int(y[i])] - math.log(den)
        total += -(alpha * feat + label) / (alpha * len(pos) + 1)
    return total / n


def aduc_inputs(net, m, seed=0):
    g_ = torch.Generator().manual_seed(seed)
    v1 = torch.randint(0, 256, (4, 1, 8, 8), generator=g_, dtype=torch.uint8)
    v2 = torch.randint(0, 256, (4, 1, 8, 8), generator=g_, dtype=torch.uint8)
    y = torch.tensor([0, 0, 1, 2])
    with torch.no_grad():
        feats = net.features(torch.cat([v1, v2]))
        f, g = m.head(feats).double(), net.classifier(feats).double()
    return (v1, v2), y, f, g


def tiny_net3():
    from lmdlt.models import build_network

    torch.manual_seed(0)
    return build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 1, 3, [0.5], [0.25])


def test_aduc_log_prior_compensation_by_hand_is_the_default():
    net = tiny_net3()
    m = method1("aduc", net=net, epochs=11)
    net.eval()  # BatchNorm from running statistics: the same features in the loss and by hand
    m.head.eval()
    x, y, f, g = aduc_inputs(net, m)
    yy = torch.cat([y, y])
    # the reference's weight = n_k / sum n for counts 60, 20, 5 (losses.py:122-126, 183)
    c = [math.log(60 / 85 + 1e-9), math.log(20 / 85 + 1e-9), math.log(5 / 85 + 1e-9)]
    assert m.compensation.tolist() == pytest.approx(c, rel=1e-6)
    alpha = m.alpha(3)
    want = aduc_by_hand(f, g, yy, alpha, 0.1, c, 0.1)
    with torch.no_grad():
        got = float(m.loss(net, x, y, 3)["aduc"])
    assert got == pytest.approx(want, rel=1e-4)
    paper = aduc_by_hand(f, g, yy, alpha, 0.1, [0.0] * 3, 0.1)
    assert abs(want - paper) > 1e-3  # the compensation changes the loss
    off = method1("aduc", net=net, epochs=11, logit_compensation="none")
    off.head = m.head
    with torch.no_grad():
        assert float(off.loss(net, x, y, 3)["aduc"]) == pytest.approx(paper, rel=1e-4)
    ref_t = method1("aduc", net=net, epochs=11, logit_tau=1.0)  # the reference's supt = 1
    ref_t.head = m.head
    with torch.no_grad():
        assert float(ref_t.loss(net, x, y, 3)["aduc"]) == pytest.approx(
            aduc_by_hand(f, g, yy, alpha, 0.1, c, 1.0), rel=1e-4)


def test_aduc_alpha_at_mid_run_is_the_closed_form_and_reaches_the_loss(monkeypatch):
    import lmdlt.stage1.aduc as aduc

    m = method1("aduc", epochs=21)  # t_decay = the last epoch, 20
    closed = lambda t: 0.01 + (1.0 - 0.01) * (1 + math.cos(math.pi * t / 20)) / 2  # noqa: E731
    assert m.alpha(10) == pytest.approx(0.505)
    assert m.alpha(5) == pytest.approx(closed(5)) and closed(5) == pytest.approx(0.855018, rel=1e-5)
    assert m.alpha(15) == pytest.approx(closed(15))
    assert (m.alpha(0), m.alpha(20)) == pytest.approx((1.0, 0.01))
    seen = []
    monkeypatch.setattr(aduc, "aduc_loss", lambda f, g, y, alpha, *a: seen.append(alpha) or f.sum() * 0)
    net = tiny_net3()
    x = (torch.zeros(2, 1, 8, 8, dtype=torch.uint8),) * 2
    for e in (0, 5, 10, 20):
        m.loss(net, x, torch.tensor([0, 1]), e)
    assert seen == pytest.approx([1.0, closed(5), 0.505, 0.01])


def test_aduc_reference_alpha_compounds_the_cosine():
    m = method1("aduc", epochs=5, alpha_schedule="reference", t_decay=8)
    a, want = 1.0, []
    for t in range(5):  # util.py:116-120 on the previous alpha, every epoch
        a = 0.01 + (a - 0.01) * (1 + math.cos(math.pi * t / 8)) / 2
        want.append(a)
    assert [m.alpha(t) for t in range(5)] == pytest.approx(want)
    assert want[4] < method1("aduc", epochs=5, t_decay=8).alpha(4) - 0.2  # much lower than Eq. 3
