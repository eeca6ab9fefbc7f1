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


# ---------------------------------------------------------------- augmentation: per-sample seeds, batched on the device

def test_batched_kernels_equal_torchvision_for_the_same_parameters():
    from torchvision.transforms.v2 import functional as TF

    from lmdlt.data import augment as A
    from lmdlt.stage1.rrl import GridDropout

    x = torch.randint(0, 256, (3, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 0.55, 1.0])
    assert torch.equal(A.gaussian_blur(x, 3, sigma),
                       torch.stack([TF.gaussian_blur(x[i], [3, 3], [float(sigma[i])] * 2) for i in range(3)]))
    bf, cf = torch.tensor([0.8, 1.13, 1.2]), torch.tensor([1.19, 0.81, 1.0])
    for first, second in ((A._brightness, A._contrast), (A._contrast, A._brightness)):
        fa, fb = (bf, cf) if first is A._brightness else (cf, bf)
        tv = {A._brightness: TF.adjust_brightness, A._contrast: TF.adjust_contrast}
        want = torch.stack([tv[second](tv[first](x[i], float(fa[i])), float(fb[i])) for i in range(3)])
        assert torch.equal(second(first(x.float(), fa), fb).to(torch.uint8), want)
    angle, tx, ty, scale = (torch.tensor(v) for v in ([30.0, -44.5, 7.0], [3.0, 0.0, -6.0], [-2.0, 5.0, 1.0],
                                                       [1.1, 0.83, 1.0]))
    for border in ("reflect", "constant"):
        got = A.shift_scale_rotate(x, angle, tx, ty, scale, border)
        for i in range(3):
            img = x[i].float() if border == "reflect" else x[i]
            p = 11 if border == "reflect" else 0
            if p:
                img = torch.nn.functional.pad(img[None], (p, p, p, p), mode="reflect")[0]
            out = TF.affine(img, angle=float(angle[i]), translate=[int(tx[i]), int(ty[i])], scale=float(scale[i]),
                            shear=[0.0, 0.0], fill=0)[..., p:p + 24, p:p + 24]
            assert torch.equal(got[i], out.round().clamp(0, 255).to(torch.uint8)), (border, i)
    # GridDropout's holes: the per-image output is one of the unit^2 offsets' masks
    torch.manual_seed(3)
    cpu = GridDropout(0.5, p=1.0)(x[0])
    unit = max(2, 24 // 10)
    offsets = torch.tensor([[oy, ox] for oy in range(unit) for ox in range(unit)])
    masks = A.grid_holes(24, 24, unit, 1, offsets, torch.ones(len(offsets), dtype=torch.bool))
    assert any(torch.equal(x[0] * (~m).to(torch.uint8), cpu) for m in masks)


def _view_features(t: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """Per augmented image: channel means and their differences (brightness, RGB shift),
    contrast, horizontal gradient (blur), zero pixels (grid dropout, black borders), distance to
    the nearest flip of the original (geometry)."""
    t = t.float()
    m = t.mean((2, 3))
    flips = [img.float(), img.float().flip(-1), img.float().flip(-2), img.float().flip(-1).flip(-2)]
    return torch.stack([*m.T, m[:, 0] - m[:, 1], m[:, 1] - m[:, 2], t.std((1, 2, 3)),
                        (t[..., 1:] - t[..., :-1]).abs().mean((1, 2, 3)), (t == 0).float().mean((1, 2, 3)),
                        torch.stack([(t - f).abs().mean((1, 2, 3)) for f in flips]).min(0).values], 1)


def test_batched_rrl_views_have_the_per_image_distribution():
    """RRL's strong and weak views of one textured image, 3,000 draws per path: every feature's
    two-sample Kolmogorov-Smirnov distance below 0.05 (measured 0.035 and 0.019; about the 1e-3
    critical value). Seen red (0.055-0.11) with the blur, RGB-shift, jitter or grid-dropout
    probability changed, the RGB shift limit 15 -> 10, the jitter 0.2 -> 0.1 or the crop padding
    2 -> 1; the affine op itself is checked exactly above."""
    from scipy.stats import ks_2samp

    from lmdlt.data.augment import batched, seeded_call

    transform = _method("rrl").train_transform({"crop_padding": 2}, 16)
    img = torch.randint(40, 216, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    n = 3000
    per_image = [seeded_call(transform, img, s) for s in range(n)]
    batch = batched(transform)(img.expand(n, -1, -1, -1).contiguous(), 12345)
    for view in (0, 1):
        a = _view_features(torch.stack([v[view] for v in per_image]), img).numpy()
        b = _view_features(batch[view], img).numpy()
        worst = max(ks_2samp(a[:, j], b[:, j], method="asymp").statistic for j in range(a.shape[1]))
        assert worst < 0.05, (view, worst)


def test_seeded_draws_augment_alike_with_any_workers_and_after_a_resume():
    from torch.utils.data import RandomSampler

    from lmdlt.data.augment import SeededDraws
    from lmdlt.data.samplers import set_sampler_epoch

    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    transform = _method("rrl").train_transform({"crop_padding": 1}, 8)
    ds = _AugmentedImages(images, np.arange(12) % 3, transform)

    def run(workers, epochs, state=None):
        gen = torch.Generator().manual_seed(0)
        if state is not None:
            gen.set_state(state)
        sampler = SeededDraws(RandomSampler(range(12), generator=gen), seed=7)
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers,
                            persistent_workers=workers > 0)
        out = []
        for epoch in epochs:
            set_sampler_epoch(sampler, epoch)
            out.append([b[0][0] for b in loader])
            saved = gen.get_state()
        return out, saved

    single, _ = run(0, [0, 1])
    workers, _ = run(2, [0, 1])
    _, after_first = run(0, [0])
    resumed, _ = run(0, [1], after_first)
    for a, b in zip(single[0] + single[1], workers[0] + workers[1]):
        assert torch.equal(a, b)
    for a, b in zip(single[1], resumed[0]):
        assert torch.equal(a, b)
    assert not torch.equal(single[0][0], single[1][0])  # epochs draw afresh


def test_training_with_batched_augmentation(tmp_path):
    from conftest import build_digits_split

    from lmdlt.stage1.trainer import train_stage1

    d = build_digits_split(tmp_path)
    base = {"epochs": 2, "batch_size": 64, "lr": 0.05, "model": {"arch": "small_resnet", "width": 4},
            "augment": {"crop_padding": 1}}
    cfg = validate_variant("stage1", {**base, "method": "rrl", "params": {"consistency_start_epoch": 1}})
    meta = train_stage1(d / "split.parquet", d / "images.h5", cfg, 0, tmp_path / "rrl.pt", threads=1,
                        device="cpu", augment_device="gpu")
    assert meta["compute"]["augment"] == "device" and all(np.isfinite(h["loss"]) for h in meta["history"])
    auto = train_stage1(d / "split.parquet", d / "images.h5", cfg, 0, tmp_path / "auto.pt", threads=1, device="cpu")
    assert auto["compute"]["augment"] == "loader"  # auto: batched only on CUDA
    bad = validate_variant("stage1", {**base, "method": "rrl", "params": {"consistency_start_epoch": 1,
                                                                          "distortion_p": 0.5}})
    with pytest.raises(ValueError, match="augment_device: gpu, but the training transform"):
        train_stage1(d / "split.parquet", d / "images.h5", bad, 0, tmp_path / "bad.pt", threads=1,
                     device="cpu", augment_device="gpu")


def test_channel_statistics_in_chunks_equal_the_whole_set_at_once():
    """No float copy of the whole training set: chunks of images, float64 sums, the same
    statistics as the one-shot float computation (and NumPy's float64 ones)."""
    from lmdlt.data.transforms import channel_stats

    images = np.random.default_rng(0).integers(0, 256, (1000, 6, 5, 3), dtype=np.uint8)
    flat = images.reshape(-1, 3).astype(np.float64) / 255
    for chunk in (7, 1000, 4096):
        mean, std = channel_stats(images, chunk=chunk)
        np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-12)
        np.testing.assert_allclose(std, flat.std(0, ddof=1), rtol=1e-9)
    assert channel_stats(np.zeros((3, 4, 4, 1), np.uint8)) == ([0.0], [0.001])
