"""Each stage-1 loss on a tiny example against its paper's formula, re-computed directly with
plain loops (including a class absent from the batch and a batch of one class), plus a short
training run of every registered method through the shared trainer."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lmdlt.stage1.seesaw as seesaw_mod
from lmdlt.config import validate_variant
from lmdlt.models import build_network
from lmdlt.stage1 import available_methods, get_method
from lmdlt.stage1.aduc import aduc_alpha, aduc_loss
from lmdlt.stage1.cb_focal import cb_focal_loss
from lmdlt.stage1.cb_wd_max import max_norm_
from lmdlt.stage1.common import effective_number_weights, supcon_loss
from lmdlt.stage1.focal import focal_loss
from lmdlt.stage1.gcl import cloud_amplitudes, gcl_loss
from lmdlt.stage1.iccl import ema_update_centroids
from lmdlt.stage1.lcreg import RunningCovariance, latent_aug_loss, reconstruction_loss
from lmdlt.stage1.ldam import ldam_loss, ldam_margins
from lmdlt.stage1.seesaw import seesaw_loss
from lmdlt.stage1.trainer import train_sampler_spec


K = 4
COUNTS = np.array([100, 20, 5, 1])
# class 3 is absent from this batch; a second batch holds class 1 only
BATCHES = [torch.tensor([0, 0, 2, 2, 1]), torch.tensor([1, 1, 1])]


def logits_for(y, seed=0):
    return torch.randn(len(y), K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def softmax(v):
    e = [math.exp(a - max(v)) for a in v]
    return [a / sum(e) for a in e]


def sigmoid(a):
    return 1 / (1 + math.exp(-a))


def tiny_net(k=K, seed=0):
    torch.manual_seed(seed)
    return build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 1, k, [0.5], [0.25])


def tiny_images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)


def method(name, counts=COUNTS, epochs=10, net=None, **params):
    cls = get_method(name)
    p = validate_variant("stage1", {"method": name, "params": params})["params"]
    m = cls(p, counts)
    m.on_train_start(net if net is not None else tiny_net(len(counts)), epochs, 5)
    return m


@pytest.mark.parametrize("y", BATCHES)
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_loss(y, gamma):
    z = logits_for(y)
    want = np.mean([-(1 - softmax(z[i].tolist())[y[i]]) ** gamma * math.log(softmax(z[i].tolist())[y[i]])
                    for i in range(len(y))])
    assert float(focal_loss(z, y, gamma)) == pytest.approx(want, rel=1e-9)
    if gamma == 0:
        assert float(focal_loss(z, y, 0)) == pytest.approx(float(F.cross_entropy(z, y)))


def test_effective_number_weights():
    beta = 0.99
    w = effective_number_weights(COUNTS, beta)
    raw = [(1 - beta) / (1 - beta ** n) for n in COUNTS]
    np.testing.assert_allclose(w.numpy(), [r / sum(raw) * K for r in raw], rtol=1e-6)
    np.testing.assert_allclose(effective_number_weights(COUNTS, 0.0).numpy(), np.ones(K))
    w0 = effective_number_weights([5, 0, 5], 0.9)  # a class without images gets no weight
    assert w0[1] == 0 and float(w0.sum()) == pytest.approx(2.0)


@pytest.mark.parametrize("y", BATCHES)
def test_class_balanced_focal_loss_sigmoid_form(y):
    beta, gamma = 0.999, 1.5
    z = logits_for(y)
    w = effective_number_weights(COUNTS, beta).double()
    want = 0.0
    for i in range(len(y)):
        for j in range(K):
            zt = z[i, j].item() if j == y[i] else -z[i, j].item()
            pt = sigmoid(zt)
            want += -w[y[i]].item() * (1 - pt) ** gamma * math.log(pt)
    want /= len(y)
    assert float(cb_focal_loss(z, y, w, gamma)) == pytest.approx(want, rel=1e-9)


def test_cb_focal_starts_with_the_prior_bias():
    net = tiny_net()
    method("cb_focal", net=net, prior=0.1)
    np.testing.assert_allclose(net.classifier.bias.detach().numpy(), -math.log(9), rtol=1e-6)


@pytest.mark.parametrize("y", BATCHES)
@pytest.mark.parametrize("weighted", [False, True])
def test_ldam_loss(y, weighted):
    s = 30.0
    m = ldam_margins(COUNTS, 0.5)
    raw = [1 / n ** 0.25 for n in COUNTS]
    np.testing.assert_allclose(m.numpy(), [r * 0.5 / max(raw) for r in raw], rtol=1e-6)
    cos = torch.tanh(logits_for(y))
    w = effective_number_weights(COUNTS, 0.9999).double() if weighted else None
    num = den = 0.0
    for i in range(len(y)):
        row = [s * (cos[i, j].item() - (m[j].item() if j == y[i] else 0.0)) for j in range(K)]
        wi = w[y[i]].item() if weighted else 1.0
        num += -wi * math.log(softmax(row)[y[i]])
        den += wi
    assert float(ldam_loss(cos, y, m, s, w)) == pytest.approx(num / den, rel=1e-6)


def test_ldam_drw_starts_at_the_deferred_epoch_and_keeps_a_cosine_classifier():
    net = tiny_net()
    ldam = method("ldam", net=net, epochs=10, drw_start=0.8)
    assert ldam.drw_epoch() == 8
    w = net.classifier.weight.detach()
    np.testing.assert_allclose(w.norm(dim=1).numpy(), 1.0, rtol=1e-6)
    assert float(net.classifier.bias.detach().abs().max()) == 0
    x, y = tiny_images(6), torch.tensor([0, 0, 0, 1, 2, 3])
    before = ldam.loss(net, x, y, 7)["ldam"].item()
    after = ldam.loss(net, x, y, 8)["ldam"].item()
    assert before != pytest.approx(after)
    # the network's plain logits rank classes as the cosine classifier does
    with torch.no_grad():
        feats = net.features(x)
        cos = F.normalize(feats, dim=1) @ F.normalize(net.classifier.weight, dim=1).t()
        assert torch.equal(net(x).argmax(1), cos.argmax(1))
    assert method("ldam", drw_start=None).drw_epoch() is None


@pytest.mark.parametrize("y", BATCHES)
def test_gcl_loss(y):
    s, m, mul = 30.0, 0.1, 0.5
    cos = torch.tanh(logits_for(y))
    eps = torch.randn(cos.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) / 3
    a = cloud_amplitudes(COUNTS)
    logn = [math.log(n) for n in COUNTS]
    a_raw = [max(logn) - v for v in logn]
    np.testing.assert_allclose(a.numpy(), [v / max(a_raw) for v in a_raw], rtol=1e-6)
    want = 0.0
    for i in range(len(y)):
        row = [s * (cos[i, j].item() - mul * abs(eps[i, j].item()) * a[j].item() - (m if j == y[i] else 0))
               for j in range(K)]
        want += -math.log(softmax(row)[y[i]])
    assert float(gcl_loss(cos, y, a, eps, s, m, mul)) == pytest.approx(want / len(y), rel=1e-6)
    assert torch.all(cloud_amplitudes([7, 7, 7]) == 0)  # balanced data: no cloud, no division by 0


@pytest.mark.parametrize("y", BATCHES)
def test_seesaw_loss(y):
    p, q = 0.8, 2.0
    z = logits_for(y)
    seen = torch.tensor([40.0, 10.0, 0.0, 3.0])  # class 2 not seen yet
    n = [max(v, 1.0) for v in seen.tolist()]
    want = 0.0
    for i in range(len(y)):
        zi, yi = z[i].tolist(), int(y[i])
        sig = softmax(zi)
        denom = math.exp(zi[yi])
        for j in range(K):
            if j == yi:
                continue
            mit = (n[j] / n[yi]) ** p if n[j] < n[yi] else 1.0
            comp = (sig[j] / sig[yi]) ** q if sig[j] > sig[yi] else 1.0
            denom += mit * comp * math.exp(zi[j])
        want += -math.log(math.exp(zi[yi]) / denom)
    assert float(seesaw_loss(z, y, seen, p, q)) == pytest.approx(want / len(y), rel=1e-9)
    assert float(seesaw_loss(z, y, seen, 0, 0)) == pytest.approx(float(F.cross_entropy(z, y)))


def test_seesaw_accumulates_class_counts_over_batches():
    net = tiny_net()
    ss = method("seesaw", net=net)
    for y in BATCHES:
        ss.loss(net, tiny_images(len(y)), y, 0)
    np.testing.assert_array_equal(ss.cum_counts.numpy(), [2, 4, 2, 0])


def supcon_direct(z, y, tau):
    n, total, anchors = len(y), 0.0, 0
    for i in range(n):
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        if not pos:
            continue
        den = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(n) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / den) for p in pos) / len(pos)
        anchors += 1
    return total / anchors


@pytest.mark.parametrize("y", [torch.tensor([0, 0, 2, 2, 1, 1, 3]), torch.tensor([1, 1, 1, 1])])
def test_supervised_contrastive_loss(y):
    z = F.normalize(logits_for(y), dim=1)
    # class 3 has a single sample: an anchor without positives is left out
    assert float(supcon_loss(z, y, 0.1)) == pytest.approx(supcon_direct(z, y, 0.1), rel=1e-9)


def aduc_direct(f, g, y, alpha, tau):
    n, total = len(y), 0.0
    for i in range(n):
        den = sum(math.exp(float(g[i, j]) / tau) for j in range(g.shape[1]))
        den += sum(math.exp(float(f[i] @ f[k]) / tau) for k in range(n) if k != i)
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        feat = sum(math.log(math.exp(float(f[i] @ f[p]) / tau) / den) for p in pos)
        label = math.log(math.exp(float(g[i, y[i]]) / tau) / den)
        total += -(alpha * feat + label) / (alpha * len(pos) + 1)
    return total / n


@pytest.mark.parametrize("y", [torch.tensor([0, 0, 2, 2, 1, 3]), torch.tensor([0, 0, 2, 2, 2]),
                               torch.tensor([1, 1, 1])])  # all classes; 1 and 3 absent; one class
@pytest.mark.parametrize("alpha", [1.0, 0.01])
def test_adaptive_unified_contrastive_loss(y, alpha):
    f = F.normalize(logits_for(y, seed=1), dim=1)
    g = logits_for(y, seed=2)
    assert float(aduc_loss(f, g, y, alpha, 0.1)) == pytest.approx(aduc_direct(f, g, y, alpha, 0.1), rel=1e-9)


def test_aduc_alpha_schedule_is_the_cosine_of_the_paper_from_max_to_min():
    assert aduc_alpha(0, 10, 1.0, 0.01) == pytest.approx(1.0)
    assert aduc_alpha(5, 10, 1.0, 0.01) == pytest.approx(0.505)
    assert aduc_alpha(10, 10, 1.0, 0.01) == pytest.approx(0.01)
    assert aduc_alpha(25, 10, 1.0, 0.01) == pytest.approx(0.01)  # flat after t_decay
    m = method("aduc", epochs=11)
    alphas = [m.alpha(e) for e in range(11)]
    assert alphas[0] == pytest.approx(1.0) and alphas[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(alphas, alphas[1:]))  # recomputed per epoch, not compounded


def test_iccl_centroids_are_a_per_sample_ema():
    m = 0.9
    c = torch.randn(K, 3, dtype=torch.float64)
    z = F.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1)
    y = BATCHES[0]
    want = c.clone()
    for i in range(len(y)):
        want[y[i]] = m * want[y[i]] + (1 - m) * z[i]
    ema_update_centroids(c, z, y, m)
    torch.testing.assert_close(c, want)
    assert torch.equal(c[3], want[3])  # the absent class is untouched


@pytest.mark.parametrize("y, yt", [(BATCHES[0], torch.tensor([3, 3, 1, 0, 2])),   # class 3 absent from y
                                   (torch.tensor([1] * 5), torch.tensor([2] * 5))])  # one class each
def test_iccl_warmup_then_interpolative_branch(y, yt):
    net = tiny_net()
    iccl = method("iccl", net=net, epochs=4, warmup_epochs=2, tau=0.5, dim=3)
    assert iccl.paired_sampler() == {"name": "class_aware", "gamma": 0.0}
    x = tiny_images(5)
    xt = tiny_images(5, seed=1)
    centroids = F.normalize(torch.randn(K, 3), dim=1)
    iccl.centroids = centroids.clone()

    terms = iccl.loss(net, x, y, 1, paired=(xt, yt))
    assert set(terms) == {"ce", "cc"}
    with torch.no_grad():
        g = net.features(x)
        z = iccl.head(g)
        cc = np.mean([-math.log(softmax((z[i] @ centroids.t() / 0.5).tolist())[y[i]]) for i in range(5)])
    assert terms["cc"].item() == pytest.approx(cc, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(float(F.cross_entropy(net.classifier(g), y)), rel=1e-5)

    iccl.centroids = centroids.clone()
    torch.manual_seed(7)
    terms = iccl.loss(net, x, y, 2, paired=(xt, yt))
    assert set(terms) == {"ce", "ce_it", "cc_it"}
    torch.manual_seed(7)
    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
    with torch.no_grad():
        gf = net.features(lam * x.float() + (1 - lam) * xt.float())
        logits, zc = net.classifier(gf), iccl.head(gf) @ centroids.t() / 0.5
        ce_it = cc_it = 0.0
        for i in range(5):
            pl, pc = softmax(logits[i].tolist()), softmax(zc[i].tolist())
            ce_it += -lam * math.log(pl[y[i]]) - (1 - lam) * math.log(pl[yt[i]])
            cc_it += -lam * math.log(pc[y[i]]) - (1 - lam) * math.log(pc[yt[i]])
    assert terms["ce_it"].item() == pytest.approx(ce_it / 5, rel=1e-5)
    assert terms["cc_it"].item() == pytest.approx(cc_it / 5, rel=1e-5)


@pytest.mark.parametrize("y, yb", [(torch.tensor([0, 0, 0, 1]), torch.tensor([3, 2, 1, 0])),  # 2, 3 absent from y
                                   (torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 1]))])  # one class
def test_balanced_mixup_mixes_instance_and_balanced_batches(y, yb):
    net = tiny_net()
    bm = method("bal_mixup", net=net, alpha=0.5)
    assert bm.paired_sampler() == {"name": "class_balanced"}
    x = tiny_images(4)
    xb = tiny_images(4, seed=1)
    torch.manual_seed(3)
    got = float(bm.loss(net, x, y, 0, paired=(xb, yb))["mixup_ce"])
    torch.manual_seed(3)
    lam = float(torch.distributions.Beta(0.5, 1.0).sample())
    with torch.no_grad():
        logits = net((1 - lam) * x.float() + lam * xb.float())
    want = np.mean([-(1 - lam) * math.log(softmax(logits[i].tolist())[y[i]])
                    - lam * math.log(softmax(logits[i].tolist())[yb[i]]) for i in range(4)])
    assert got == pytest.approx(want, rel=1e-5)


def test_lcreg_reconstruction_loss():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(3, 2, generator=g, dtype=torch.float64)          # M = 3 latent features, D = 2
    fmap = torch.randn(2, 2, 4, generator=g, dtype=torch.float64)    # B = 2, D = 2, HW = 4
    want = 0.0
    for b in range(2):
        s = [[sigmoid(float(e[m] @ fmap[b, :, p])) for p in range(4)] for m in range(3)]
        s_hat = [[math.exp(s[m][p]) / sum(math.exp(s[k][p]) for k in range(3)) for p in range(4)]
                 for m in range(3)]
        f_hat = [[sum(float(e[m, d]) * s_hat[m][p] for m in range(3)) for p in range(4)] for d in range(2)]
        for j in range(4):
            row = [sum(f_hat[d][j] * float(fmap[b, d, q]) for d in range(2)) for q in range(4)]
            want += -math.log(softmax(row)[j])
    assert float(reconstruction_loss(e, fmap)) == pytest.approx(want / 8, rel=1e-9)


@pytest.mark.parametrize("y", [torch.tensor([0, 0, 2, 2, 2]),    # latent category 1 absent
                               torch.tensor([2, 2, 2, 2, 2])])   # one category only
def test_lcreg_latent_augmentation_is_the_isda_bound(y):
    g = torch.Generator().manual_seed(1)
    e = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    a = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2)
    lam = 0.3
    want = 0.0
    for i in range(5):
        yi = int(y[i])
        z = [float((e[j] - e[yi]) @ x[i]) + lam / 2 * float((e[j] - e[yi]) @ cov[yi] @ (e[j] - e[yi]))
             for j in range(3)]
        want += math.log(sum(math.exp(v) for v in z))
    assert float(latent_aug_loss(e, x, y, cov, lam)) == pytest.approx(want / 5, rel=1e-9)
    assert float(latent_aug_loss(e, x, y, cov, 0.0)) == pytest.approx(float(F.cross_entropy(x @ e.t(), y)))


def test_lcreg_running_covariance_equals_the_covariance_of_everything_seen():
    g = torch.Generator().manual_seed(2)
    stats = RunningCovariance(3, 2)
    xs = [torch.randn(6, 2, generator=g), torch.randn(4, 2, generator=g)]
    ys = [torch.tensor([0, 0, 0, 1, 1, 0]), torch.tensor([0, 0, 0, 0])]  # category 1 once, 2 never
    for x, y in zip(xs, ys):
        stats.update(x, y)
    x_all, y_all = torch.cat(xs).double().numpy(), torch.cat(ys).numpy()
    for k in (0, 1):
        xk = x_all[y_all == k]
        np.testing.assert_allclose(stats.mean[k].numpy(), xk.mean(0), rtol=1e-9)
        np.testing.assert_allclose(stats.cov[k].numpy(), np.cov(xk.T, bias=True), rtol=1e-9, atol=1e-12)
    assert stats.n.tolist() == [8, 2, 0] and float(stats.cov[2].abs().sum()) == 0


def test_max_norm_projects_only_rows_above_the_threshold():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    max_norm_(w, 1.0)
    torch.testing.assert_close(w, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


def test_rs_sets_its_own_sampler_and_refuses_a_second_one():
    rs = method("rs")
    assert train_sampler_spec({"sampler": "instance", "epochs": 1}, rs) == {"name": "class_balanced"}
    assert method("rs", gamma=1.0).train_sampler() == {"name": "class_aware", "gamma": 1.0}
    with pytest.raises(ValueError, match="sets its own sampler"):
        train_sampler_spec({"sampler": "sqrt"}, rs)
    ce = method("ce")
    assert train_sampler_spec({"sampler": "class_aware", "sampler_gamma": 0.5}, ce) == \
        {"name": "class_aware", "gamma": 0.5}
    with pytest.raises(ValueError, match="applies only to sampler class_aware"):
        train_sampler_spec({"sampler": "sqrt", "sampler_gamma": 0.5}, ce)


# ----- every method trains through the shared loop (2 epochs on digits-LT) -----

VARIANTS = {name: {"method": name} for name in available_methods()}
VARIANTS["iccl"]["params"] = {"warmup_epochs": 1}            # both phases in 2 epochs
VARIANTS["rrl"]["params"] = {"consistency_start_epoch": 1}  # warm-up and RRL in 2 epochs
VARIANTS["ce_progressive"] = {"method": "ce", "sampler": "progressive"}
VARIANTS["ldam_rs"] = {"method": "ldam", "sampler": "class_balanced", "params": {"drw_start": None}}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_method_trains_and_saves_a_checkpoint(digits, tmp_path, name):
    from lmdlt.models.checkpoint import load_checkpoint
    from lmdlt.stage1.trainer import train_stage1

    cfg = validate_variant("stage1", {**VARIANTS[name], "epochs": 2, "batch_size": 32, "lr": 0.05,
                                      "model": {"arch": "small_resnet", "width": 4},
                                      "augment": {"crop_padding": 1}})
    meta = train_stage1(digits / "split.parquet", digits / "images.h5", cfg, 0, tmp_path / "m.pt",
                        threads=1, device="cpu")
    assert len(meta["history"]) == 2 and all(np.isfinite(h["loss"]) for h in meta["history"])
    net, _ = load_checkpoint(tmp_path / "m.pt")
    assert net.classifier.out_features == 10


# three classes for the tests below (they pin behaviours a one-line edit of the method changes)
PIN_COUNTS = np.array([60, 20, 5])


def test_seesaw_counts_include_the_current_batch_before_the_loss(monkeypatch):
    seen = []
    real = seesaw_mod.seesaw_loss
    monkeypatch.setattr(seesaw_mod, "seesaw_loss",
                        lambda logits, y, counts, p, q: seen.append(counts.clone()) or real(logits, y, counts, p, q))
    net = tiny_net(3)
    m = method("seesaw", counts=PIN_COUNTS, net=net)
    m.loss(net, tiny_images(4), torch.tensor([0, 0, 1, 2]), 0)
    m.loss(net, tiny_images(2), torch.tensor([2, 2]), 0)
    np.testing.assert_array_equal(seen[0].numpy(), [2, 1, 1])
    np.testing.assert_array_equal(seen[1].numpy(), [2, 1, 3])


@pytest.mark.parametrize("name", ["ldam", "gcl"])
def test_cosine_classifier_stays_normalised_after_optimiser_steps(name):
    net = tiny_net(3)
    m = method(name, counts=PIN_COUNTS, net=net)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x, y = tiny_images(6), torch.tensor([0, 0, 0, 1, 2, 2])
    for _ in range(2):
        loss = sum(m.loss(net, x, y, 0).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        # the step itself moves the rows off the unit sphere; after_step brings them back
        m.after_step(net)
        np.testing.assert_allclose(net.classifier.weight.detach().norm(dim=1).numpy(), 1.0, rtol=1e-5)
        assert float(net.classifier.bias.detach().abs().max()) == 0.0


def test_iccl_centroids_move_after_the_warm_up_and_its_sampler_uses_gamma():
    net = tiny_net(3)
    m = method("iccl", counts=PIN_COUNTS, net=net, epochs=4, warmup_epochs=1, dim=3)
    before = m.centroids.clone()
    y, yt = torch.tensor([0, 1, 1, 2]), torch.tensor([2, 2, 1, 0])
    m.loss(net, tiny_images(4), y, 2, paired=(tiny_images(4, seed=1), yt))  # after the warm-up
    moved = (m.centroids - before).norm(dim=1)
    assert bool((moved > 0).all())
    assert method("iccl", counts=PIN_COUNTS, gamma=1.0).paired_sampler() == {"name": "class_aware", "gamma": 1.0}


def test_bal_mixup_pairs_with_a_class_balanced_batch():
    assert method("bal_mixup", counts=PIN_COUNTS).paired_sampler() == {"name": "class_balanced"}


def test_gcl_focal_factor_is_detached_as_in_the_reference():
    """The reference's focal_loss (losses.py:9-13): (1 - p.detach())^gamma * CE, so the gradient
    is the factor times dCE, without the factor's own derivative."""
    cos = torch.tensor([[0.30, 0.25, 0.20], [0.10, 0.12, 0.15], [0.05, 0.12, 0.08]],
                       dtype=torch.float64, requires_grad=True)
    y, eps = torch.tensor([0, 2, 1]), torch.zeros(3, 3, dtype=torch.float64)
    amp = torch.tensor([0.0, 0.5, 1.0])
    gcl_loss(cos, y, amp, eps, 20.0, 0.1, 0.5, gamma=1.0).backward()
    got = cos.grad.clone()
    c2 = cos.detach().clone().requires_grad_(True)
    ce = F.cross_entropy(20.0 * (c2 - 0.1 * F.one_hot(y, 3).double()), y, reduction="none")
    ((1 - torch.exp(-ce)).detach() * ce).mean().backward()
    torch.testing.assert_close(got, c2.grad)


def test_iccl_warm_up_is_half_the_run_by_default():
    net = tiny_net(3)
    m = method("iccl", counts=PIN_COUNTS, net=net, epochs=10, dim=3)
    assert m.warmup() == 5
    y = torch.tensor([0, 1, 1, 2])
    assert set(m.loss(net, tiny_images(4), y, 4)) == {"ce", "cc"}  # the last warm-up epoch
    assert set(m.loss(net, tiny_images(4), y, 5, paired=(tiny_images(4, seed=1), y))) == {"ce", "ce_it", "cc_it"}
