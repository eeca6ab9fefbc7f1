"""What a first CUDA run would hit, checked on the CPU: each test stands in for a GPU path
(another device, another start method, CUDA's autocast policy, vectorised device-side forms of
host loops) and was seen failing on the code before its fix."""
import pickle
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmdlt.config import validate_variant
from lmdlt.resume import ResumeState, rng_state, run_identity, set_rng_state
from lmdlt.stage1 import available_methods, get_method
from lmdlt.stage1.trainer import _AugmentedImages


# ---------------------------------------------------------------- resume on another device

def _draws(g: torch.Generator) -> tuple:
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            torch.rand(3, generator=g).tolist())


def test_resume_state_mapped_to_another_device_restores_the_random_states(tmp_path):
    """ICC loads its resume state onto its device; on CUDA the random states came along and
    NumPy's keys could not become an array. 'meta' stands in for the GPU here."""
    rs = ResumeState(tmp_path / "out.h5", run_identity("stage2", {"m": "icc"}, {}, 0))
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    rs.save({"net": {"w": torch.ones(2)}, "rng": rng_state(g)})
    expected = _draws(g)
    torch.manual_seed(9), np.random.seed(9), random.seed(9), g.manual_seed(9)

    state = rs.load("meta")
    assert state["net"]["w"].device.type == "meta"  # the loop's tensors go where it runs
    set_rng_state(state["rng"], g)
    assert _draws(g) == expected


# ---------------------------------------------------------------- DataLoader workers under spawn

def _method(name, **params):
    p = validate_variant("stage1", {"method": name, "params": params})["params"]
    return get_method(name)(p, np.array([20, 10, 5]))


@pytest.mark.parametrize("name", available_methods())
def test_every_train_transform_pickles_into_workers(name):
    """spawn / forkserver workers receive the dataset pickled: a local closure cannot be."""
    transform = _method(name).train_transform({"crop_padding": 1, "hflip": True}, 8)
    img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    clone = pickle.loads(pickle.dumps(transform))
    torch.manual_seed(0)
    a = transform(img)
    torch.manual_seed(0)
    b = clone(img)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.equal(u, v)


def test_two_view_dataset_loads_in_a_spawned_worker():
    method = _method("supcon")
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    ds = _AugmentedImages(images, np.array([0, 1, 2, 0, 1, 2]),
                          method.train_transform({"crop_padding": 1, "hflip": True}, 8))
    loader = DataLoader(ds, batch_size=3, num_workers=1, multiprocessing_context="spawn")
    (v1, v2), y = next(iter(loader))
    assert v1.shape == v2.shape == (3, 3, 8, 8) and v1.dtype == torch.uint8 and y.tolist() == [0, 1, 2]


# ---------------------------------------------------------------- precision

def _close_features(n=64, c=512, gap=1e-2, seed=0):
    """Student and teacher features 1 % apart, rounded to bf16 as a CUDA autocast pass gives."""
    g = torch.Generator().manual_seed(seed)
    z = torch.relu(torch.randn(n, c, generator=g))
    return z.bfloat16(), (z + gap * torch.randn(n, c, generator=g)).bfloat16()


@pytest.mark.parametrize("term", ["sample", "channel"])
def test_rrl_gram_terms_are_computed_in_fp32_under_bf16_autocast(term):
    """CPU autocast lowers matmul to bf16 as CUDA's does: the Gram terms must opt out."""
    from lmdlt.stage1.rrl import channel_loss, sample_loss

    fn = sample_loss if term == "sample" else channel_loss
    zs, zt = _close_features()
    exact = float(fn(zs.double(), zt.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(zs, zt)
    assert got.dtype == torch.float32
    # bf16 Gram entries made L_sample 2.8x its value here (L_channel 1.3x)
    assert float(got) == pytest.approx(exact, rel=1e-4)


def test_lcreg_latent_terms_are_computed_in_fp32_under_bf16_autocast():
    from lmdlt.stage1.lcreg import latent_aug_loss, reconstruction_loss

    g = torch.Generator().manual_seed(1)
    e = torch.randn(8, 64, generator=g).bfloat16()
    x = torch.relu(torch.randn(200, 64, generator=g)).bfloat16()
    y = torch.randint(0, 8, (200,), generator=g)
    a = torch.randn(8, 64, 64, generator=g)
    cov = a @ a.transpose(1, 2) / 64
    fmap = torch.relu(torch.randn(4, 64, 9, generator=g)).bfloat16()
    exact = (float(latent_aug_loss(e.double(), x.double(), y, cov.double(), 0.5)),
             float(reconstruction_loss(e.double(), fmap.double())))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = latent_aug_loss(e, x, y, cov, 0.5), reconstruction_loss(e, fmap)
    assert all(t.dtype == torch.float32 for t in got)
    assert [float(t) for t in got] == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize("capability,auto", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 0), "fp32"),
                                             ((7, 5), "fp32")])
def test_auto_precision_is_bf16_only_where_the_gpu_has_it(monkeypatch, capability, auto):
    from lmdlt import runtime

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda", 0)
    assert runtime.resolve_precision(cuda, "auto") == auto
    assert runtime.resolve_precision(cuda, "fp32") == "fp32"
    if auto == "fp32":  # a V100 / T4 would emulate bf16, slower than fp32
        with pytest.raises(ValueError, match=rf"bf16 on cuda:0, compute capability {capability[0]}\.{capability[1]}"):
            runtime.resolve_precision(cuda, "bf16")
    else:
        assert runtime.resolve_precision(cuda, "bf16") == "bf16"
    assert runtime.resolve_precision(torch.device("cpu"), "auto") == "fp32"


def test_setup_torch_chooses_deterministic_cuda_kernels(monkeypatch):
    from lmdlt.runtime import CUBLAS_WORKSPACE, setup_torch

    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        torch.backends.cudnn.benchmark = True
        setup_torch(0, 1)
        assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE == ":4096:8"
        assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own choice stays
        setup_torch(0, 1)
        assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


# ---------------------------------------------------------------- DDP's find_unused_parameters

METHOD_VARIANTS = [(name, {}) for name in available_methods()] + [
    ("supcon", {"probe": False}), ("rrl", {"consistency_start_epoch": 1, "ce_view": "strong", "bn_stats": "all"}),
    ("iccl", {"warmup_epochs": 1})]


@pytest.mark.parametrize("name,params", METHOD_VARIANTS)
def test_each_method_tells_ddp_whether_a_step_leaves_parameters_without_gradient(name, params):
    """DDP waits for every parameter's gradient unless told otherwise, and looks for unused ones
    at a cost every step when told: each method's claim is what its steps really do, at every
    epoch of a short run (warm-ups and deferred switches included)."""
    from lmdlt.models import build_network
    from lmdlt.stage1.distributed import find_unused_parameters

    if name == "rrl" and not params:
        params = {"consistency_start_epoch": 1}
    p = validate_variant("stage1", {"method": name, "params": params})["params"]
    torch.manual_seed(0)
    net = build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 3, 3, [0.5] * 3, [0.25] * 3)
    method = get_method(name)(p, np.array([30, 10, 4]))
    method.on_train_start(net, 4, 3)
    extra = method.modules()
    transform = method.train_transform({}, 8)
    x = torch.randint(0, 256, (9, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2] * 3)
    unused_at = []
    for epoch in range(4):
        views = [transform(img) for img in x]
        xb = (tuple(torch.stack(v) for v in zip(*views)) if isinstance(views[0], tuple) else torch.stack(views))
        kw = {"paired": (xb, y)} if method.paired_sampler() else {}
        net.zero_grad(set_to_none=True)
        extra.zero_grad(set_to_none=True)
        sum(v.float() for v in method.loss(net, xb, y, epoch, **kw).values()).backward()
        named = list(net.named_parameters()) + list(extra.named_parameters())
        unused_at.append([n for n, q in named if q.requires_grad and q.grad is None])
        method.after_step(net)
    assert find_unused_parameters(method) == any(unused_at), unused_at


# ---------------------------------------------------------------- device-side forms = the old host loops

def _old_running_covariance(m, d, batches):
    """The per-category host loop RunningCovariance.update replaced (float64 on the CPU)."""
    n, mean, cov = torch.zeros(m, dtype=torch.float64), torch.zeros(m, d, dtype=torch.float64), \
        torch.zeros(m, d, d, dtype=torch.float64)
    for x, y in batches:
        x = x.to(torch.float64)
        for k in torch.unique(y).tolist():
            xk = x[y == k]
            mu_new = xk.mean(0)
            c = xk - mu_new
            cov_new = c.t() @ c / len(xk)
            n_old, tot = n[k], n[k] + len(xk)
            delta = mean[k] - mu_new
            cov[k] = (n_old * cov[k] + len(xk) * cov_new) / tot + n_old * len(xk) * torch.outer(delta, delta) / tot ** 2
            mean[k] = (n_old * mean[k] + len(xk) * mu_new) / tot
            n[k] = tot
    return n, mean, cov


@pytest.mark.parametrize("grouped", [False, True])
def test_lcreg_running_covariance_equals_the_host_loop(grouped):
    """Both forms (per-class matmuls; the GPU's one-hot batched matmul, with row chunks) give
    the per-category loop's statistics: 40 categories, some never drawn, over 3 batches."""
    from lmdlt.stage1.lcreg import RunningCovariance

    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(700, 16, generator=g) * 2 + 1, torch.randint(0, 30, (700,), generator=g))
               for _ in range(3)]
    stats = RunningCovariance(40, 16)
    for x, y in batches:
        # float32 batch moments where the GPU form runs (the CPU keeps float64)
        stats.update(x, y, grouped=grouped)
    n, mean, cov = _old_running_covariance(40, 16, batches)
    assert torch.equal(stats.n, n) and float(stats.cov[30:].abs().sum()) == 0
    tol = 1e-5 if grouped else 1e-12
    torch.testing.assert_close(stats.mean, mean, rtol=tol, atol=tol)
    torch.testing.assert_close(stats.cov, cov, rtol=tol, atol=tol)


def _old_virtual_batches(mu, chol, per_class, batch_size, generator):
    """The per-batch, per-class masked draw iter_virtual_batches replaced."""
    k, c = mu.shape
    mu_, chol_ = mu.float(), chol.float()
    labels = torch.arange(k).repeat_interleave(per_class)
    labels = labels[torch.randperm(len(labels), generator=generator)]
    for start in range(0, len(labels), batch_size):
        y = labels[start:start + batch_size]
        z = torch.randn(len(y), c, generator=generator)
        v = torch.empty_like(z)
        for cls in torch.unique(y).tolist():
            m = y == cls
            v[m] = z[m] @ chol_[cls].T + mu_[cls]
        yield v, y


def test_virtual_features_grouped_by_class_equal_the_masked_per_batch_draw(monkeypatch):
    from lmdlt.stage2 import gaussian

    g = torch.Generator().manual_seed(0)
    k, c = 7, 12
    mu = torch.randn(k, c, generator=g, dtype=torch.float64)
    a = torch.randn(k, c, c, generator=g, dtype=torch.float64)
    chol = gaussian.cholesky(a @ a.transpose(1, 2) + torch.eye(c, dtype=torch.float64))
    monkeypatch.setattr(gaussian, "GROUP_ROWS", 100)  # several groups, a last partial batch
    new = list(gaussian.iter_virtual_batches(mu, chol, 61, 32, torch.Generator().manual_seed(5)))
    old = list(_old_virtual_batches(mu, chol, 61, 32, torch.Generator().manual_seed(5)))
    assert len(new) == len(old) == 14
    for (v, y), (v0, y0) in zip(new, old):
        assert torch.equal(y, y0)
        torch.testing.assert_close(v, v0, rtol=1e-6, atol=1e-6)


def test_teacher_ema_with_fused_kernels_equals_the_per_parameter_loop():
    from lmdlt.models import build_network
    from lmdlt.stage1.rrl import ema_update_

    def net(seed):
        torch.manual_seed(seed)
        return build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 3, 3, [0.5] * 3, [0.25] * 3)

    student, teacher, expected = net(0), net(1), net(1)
    for b in student.buffers():
        b.add_(1)
    for step in (0, 5, 5000):
        a = ema_update_(teacher, student, 0.999, step, copy_buffers=True)
        with torch.no_grad():
            for pt, ps in zip(expected.parameters(), student.parameters()):
                pt.mul_(a).add_(ps, alpha=1 - a)
            for bt, bs in zip(expected.buffers(), student.buffers()):
                bt.copy_(bs)
    for (name, u), v in zip(teacher.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(u, v), name


@pytest.mark.parametrize("name,params", [("ldam", {"drw_start": 0.5}), ("ce_drw", {"drw_start": 0.5}),
                                         ("cb_focal", {}), ("balanced_softmax", {}), ("aduc", {}), ("gcl", {})])
def test_constant_tensors_move_to_the_device_once(name, params, monkeypatch):
    """Class weights, margins, priors: one copy per device, not one upload per step."""
    from lmdlt.stage1.common import DeviceConstants

    moved = []
    real_call = DeviceConstants.__call__

    def spy(self, key, device, dtype=None):
        before = len(self._cache)
        out = real_call(self, key, device, dtype)
        moved.append(len(self._cache) > before)
        return out

    monkeypatch.setattr(DeviceConstants, "__call__", spy)
    from lmdlt.models import build_network

    torch.manual_seed(0)
    net = build_network({"arch": "small_resnet", "width": 4, "blocks_per_stage": 1}, 3, 3, [0.5] * 3, [0.25] * 3)
    method = _method(name, **params)
    method.on_train_start(net, 4, 2)
    t = method.train_transform({}, 8)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    views = [t(img) for img in x]
    xb = tuple(torch.stack(v) for v in zip(*views)) if isinstance(views[0], tuple) else torch.stack(views)
    for epoch in (0, 3, 3):
        method.loss(net, xb, torch.tensor([0, 1, 2, 0, 1, 2]), epoch)
    assert moved and sum(moved) <= 2 and not any(moved[-1:])  # cached after the first use
