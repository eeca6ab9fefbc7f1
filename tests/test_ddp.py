"""Multi-process stage 1 (torchrun, DDP, SyncBatchNorm) on CPU with gloo: N processes are the
single-process run with the same global batch, up to float rounding."""
import copy
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from lmdlt.config import validate_variant
from lmdlt.data.image_cache import build_image_cache, load_split_images
from lmdlt.data.samplers import available_samplers, make_sampler, set_sampler_epoch
from lmdlt.data.sources import get_source
from lmdlt.data.splits import build_split, write_manifest
from lmdlt.io import provenance
from lmdlt.models import build_network
from lmdlt.models.checkpoint import load_checkpoint
from lmdlt.stage1.distributed import (SINGLE_PROCESS, CPUSyncBatchNorm, Distributed, ShardedSampler,
                                      from_env)
from lmdlt.stage1.trainer import predict_logits, train_stage1

# Per-step losses of N processes vs 1: the same sums in another order (SyncBN statistics and
# gradients reduced over ranks), float32 rounding compounded over the compared steps.
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5


# ---------------------------------------------------------------- sampler sharding

def _sampler(name, labels, seed):
    g = torch.Generator().manual_seed(seed)
    opts = {"gamma": 0.5} if name == "class_aware" else {}
    return make_sampler(labels, name, g, epochs=3, **opts)


@pytest.mark.parametrize("name", available_samplers())
@pytest.mark.parametrize("world,n", [(2, 100), (3, 100), (4, 64)])
def test_shards_of_the_global_draw_union_to_the_single_process_draw(name, world, n):
    labels = np.repeat(np.arange(4), [n // 2, n // 4, n // 8, n - n // 2 - n // 4 - n // 8])
    single = _sampler(name, labels, seed=3)
    shards = [ShardedSampler(_sampler(name, labels, seed=3), r, world) for r in range(world)]
    batch = 4 * world
    for epoch in range(3):  # fresh draws each epoch stay in step (progressive re-weights per epoch)
        set_sampler_epoch(single, epoch)
        for s in shards:
            set_sampler_epoch(s, epoch)
        draw = list(single)
        per_rank = [list(s) for s in shards]
        usable = n // world * world
        assert all(len(p) == len(s) == n // world for p, s in zip(per_rank, shards))
        interleaved = [per_rank[i % world][i // world] for i in range(usable)]
        assert interleaved == draw[:usable]  # the union, in the single-process order
        # per-rank batches of batch / world hold exactly the single-process batch's indices
        local = batch // world
        for j in range(usable // batch):
            union = sorted(i for p in per_rank for i in p[j * local:(j + 1) * local])
            assert union == sorted(draw[j * batch:(j + 1) * batch])
    assert shards[0].generator is shards[0].sampler.generator  # what a resume file saves


def test_per_rank_batch_must_divide_the_global_batch():
    assert Distributed(4, 1, 1, "gloo").local_batch_size(64) == 16
    with pytest.raises(ValueError, match=r"stage1.batch_size \(30\).*compute.stage1_processes = 4"):
        Distributed(4, 1, 1, "gloo").local_batch_size(30)


def test_torchrun_environment_is_recognised():
    assert from_env({}) == SINGLE_PROCESS and not from_env({"WORLD_SIZE": "1"}).active
    ctx = from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (ctx.world_size, ctx.rank, ctx.local_rank, ctx.is_main) == (4, 2, 0, False)
    with pytest.raises(RuntimeError, match="LOCAL_RANK is not set"):
        from_env({"WORLD_SIZE": "2", "RANK": "0"})


# ---------------------------------------------------------------- DDP + SyncBN + extra modules

class _HeadMethod:
    """A method with an extra trainable head (its gradient must be averaged over ranks) and an
    EMA teacher of it updated in after_step (it must stay identical on every rank)."""

    def __init__(self, dim):
        self.head = nn.Linear(dim, 3)
        self.teacher = copy.deepcopy(self.head).requires_grad_(False)

    def modules(self):
        return nn.ModuleDict({"head": self.head})

    def loss(self, net, x, y, epoch):
        f = net.features(x)  # called outside net.forward, as most methods do
        return {"ce": F.cross_entropy(net.classifier(f), y), "head": self.head(f).pow(2).mean()}

    def after_step(self, net):
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.head.parameters()):
                t.mul_(0.9).add_(s, alpha=0.1)


def _toy_run(ctx: Distributed, steps: int = 4) -> dict:
    torch.manual_seed(0)
    net = build_network({"arch": "small_resnet", "width": 8, "blocks_per_stage": 1}, 1, 4, [0.5], [0.25])
    net = ctx.prepare(net, torch.device("cpu"))
    method = _HeadMethod(net.feature_dim)
    extra = ctx.prepare(method.modules(), torch.device("cpu"))
    step = ctx.wrap(method, net, extra, seed=0)
    opt = torch.optim.SGD([*net.parameters(), *extra.parameters()], lr=0.1, momentum=0.9)
    data = torch.Generator().manual_seed(1)
    losses = []
    net.train()
    for _ in range(steps):
        x = torch.randint(0, 256, (16, 1, 8, 8), generator=data, dtype=torch.uint8)
        y = torch.randint(0, 4, (16,), generator=data)
        # a rank's share of the global batch, as ShardedSampler hands it out
        terms = step(x[ctx.rank::ctx.world_size], y[ctx.rank::ctx.world_size], 0)
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(net)
        losses.append(loss.detach())
    _, _, losses = ctx.reduce_epoch({}, 0, losses)
    return {"net": {k: v.clone() for k, v in net.state_dict().items()},
            "head": {k: v.clone() for k, v in method.head.state_dict().items()},
            "teacher": {k: v.clone() for k, v in method.teacher.state_dict().items()},
            "losses": losses, "sync_bn": sum(isinstance(m, CPUSyncBatchNorm) for m in net.modules())}


def _toy_worker(rank, world, init_file, out_dir):
    from lmdlt.stage1.distributed import gather_batch
    from lmdlt.stage1.rrl import channel_loss, sample_loss
    from lmdlt.stage1.seesaw import Seesaw

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_toy_run(Distributed(world, rank, rank, "gloo")), os.path.join(out_dir, f"rank{rank}.pt"))
        # the batch-coupled terms (below), in the same processes: one spawn for both tests
        torch.save(_coupled_terms(rank, world, gather_batch, sample_loss, channel_loss, Seesaw),
                   os.path.join(out_dir, f"coupled{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The outputs of both toy workers (one 2-process spawn)."""
    d = tmp_path_factory.mktemp("ranks")
    torch.set_num_threads(1)
    mp.spawn(_toy_worker, args=(2, str(d / "rdv"), str(d)), nprocs=2)
    return d


def test_ddp_with_extra_modules_matches_a_single_process_and_ranks_agree(two_ranks):
    r0, r1 = (torch.load(two_ranks / f"rank{r}.pt", weights_only=True) for r in range(2))
    single = _toy_run(SINGLE_PROCESS)
    assert r0["sync_bn"] > 0 and single["sync_bn"] == 0
    for part in ("net", "head", "teacher"):
        for k in single[part]:
            torch.testing.assert_close(r0[part][k], r1[part][k], rtol=0, atol=0)  # ranks identical
            torch.testing.assert_close(r0[part][k].double(), single[part][k].double(),
                                       rtol=0, atol=PARAM_ATOL, msg=f"{part}.{k}")
    np.testing.assert_allclose(r0["losses"], single["losses"], rtol=LOSS_RTOL)
    # the head and teacher moved: a test of parameters that never change would prove nothing
    assert not torch.equal(single["teacher"]["weight"], _HeadMethod(single["net"]["classifier.weight"].shape[1])
                           .teacher.weight)


# ---------------------------------------------------------------- the trainer under torchrun

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    src = get_source("digits")
    build_image_cache(src, 8, d / "images.h5", provenance("image_cache", {"size": 8}))
    split = {"protocol": "cui", "imbalance_ratio": 10, "val_per_class": 10, "test_per_class": 10,
             "n_cap": None, "class_order": "count"}
    index = src.index()
    write_manifest(d / "split.parquet", build_split(index, split, 0), index.class_names,
                   provenance("split", split, seed=0))
    return d


# Runs the real CLI on every rank; rank 0 also saves the validation logits it computed.
DRIVER = textwrap.dedent("""
    import os, sys
    import numpy as np
    import lmdlt.stage1.trainer as trainer
    from lmdlt import cli

    computed = []
    predict = trainer.predict_logits
    def spy(*args, **kwargs):
        computed.append(predict(*args, **kwargs))
        return computed[-1]
    trainer.predict_logits = spy
    rc = cli.main(sys.argv[2:])
    if os.environ["RANK"] == "0":
        np.save(sys.argv[1], computed[-1])
    elif computed:
        sys.exit("a rank other than 0 validated")
    sys.exit(rc)
""")


def test_two_processes_match_one_process_and_the_checkpoint_loads_alone(data, tmp_path):
    # CE, no augmentation, a BatchNorm ResNet: only SyncBN + gradient averaging make this equal
    cfg = validate_variant("stage1", {"method": "ce", "epochs": 2, "batch_size": 32, "lr": 0.05,
                                      "select": "last", "model": {"width": 8}})
    args = ["--split", str(data / "split.parquet"), "--images", str(data / "images.h5"),
            "--params", json.dumps(cfg), "--seed", "0", "--threads", "1", "--device", "cpu"]
    t0 = time.perf_counter()
    one = train_stage1(data / "split.parquet", data / "images.h5", cfg, 0, tmp_path / "one.pt",
                       threads=1, device="cpu")
    t1 = time.perf_counter()
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "driver.py"), str(tmp_path / "rank0_val.npy"), "train-stage1", *args,
                           "--out", str(tmp_path / "two.pt")],
                          capture_output=True, text=True, env=env, timeout=300)
    t2 = time.perf_counter()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    log = proc.stderr
    assert "distributed: 2 processes, backend gloo, device cpu" in log
    assert log.count("epoch 1/2 loss") == 1  # rank 0 alone logs epochs
    print(f"1 process {t1 - t0:.1f}s, torchrun 2 processes {t2 - t1:.1f}s")

    net, meta = load_checkpoint(tmp_path / "two.pt")  # single process, plain BatchNorm
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())
    a = np.concatenate([h["step_losses"] for h in one["history"]])
    b = np.concatenate([h["step_losses"] for h in meta["history"]])
    assert len(a) == len(b) >= 10
    diff = np.abs(a - b) / np.abs(a)
    print(f"per-step loss: max relative difference {diff.max():.2e} over {len(a)} steps")
    np.testing.assert_allclose(b, a, rtol=LOSS_RTOL)
    for k in ("loss", "lr"):
        assert [h[k] for h in meta["history"]] == pytest.approx([h[k] for h in one["history"]], rel=LOSS_RTOL)

    # the checkpoint gives, in one process, exactly the validation logits rank 0 computed
    x_val, y_val, _ = load_split_images(data / "split.parquet", data / "images.h5")["val"]
    logits = predict_logits(net, x_val, torch.device("cpu"))
    np.testing.assert_array_equal(logits, np.load(tmp_path / "rank0_val.npy"))
    from sklearn.metrics import balanced_accuracy_score
    assert balanced_accuracy_score(y_val, logits.argmax(1)) == meta["selected_val_bacc"]
    ref, _ = load_checkpoint(tmp_path / "one.pt")
    np.testing.assert_allclose(logits, predict_logits(ref, x_val, torch.device("cpu")), atol=1e-3)


# ---------------------------------------------------------------- the rule

def test_rule_launches_torchrun_with_one_gpu_per_process(tmp_path):
    from conftest import run_snakemake, write_config

    write_config(tmp_path, {
        "dataset": {"name": "digits-lt", "source": "digits", "image_size": 8},
        "split": {"protocol": "cui", "imbalance_ratio": 50, "val_per_class": 15, "test_per_class": 30},
        "seeds": [0], "groups": {"rule": "rank", "sizes": [3, 4, 3]},
        "compute": {"threads": 1, "stage1_processes": 2},
        "stage1": {"ce": {"method": "ce", "epochs": 2, "batch_size": 64}}, "stage2": {}})
    # --set-resources is what the SLURM profile's set-resources becomes (gpu: 1 per GPU rule);
    # the config's process count must win over it
    proc = run_snakemake(tmp_path, "--dry-run", "--printshellcmds", "--set-resources", "train_stage1:gpu=1")
    job = (proc.stdout + proc.stderr).split("rule train_stage1:", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"resources: .*\bgpu=(\d+)", job).group(1) == "2"
    assert "torchrun --standalone --nproc_per_node 2 -m lmdlt.cli train-stage1 --split" in job


# ---------------------------------------------------------------- batch-coupled terms and resume under DDP

def _coupled_terms(rank, world, gather, sample_loss, channel_loss, seesaw_cls):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g)            # the global batch's inputs
    x_t = x + 0.1 * torch.randn(16, 6, generator=g)  # the teacher's view
    torch.manual_seed(1)
    layer = nn.Linear(6, 5)                        # the same weights on every rank
    part = slice(rank * 16 // world, (rank + 1) * 16 // world)
    z_s = torch.relu(layer(x[part]))
    with torch.no_grad():
        z_t = torch.relu(layer(x_t[part]))
    z_s_all, z_t_all = gather(z_s), gather(z_t)
    loss = sample_loss(z_s_all, z_t_all) + channel_loss(z_s_all, z_t_all)
    loss.backward()
    grads = [q.grad.clone() for q in layer.parameters()]
    if world > 1:  # what DDP does with the parameters' gradients
        for q in grads:
            dist.all_reduce(q)
            q /= world
    labels = torch.tensor([0, 0, 1, 2, 0, 1, 0, 0, 2, 2, 2, 1, 0, 0, 0, 1])
    seesaw = seesaw_cls({"p": 0.8, "q": 2.0}, np.array([7, 4, 5]))
    seesaw.loss(lambda v: torch.zeros(len(v), 3), torch.zeros(16 // world, 1), labels[part], 0)
    return {"loss": loss.detach(), "grads": grads, "counts": seesaw.cum_counts}


def test_gram_terms_and_seesaw_counts_under_ddp_equal_one_process_on_the_whole_batch(two_ranks):
    """RRL's L_sample + L_channel over 2 ranks equal the single-process terms on the
    concatenated batch (the reference's gathered Gram matrices, / the global batch), and so do
    the DDP-averaged gradients; Seesaw's class counts are those of the whole batch on both ranks."""
    from lmdlt.stage1.rrl import channel_loss, sample_loss
    from lmdlt.stage1.seesaw import Seesaw

    ranks = [torch.load(two_ranks / f"coupled{r}.pt", weights_only=True) for r in range(2)]
    single = _coupled_terms(0, 1, lambda t: t, sample_loss, channel_loss, Seesaw)
    for r in ranks:
        torch.testing.assert_close(r["loss"], single["loss"], rtol=1e-6, atol=0)
        for a, b in zip(r["grads"], single["grads"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert r["counts"].tolist() == single["counts"].tolist() == [8, 4, 4]


def _resume_worker(rank, world, ports, data_dir, out_dir, cfg):
    """Train (a) 2 epochs; (b) stop both ranks in epoch 2 before its state is saved; (c)
    resume (b) to the end. Records each rank's first GCL noise draw of every epoch."""
    import lmdlt.stage1.gcl as gcl

    torch.set_num_threads(1)
    draws = {}
    real_noise = gcl.cloud_noise

    def spy(shape, std, generator=None, device=None):
        eps = real_noise(shape, std, generator, **({} if device is None else {"device": device}))
        draws.setdefault(spy.run, {}).setdefault(spy.epoch, eps.clone())
        return eps
    gcl.cloud_noise = spy
    real_loss = gcl.GaussianCloudedLogit.loss

    def loss(self, net, x, y, epoch):
        spy.epoch = epoch
        return real_loss(self, net, x, y, epoch)
    gcl.GaussianCloudedLogit.loss = loss

    class Stop(Exception):
        pass

    def stop_in_epoch_2(self, net, images, device):
        if spy.run == "b" and spy.epoch == 1:
            raise Stop  # on every rank, before epoch 2's resume state is written
    gcl.GaussianCloudedLogit.on_epoch_end = stop_in_epoch_2
    from lmdlt.stage1.trainer import train_stage1

    for run, port, out in (("a", ports[0], "a.pt"), ("b", ports[1], "bc.pt"), ("c", ports[2], "bc.pt")):
        os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        spy.run = run
        try:
            train_stage1(os.path.join(data_dir, "split.parquet"), os.path.join(data_dir, "images.h5"), cfg, 0,
                         os.path.join(out_dir, out), threads=1, device="cpu")
        except Stop:
            dist.destroy_process_group()
    torch.save(draws, os.path.join(out_dir, f"draws{rank}.pt"))


def _free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow  # two DDP processes, killed and resumed: ~40 s
def test_ddp_resume_gives_each_rank_its_own_random_stream_back(data, tmp_path):
    """A 2-process run stopped in epoch 2 and resumed ends with the uninterrupted run's weights:
    each rank's random stream (here GCL's noise; augmentation draws per-sample seeds) is saved
    and restored per rank, not rank 0's on every rank."""
    cfg = validate_variant("stage1", {"method": "gcl", "epochs": 2, "batch_size": 32, "lr": 0.05,
                                      "select": "last", "model": {"width": 4}, "augment": {"crop_padding": 1, "hflip": True}})
    mp.spawn(_resume_worker, args=(2, _free_ports(3), str(data), str(tmp_path), cfg), nprocs=2)
    a, _ = load_checkpoint(tmp_path / "a.pt")
    c, meta = load_checkpoint(tmp_path / "bc.pt")
    draws = [torch.load(tmp_path / f"draws{r}.pt", weights_only=True) for r in range(2)]
    for r in range(2):
        assert 1 in draws[r]["c"] and 0 not in draws[r]["c"]  # (c) resumed at epoch 2
        assert torch.equal(draws[r]["c"][1], draws[r]["a"][1]), f"rank {r} draws another stream after the resume"
    assert not torch.equal(draws[0]["a"][1], draws[1]["a"][1])  # the ranks' streams differ
    for (k, u), v in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(u, v), k
