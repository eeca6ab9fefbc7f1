"""Tests written for the survivors of the "baselines" mutation group (scripts/mutation_check.py,
docs/mutation.md): each pins a behaviour the earlier tests left free."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lmdlt.stage1.seesaw as seesaw_mod
import lmdlt.stage2.crt as crt_mod
from lmdlt.config import validate_variant
from lmdlt.models import build_network
from lmdlt.stage1 import get_method as get1
from lmdlt.stage1.gcl import gcl_loss
from lmdlt.stage2 import get_method as get2

K = 3
COUNTS = [60, 20, 5]


def tiny_net(k=K, seed=0):
    torch.manual_seed(seed)
    return build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 1, k, [0.5], [0.25])


def tiny_images(n, seed=0):
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def method1(name, net=None, epochs=10, **params):
    p = validate_variant("stage1", {"method": name, "params": params})["params"]
    m = get1(name)(p, np.asarray(COUNTS))
    m.on_train_start(net if net is not None else tiny_net(), epochs, 5)
    return m


def test_crt_retrains_a_freshly_initialised_class_balanced_classifier(monkeypatch):
    calls = []
    real = crt_mod.train_linear

    def spy(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)
    monkeypatch.setattr(crt_mod, "train_linear", spy)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(K), [30, 10, 4])
    x = (rng.normal(size=(len(y), 4)) + np.eye(K, 4)[y] * 3).astype(np.float32)
    clf = {"weight": np.full((K, 4), 7.0, np.float32), "bias": np.ones(K, np.float32)}
    cfg = validate_variant("stage2", {"method": "crt", "params": {"epochs": 1, "lr": 1e-12}})
    m = get2("crt")(cfg["params"], K)
    m.fit({"features": x, "labels": y}, None, clf, torch.Generator().manual_seed(0))
    assert calls[0]["sampler"] == "class_balanced"
    assert calls[0].get("init") is None  # a new layer, not the stage-1 classifier
    # with a vanishing lr the weights stay at their fresh init, far from the stage-1 rows (all 7)
    assert float(np.abs(m.state()["weight"] - 7.0).min()) > 5.0


def test_seesaw_counts_include_the_current_batch_before_the_loss(monkeypatch):
    seen = []
    real = seesaw_mod.seesaw_loss
    monkeypatch.setattr(seesaw_mod, "seesaw_loss",
                        lambda logits, y, counts, p, q: seen.append(counts.clone()) or real(logits, y, counts, p, q))
    net = tiny_net()
    m = method1("seesaw", net=net)
    m.loss(net, tiny_images(4), torch.tensor([0, 0, 1, 2]), 0)
    m.loss(net, tiny_images(2), torch.tensor([2, 2]), 0)
    np.testing.assert_array_equal(seen[0].numpy(), [2, 1, 1])
    np.testing.assert_array_equal(seen[1].numpy(), [2, 1, 3])


@pytest.mark.parametrize("name", ["ldam", "gcl"])
def test_cosine_classifier_stays_normalised_after_optimiser_steps(name):
    net = tiny_net()
    m = method1(name, net=net)
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
    net = tiny_net()
    m = method1("iccl", net=net, epochs=4, warmup_epochs=1, dim=3)
    before = m.centroids.clone()
    y, yt = torch.tensor([0, 1, 1, 2]), torch.tensor([2, 2, 1, 0])
    m.loss(net, tiny_images(4), y, 2, paired=(tiny_images(4, seed=1), yt))  # after the warm-up
    moved = (m.centroids - before).norm(dim=1)
    assert bool((moved > 0).all())
    assert method1("iccl", gamma=1.0).paired_sampler() == {"name": "class_aware", "gamma": 1.0}


def test_bal_mixup_pairs_with_a_class_balanced_batch():
    assert method1("bal_mixup").paired_sampler() == {"name": "class_balanced"}


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
    net = tiny_net()
    m = method1("iccl", net=net, epochs=10, dim=3)
    assert m.warmup() == 5
    y = torch.tensor([0, 1, 1, 2])
    assert set(m.loss(net, tiny_images(4), y, 4)) == {"ce", "cc"}  # the last warm-up epoch
    assert set(m.loss(net, tiny_images(4), y, 5, paired=(tiny_images(4, seed=1), y))) == {"ce", "ce_it", "cc_it"}
