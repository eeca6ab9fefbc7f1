"""Four method behaviours a one-line edit could break without any other test noticing, each
pinned here by a test that such an edit turns red (the edit is named in each docstring):

* Seesaw's compensation factor is computed from *detached* logits: it rescales the other
  classes' exponents but passes no gradient of its own;
* SupCon's linear probe trains on *detached* features: the probe must not shape the encoder;
* CB+WD+Max stage 1's per-epoch MaxNorm is actually applied in a training run (the trainer
  calls it at every epoch end, and the saved classifier is inside the ball);
* LCReg's ISDA strength is ramped over the epochs, lam = lambda_0 * epoch / epochs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lmdlt.stage1.cb_wd_max as cb_wd_max
import lmdlt.stage1.lcreg as lcreg
from lmdlt.config import validate_variant
from lmdlt.models import build_network
from lmdlt.stage1 import get_method
from lmdlt.stage1.seesaw import seesaw_loss

K = 4
COUNTS = np.array([100, 20, 5, 1])


def tiny_net(k=K, seed=0):
    torch.manual_seed(seed)
    return build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 1, k, [0.5], [0.25])


def tiny_images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)


def method(name, net, epochs=10, steps_per_epoch=5, **params):
    p = validate_variant("stage1", {"method": name, "params": params})["params"]
    m = get_method(name)(p, COUNTS)
    m.on_train_start(net, epochs, steps_per_epoch)
    return m


def test_seesaw_compensation_passes_no_gradient_through_the_logits():
    """Kills: ``F.softmax(logits.detach(), ...)`` -> ``F.softmax(logits, ...)`` in seesaw_loss.
    The gradient is that of CE on z + log S with S a constant, by hand:
    d/dz_ij = (softmax(z_i + log S_i)_j - 1[j = y_i]) / B."""
    p, q = 0.8, 2.0
    y = torch.tensor([0, 0, 2, 2, 1, 3])
    z = torch.randn(len(y), K, generator=torch.Generator().manual_seed(3), dtype=torch.float64,
                    requires_grad=True)
    seen = torch.tensor([40.0, 10.0, 2.0, 3.0])
    seesaw_loss(z, y, seen, p, q).backward()
    n = seen.tolist()
    want = np.zeros((len(y), K))
    compensated = 0
    for i in range(len(y)):
        zi, yi = z[i].tolist(), int(y[i])
        e = [math.exp(a - max(zi)) for a in zi]
        sig = [a / sum(e) for a in e]
        adjusted = []
        for j in range(K):
            if j == yi:
                adjusted.append(zi[j])
                continue
            mit = (n[j] / n[yi]) ** p if n[j] < n[yi] else 1.0
            comp = (sig[j] / sig[yi]) ** q if sig[j] > sig[yi] else 1.0
            compensated += comp > 1
            adjusted.append(zi[j] + math.log(mit * comp))
        ea = [math.exp(a - max(adjusted)) for a in adjusted]
        for j in range(K):
            want[i, j] = (ea[j] / sum(ea) - (j == yi)) / len(y)
    assert compensated >= 3, "the data must switch the compensation on (else the test is blind)"
    np.testing.assert_allclose(z.grad.numpy(), want, rtol=1e-9, atol=1e-12)


def test_supcon_probe_trains_the_classifier_only_never_the_encoder():
    """Kills: ``net.classifier(feats.detach())`` -> ``net.classifier(feats)`` in supcon.loss.
    The probe's CE alone reaches the classifier and no encoder weight; the contrastive term
    alone reaches the encoder (and the projection head) and not the classifier."""
    net = tiny_net()
    m = method("supcon", net)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    views = (tiny_images(len(y), seed=1), tiny_images(len(y), seed=2))
    terms = m.loss(net, views, y, 0)
    assert set(terms) == {"supcon", "probe_ce"}
    encoder = [q for q in net.encoder.parameters() if q.requires_grad]
    terms["probe_ce"].backward(retain_graph=True)
    assert net.classifier.weight.grad is not None and float(net.classifier.weight.grad.abs().sum()) > 0
    assert all(q.grad is None or float(q.grad.abs().sum()) == 0 for q in encoder), \
        "the probe's loss reached the encoder"
    net.zero_grad(set_to_none=True)
    terms["supcon"].backward()
    assert net.classifier.weight.grad is None
    assert sum(float(q.grad.abs().sum()) for q in encoder if q.grad is not None) > 0


def test_lcreg_isda_strength_is_ramped_over_the_epochs(monkeypatch):
    """Kills: ``lam = self.p["lambda_0"] * epoch / max(self.epochs, 1)`` -> ``lam =
    self.p["lambda_0"]`` (or any other ramp): the strength handed to the ISDA bound is
    lambda_0 * t / T at epoch t of T (Liu et al. Sec. 3.3, after ISDA), and the term returned is
    w_aug times that bound."""
    seen = []
    real = lcreg.latent_aug_loss

    def spy(e, x, y, cov, lam):
        out = real(e, x, y, cov, lam)
        seen.append((lam, float(out.detach())))
        return out

    monkeypatch.setattr(lcreg, "latent_aug_loss", spy)
    net = tiny_net()
    m = method("lcreg", net, epochs=10, num_latent=3, lambda_0=0.5, w_aug=0.3)
    y = torch.tensor([0, 1, 2, 3])
    terms = [m.loss(net, tiny_images(4, seed=epoch), y, epoch) for epoch in (0, 5, 9)]
    assert [lam for lam, _ in seen] == pytest.approx([0.0, 0.25, 0.45])
    for t, (_, bound) in zip(terms, seen):
        assert float(t["latent_aug"]) == pytest.approx(0.3 * bound, rel=1e-6)


def test_cb_wd_max_stage1_maxnorm_is_applied_at_every_epoch_end_of_a_training_run(digits, tmp_path, monkeypatch):
    """Kills: the per-epoch projection in ``WeightBalancing.after_step`` dropped, run per step, or
    never reached from the trainer. Two epochs on the digits benchmark with ``max_norm_thresh``:
    the projection runs once per epoch, at its last step, onto the threshold taken from the
    initial row norms, and the saved classifier's rows are all inside that ball."""
    from lmdlt.stage1.trainer import train_stage1

    thresholds, projections = [], []
    real_threshold, real_project = cb_wd_max.max_norm_threshold, cb_wd_max.max_norm_

    def spy_threshold(weight, thresh):
        thresholds.append(real_threshold(weight, thresh))
        return thresholds[-1]

    def spy_project(weight, threshold):
        projections.append((float(weight.detach().norm(dim=1).max()), threshold))
        real_project(weight, threshold)

    monkeypatch.setattr(cb_wd_max, "max_norm_threshold", spy_threshold)
    monkeypatch.setattr(cb_wd_max, "max_norm_", spy_project)
    cfg = validate_variant("stage1", {"method": "cb_wd_max", "epochs": 2, "batch_size": 64, "lr": 0.2,
                                      "select": "last", "params": {"max_norm_thresh": 0.1}})
    train_stage1(digits / "split.parquet", digits / "images.h5", cfg, 0, tmp_path / "model.pt",
                 threads=1, device="cpu", precision="fp32")
    assert len(thresholds) == 1
    assert len(projections) == 2 and all(t == thresholds[0] for _, t in projections)
    assert max(before for before, _ in projections) > thresholds[0], "no row grew past the threshold"
    weight = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]["classifier.weight"]
    assert float(weight.norm(dim=1).max()) <= thresholds[0] * (1 + 1e-6)


# --- options the mutation check found a method could ignore unnoticed ---------------------------

@pytest.mark.parametrize("prior", [None, 0.1, 0.3])
def test_cb_focal_prior_sets_the_initial_classifier_bias(prior):
    """prior pi: every bias starts at -log((1 - pi) / pi) (Cui et al. Sec. 4); null keeps the
    network's own initial bias."""
    net = tiny_net()
    before = net.classifier.bias.detach().clone()
    method("cb_focal", net, prior=prior)
    want = before if prior is None else torch.full_like(before, -math.log((1 - prior) / prior))
    torch.testing.assert_close(net.classifier.bias.detach(), want)


def test_cb_wd_max_stage1_max_norm_projects_after_every_step():
    """max_norm (an absolute radius, our option): rows above it are scaled onto it after every
    optimiser step, not only at the epoch's end."""
    net = tiny_net()
    with torch.no_grad():
        net.classifier.weight.copy_(torch.zeros_like(net.classifier.weight))
        net.classifier.weight[0, 0], net.classifier.weight[1, 0], net.classifier.weight[2, 0] = 4.0, 1.0, 0.2
    m = method("cb_wd_max", net, steps_per_epoch=5, max_norm=0.5)
    m.after_step(net)  # step 1 of 5
    np.testing.assert_allclose(net.classifier.weight.norm(dim=1).detach().numpy(), [0.5, 0.5, 0.2, 0.0], atol=1e-7)
