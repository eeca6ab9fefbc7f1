"""Reference-faithful baselines: GCL's second stage, CB+WD+Max's class-balanced loss
and relative per-epoch MaxNorm, post-hoc logit adjustment, Balanced Softmax and CE-DRW, each
checked against a hand computation on fixed inputs or against what the method hands to the
shared training loop (spies on ``train_linear`` and on the loss)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

import lmdlt.stage2.cb_wd_max as cbw2
import lmdlt.stage2.gcl as gcl2
from lmdlt.config import validate_variant
from lmdlt.data.samplers import make_sampler
from lmdlt.models import build_network
from lmdlt.stage1 import get_method as get1
from lmdlt.stage1.balanced_softmax import balanced_softmax_loss
from lmdlt.stage1.cb_wd_max import max_norm_threshold
from lmdlt.stage1.gcl import cloud_amplitudes, gcl_loss
from lmdlt.stage1.ldam import DeferredReweighting
from lmdlt.stage2 import get_method as get2
from lmdlt.stage2.cb_wd_max import cb_loss

K, D = 3, 4
COUNTS = [60, 20, 5]


def softmax(v):
    e = [math.exp(a - max(v)) for a in v]
    return [a / sum(e) for a in e]


def eff_weights(counts, beta):
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    return [r / sum(raw) * len(counts) for r in raw]


def build2(name, **params):
    cfg = validate_variant("stage2", {"method": name, "params": params})
    return get2(name)(cfg["params"], K)


def method1(name, counts=COUNTS, epochs=10, net=None, steps_per_epoch=5, **params):
    p = validate_variant("stage1", {"method": name, "params": params})["params"]
    m = get1(name)(p, np.asarray(counts))
    m.on_train_start(net if net is not None else tiny_net(len(counts)), epochs, steps_per_epoch)
    return m


def tiny_net(k=K, seed=0):
    torch.manual_seed(seed)
    return build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 1, k, [0.5], [0.25])


def tiny_images(n, seed=0):
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def split(seed, counts, noise=1.0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), counts)
    x = (np.eye(K, D)[y] * 3 + noise * rng.standard_normal((len(y), D))).astype(np.float32)
    return {"features": x, "labels": y, "ids": np.array([f"{seed}-{i}" for i in range(len(y))])}


def biased_classifier():
    """Head-biased stage-1 classifier: row norms 4, 1, 0.5; a non-zero bias."""
    w = np.eye(K, D).astype(np.float32) * np.array([[4.0], [1.0], [0.5]], dtype=np.float32)
    return {"weight": w, "bias": np.array([0.3, -0.1, 0.2], np.float32)}


@pytest.fixture
def spy_train_linear(monkeypatch):
    """Wrap a module's ``train_linear``: record its arguments, then run the real loop."""
    def install(module):
        calls = []
        real = module.train_linear

        def spy(*args, **kwargs):
            calls.append(kwargs)
            if "init" in kwargs:
                kwargs["_init_weight"] = kwargs["init"].weight.detach().clone()
            return real(*args, **{k: v for k, v in kwargs.items() if not k.startswith("_")})
        monkeypatch.setattr(module, "train_linear", spy)
        return calls
    return install


# --- GCL, stage 2 -------------------------------------------------------------------------

def gcl_fixture():
    # moderate margins (s * differences of a few units): p_y spans ~0.1 ... 0.9, so the focal
    # factor (1 - p_y) matters
    cos = torch.tensor([[0.30, 0.25, 0.20], [0.10, 0.12, 0.15], [0.05, 0.12, 0.08], [0.20, 0.10, 0.22]],
                       dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 1, 2])
    eps = torch.tensor([[0.03, -0.06, 0.02], [-0.01, 0.05, -0.09], [0.04, 0.0, 0.07], [-0.02, -0.03, 0.08]],
                       dtype=torch.float64)
    return cos, y, eps


def test_gcl_stage2_loss_is_the_focal_gcl_of_the_reference_by_hand():
    cos, y, eps = gcl_fixture()
    a = cloud_amplitudes(COUNTS)
    logn = [math.log(n) for n in COUNTS]
    a_hand = [(max(logn) - v) / (max(logn) - min(logn)) for v in logn]
    np.testing.assert_allclose(a.numpy(), a_hand, rtol=1e-6)
    s, m, mul, gamma = 20.0, 0.1, 0.5, 1.0
    want, grad = 0.0, np.zeros((4, K))
    for i in range(4):
        yi = int(y[i])
        row = [s * (cos[i, j].item() - mul * abs(eps[i, j].item()) * a_hand[j] - (m if j == yi else 0))
               for j in range(K)]
        p = softmax(row)
        ce = -math.log(p[yi])
        want += (1 - p[yi]) ** gamma * ce
        # the modulating factor is detached (losses.py:12): d/dcos = (1 - p_y) * s * (p - 1_y)
        grad[i] = (1 - p[yi]) * s * (np.array(p) - np.eye(K)[yi]) / 4
    loss = gcl_loss(cos, y, a, eps, s, m, mul, gamma)
    assert float(loss) == pytest.approx(want / 4, rel=1e-6)
    loss.backward()
    np.testing.assert_allclose(cos.grad.numpy(), grad, rtol=1e-5, atol=1e-9)
    assert float(gcl_loss(cos.detach(), y, a, eps, s, m, mul, 0.0)) != pytest.approx(want / 4, rel=0.1)


def test_gcl_stage2_retrains_the_stage1_cosine_classifier_balanced(spy_train_linear, monkeypatch):
    clf = biased_classifier()
    train, val = split(0, COUNTS), split(1, [20, 20, 20])
    calls = spy_train_linear(gcl2)
    seen = []
    real_loss = gcl2.gcl_loss
    monkeypatch.setattr(gcl2, "gcl_loss", lambda *a, **k: seen.append(a) or real_loss(*a, **k))
    m = build2("gcl", epochs=2, batch_size=16, lr=0.05)
    m.fit(train, val, clf, torch.Generator().manual_seed(0))
    kw = calls[-1]
    assert kw["sampler"] == "class_balanced"
    assert isinstance(kw["init"], gcl2.CosineLinear)
    torch.testing.assert_close(kw["_init_weight"], torch.as_tensor(clf["weight"]))  # not re-initialised
    assert (kw["weight_decay"], kw["momentum"]) == (2e-4, 0.9)
    # the loss at the stage-2 values, with the cloud of the training counts and real noise
    cos, y, a, eps, s, mm, mul, gamma = seen[-1]
    assert (s, mm, mul, gamma) == (20.0, 0.1, 0.5, 1.0)
    np.testing.assert_allclose(a.numpy(), cloud_amplitudes(COUNTS).numpy())
    assert float(eps.abs().max()) > 0 and float(eps.abs().max()) <= 1
    # the weights moved; the outputs are s * cosine; the saved rows are unit-norm
    w = m.layer.weight.detach().numpy()
    assert not np.allclose(F.normalize(torch.as_tensor(w), dim=1).numpy(),
                           F.normalize(torch.as_tensor(clf["weight"]), dim=1).numpy(), atol=1e-3)
    f = val["features"]
    want = 20.0 * (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    np.testing.assert_allclose(m.logits(f), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(m.state()["weight"], axis=1), 1.0, rtol=1e-5)
    # class-balanced draws: every class about equally often (60/20/5 would be 71%/24%/6%)
    smp = make_sampler(train["labels"], kw["sampler"], torch.Generator().manual_seed(1), num_samples=3000)
    freq = np.bincount(train["labels"][list(smp)], minlength=K) / 3000
    np.testing.assert_allclose(freq, 1 / 3, atol=0.04)


def test_gcl_stage2_with_a_vanishing_lr_keeps_the_stage1_directions():
    clf = biased_classifier()
    m = build2("gcl", epochs=1, batch_size=16, lr=1e-9)
    m.fit(split(0, COUNTS), None, clf, torch.Generator().manual_seed(0))
    want = clf["weight"] / np.linalg.norm(clf["weight"], axis=1, keepdims=True)
    np.testing.assert_allclose(m.state()["weight"], want, atol=1e-5)


# --- CB+WD+Max ------------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.2, 0.3], [-0.5, 0.2, 0.9], [1.5, -0.3, 0.4]],
                      dtype=torch.float64)
Y = torch.tensor([0, 1, 2, 2])


def cb_softmax_bce_by_hand(logits, y, w):
    total = 0.0
    for i in range(len(y)):
        p = softmax(logits[i].tolist())
        for k in range(K):
            t = 1.0 if k == int(y[i]) else 0.0
            total += w[int(y[i])] * -(t * math.log(p[k]) + (1 - t) * math.log(1 - p[k]))
    return total / (len(y) * K)


def test_cb_loss_by_hand_and_the_class_weights_matter():
    w = eff_weights(COUNTS, 0.9999)
    want = cb_softmax_bce_by_hand(LOGITS, Y, w)
    wt = torch.tensor(w, dtype=torch.float64)
    assert float(cb_loss(LOGITS, Y, wt, "cb_softmax_bce")) == pytest.approx(want, rel=1e-9)
    # without the class weights it is a different number: a loss that drops them fails here
    assert cb_softmax_bce_by_hand(LOGITS, Y, [1.0] * K) != pytest.approx(want, rel=1e-2)
    ce = [-math.log(softmax(LOGITS[i].tolist())[int(Y[i])]) for i in range(4)]
    want_ce = sum(w[int(Y[i])] * ce[i] for i in range(4)) / sum(w[int(Y[i])] for i in range(4))
    assert float(cb_loss(LOGITS, Y, wt, "cb_ce")) == pytest.approx(want_ce, rel=1e-9)


def test_cb_wd_max_fit_uses_the_class_balanced_loss_reference_values_and_stage1_init(spy_train_linear):
    clf = biased_classifier()
    train = split(0, COUNTS)
    calls = spy_train_linear(cbw2)
    m = build2("cb_wd_max", epochs=2, batch_size=16)
    m.fit(train, None, clf, torch.Generator().manual_seed(0))
    kw = calls[-1]
    w = eff_weights(COUNTS, 0.9999)
    np.testing.assert_allclose(m.class_weights.numpy(), w, rtol=1e-5)
    got = float(kw["loss_fn"](LOGITS.float(), Y, None))
    assert got == pytest.approx(cb_softmax_bce_by_hand(LOGITS, Y, w), rel=1e-5)
    assert (kw["lr"], kw["weight_decay"], kw["momentum"], kw["sampler"]) == (0.01, 0.1, 0.9, "instance")
    torch.testing.assert_close(kw["_init_weight"], torch.as_tensor(clf["weight"]))  # unprojected stage-1 rows
    assert not np.allclose(m.state()["bias"], clf["bias"])  # the bias is trained too


def test_max_norm_threshold_is_relative_to_the_initial_row_norms():
    w = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 2.0]])  # norms 5, 1, 2
    assert max_norm_threshold(w, 0.1) == pytest.approx(1 + 0.1 * (5 - 1))
    assert max_norm_threshold(w, 0.0) == pytest.approx(1.0)
    assert max_norm_threshold(w, 1.0) == pytest.approx(5.0)


def test_cb_wd_max_projects_once_per_epoch_onto_the_relative_threshold(monkeypatch):
    clf = biased_classifier()  # row norms 4, 1, 0.5 -> threshold 0.5 + 0.1 * 3.5 = 0.85
    train = split(0, COUNTS)   # 85 features, batch 16: 6 steps per epoch
    n = {"calls": 0, "max_after": []}
    real = cbw2.max_norm_

    def counting(weight, threshold):
        n["calls"] += 1
        assert threshold == pytest.approx(0.85)
        real(weight, threshold)
        n["max_after"].append(float(weight.norm(dim=1).max()))
    monkeypatch.setattr(cbw2, "max_norm_", counting)
    m = build2("cb_wd_max", epochs=3, batch_size=16)
    m.fit(train, None, clf, torch.Generator().manual_seed(0))
    assert n["calls"] == 3
    assert m.summary()["max_norm_threshold"] == pytest.approx(0.85)
    norms = np.linalg.norm(m.state()["weight"], axis=1)
    assert norms.max() <= 0.85 + 1e-5
    assert n["max_after"][0] == pytest.approx(0.85, rel=1e-5)  # the head row (norm 4) was capped


def test_stage1_cb_wd_max_maxnorm_at_epoch_ends_from_the_initial_norms():
    net = tiny_net()
    with torch.no_grad():
        net.classifier.weight.copy_(torch.zeros_like(net.classifier.weight))
        net.classifier.weight[0, 0], net.classifier.weight[1, 0], net.classifier.weight[2, 0] = 4.0, 1.0, 0.5
    m = method1("cb_wd_max", net=net, steps_per_epoch=5, max_norm_thresh=0.1)
    assert m.threshold == pytest.approx(0.85)
    for _ in range(4):
        m.after_step(net)
    assert float(net.classifier.weight[0].norm()) == pytest.approx(4.0)  # mid-epoch: untouched
    m.after_step(net)
    np.testing.assert_allclose(net.classifier.weight.norm(dim=1).detach().numpy(), [0.85, 0.85, 0.5], rtol=1e-6)
    fresh = method1("cb_wd_max", net=tiny_net(), max_norm_thresh=0.1)
    fresh.load_state_dict(m.state_dict())
    assert (fresh.threshold, fresh.steps) == (m.threshold, 5)
    assert method1("cb_wd_max").threshold is None  # default: WD only, as the reference's stage 1


# --- post-hoc logit adjustment ------------------------------------------------------------

def test_logit_adjust_selects_tau_on_validation_by_hand():
    clf = biased_classifier()
    train, val, test = split(0, COUNTS), split(1, [20, 20, 20]), split(2, [30, 30, 30])
    m = build2("logit_adjust")
    m.fit(train, val, clf, torch.Generator())
    log_pi = [math.log(n / sum(COUNTS)) for n in COUNTS]
    z = val["features"].astype(np.float64) @ clf["weight"].T + clf["bias"]
    grid = [round(0.1 * i, 10) for i in range(21)]
    scores = {t: balanced_accuracy_score(val["labels"], (z - t * np.array(log_pi)).argmax(1)) for t in grid}
    best = max(scores.values())
    tied = [t for t in grid if scores[t] == best]
    want = min(tied, key=lambda t: (abs(t - 1.0), t))
    assert m.tau == pytest.approx(want) and m.summary()["val_bacc"] == pytest.approx(best)
    assert m.tau > 0  # the head-biased classifier needed the adjustment
    zt = test["features"].astype(np.float64) @ clf["weight"].T + clf["bias"]
    np.testing.assert_allclose(m.logits(test["features"]), zt - want * np.array(log_pi), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="validation"):
        build2("logit_adjust").fit(train, None, clf, torch.Generator())


# --- Balanced Softmax ---------------------------------------------------------------------

def test_balanced_softmax_loss_by_hand():
    want = np.mean([-math.log(softmax([LOGITS[i, j].item() + math.log(COUNTS[j]) for j in range(K)])[int(Y[i])])
                    for i in range(4)])
    assert float(balanced_softmax_loss(LOGITS, Y, COUNTS)) == pytest.approx(want, rel=1e-9)
    assert float(balanced_softmax_loss(LOGITS, Y, COUNTS, tau=0.0)) == pytest.approx(float(F.cross_entropy(LOGITS, Y)))
    net = tiny_net()
    x, y = tiny_images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    m = method1("balanced_softmax", net=net)
    with torch.no_grad():
        z = net(x).double()
    got = float(m.loss(net, x, y, 0)["balanced_softmax"])
    assert got == pytest.approx(float(balanced_softmax_loss(z, y, COUNTS)), rel=1e-5)


# --- CE-DRW -------------------------------------------------------------------------------

def test_ce_drw_is_plain_ce_until_the_drw_epoch_then_effective_number_weighted():
    assert issubclass(get1("ce_drw"), DeferredReweighting)  # LDAM's DRW, not a copy
    net = tiny_net()
    x, y = tiny_images(6), torch.tensor([0, 0, 0, 1, 2, 2])
    m = method1("ce_drw", net=net, epochs=10)
    assert m.drw_epoch() == 8
    with torch.no_grad():
        z = net(x).double()
    logp = torch.log_softmax(z, 1)
    nll = [-logp[i, int(y[i])].item() for i in range(6)]
    w = eff_weights(COUNTS, 0.9999)
    weighted = sum(w[int(y[i])] * nll[i] for i in range(6)) / sum(w[int(y[i])] for i in range(6))
    assert float(m.loss(net, x, y, 7)["ce"]) == pytest.approx(np.mean(nll), rel=1e-5)
    assert float(m.loss(net, x, y, 8)["ce"]) == pytest.approx(weighted, rel=1e-5)
    assert weighted != pytest.approx(np.mean(nll), rel=1e-2)
    assert method1("ce_drw", drw_start=None).drw_weight(9) is None
