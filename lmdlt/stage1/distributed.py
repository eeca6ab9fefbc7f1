"""Multi-process stage 1 under ``torchrun``: DistributedDataParallel + synchronised BatchNorm.

The paper trained stage 1 on 4 GPUs with DDP and SyncBN. ``torchrun --standalone
--nproc_per_node N -m lmdlt.cli train-stage1 ...`` starts N copies of the ordinary command;
:func:`setup` recognises the launch from torchrun's WORLD_SIZE / RANK / LOCAL_RANK variables.
A run of N processes is meant to be the single-process run with the same global batch:

- every rank builds the same sampler from the same seed, draws the same global index sequence
  and keeps every N-th index from its rank on (:class:`ShardedSampler`), so each global batch of
  B indices is split into N per-rank batches of B / N and the union over ranks is the
  single-process draw;
- BatchNorm layers normalise with the statistics of the whole global batch (SyncBN);
- gradients are averaged over ranks by DDP, which wraps the network *and* the method's extra
  trainable modules (projection heads...) behind one forward that computes the method's loss
  (:class:`_MethodStep`): methods call ``net.features``, ``net.classifier`` and their heads
  directly, several times per step, and DDP only synchronises what runs inside its forward.
  EMA teachers (``after_step``) then follow weights that are identical on every rank.

Only rank 0 validates, logs and writes files. Per-sample losses (CE and its re-weightings) are
then the single-process ones up to float rounding. RRL's Gram terms gather the features of every
rank (``gather_batch``, differentiable) and divide by the global batch, as the reference does
(peterlipan/LMD ``utils/loss.py``, ``GatherLayer``), so they equal the single-process terms;
Seesaw's class counts are summed over ranks (``all_reduce_sum``); the contrastive losses
(SupCon, AdUni, ICCL) see the per-rank batch of B / N, as the usual DDP implementations of
those methods. Other random draws (noise, mixing weights) come from per-rank streams
(``wrap``), whose states every rank saves in the resume file and restores as its own
(``rng_states`` / ``restore_rng``).

``find_unused_parameters`` is decided per method (``find_unused_parameters``): DDP then
traverses the autograd graph after every forward only for methods that leave parameters
without a gradient (the cosine classifiers' bias, SupCon's classifier without its probe).
"""
from __future__ import annotations

import functools
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from ..errors import SetupError
from ..resume import set_rng_state
from ..runtime import select_device

log = logging.getLogger("lmdlt.stage1")

PROCESSES_KEY = "compute.stage1_processes"


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the run; the defaults are a single-process run."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch_size(self, batch_size: int) -> int:
        """Per-rank batch for a global ``batch_size``."""
        if batch_size % self.world_size:
            raise ValueError(f"stage1.batch_size ({batch_size}) must be divisible by the number of "
                             f"processes ({PROCESSES_KEY} = {self.world_size})")
        return batch_size // self.world_size

    def shard(self, sampler: Sampler) -> Sampler:
        return ShardedSampler(sampler, self.rank, self.world_size) if self.active else sampler

    def prepare(self, module: nn.Module, device: torch.device) -> nn.Module:
        """BatchNorm -> synchronised BatchNorm (in place below the root; returns the root)."""
        if not self.active:
            return module
        return sync_batchnorm(module, device.type)

    def wrap(self, method, net: nn.Module, extra: nn.Module, seed: int):
        """``step(x, y, epoch, **kw) -> terms``: the method's loss, through DDP when distributed."""
        if not self.active:
            return lambda x, y, epoch, **kw: method.loss(net, x, y, epoch, **kw)
        dev = next(net.parameters()).device
        ddp = nn.parallel.DistributedDataParallel(
            _MethodStep(method, net, extra), device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters(method))
        # the network came from the same seed on every rank and DDP broadcast rank 0's weights;
        # from here on random augmentation must differ between ranks, or rank r's i-th image
        # would get the same crop as rank 0's i-th image (sampler generators are not touched)
        _seed_everything(seed + 7919 * self.rank)
        return ddp

    def reduce_epoch(self, sums: dict[str, float], seen: int, step_losses: list) -> tuple:
        """Loss sums, sample count and per-step losses over all ranks: the per-step loss is the
        mean of the ranks' per-batch means (equal per-rank batches, i.e. the global-batch mean).
        One collective per epoch, so training steps are not slowed down."""
        # one device-to-host copy for the epoch's per-step losses (tensors)
        steps = (torch.stack([torch.as_tensor(v) for v in step_losses]).detach().to("cpu", torch.float64)
                 if len(step_losses) else torch.zeros(0, dtype=torch.float64))
        if not self.active:
            return sums, seen, steps.tolist()
        names = sorted(sums)
        t = torch.cat([torch.tensor([sums[n] for n in names] + [float(seen)], dtype=torch.float64),
                       steps])
        dev = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else "cpu"
        t = t.to(dev)
        dist.all_reduce(t)
        t = t.cpu()
        k = len(names)
        return ({n: float(t[i]) for i, n in enumerate(names)}, int(round(float(t[k]))),
                (t[k + 1:] / self.world_size).tolist())

    def rng_states(self, state: dict) -> list[dict]:
        """Every rank's random state (``resume.rng_state``), in rank order; a collective under
        torchrun (all ranks call it), so that rank 0 can save each rank's own stream."""
        if not self.active:
            return [state]
        states: list = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def restore_rng(self, resumed: dict, generators, seed: int) -> None:
        """Restore this rank's random state from a resume state holding ``rng`` (rank 0's)
        and ``rng_ranks`` (every rank's). A file written with another number of processes has
        no state for this rank: rank 0's is restored (the sampler generators, the same on every
        rank, are exact) and ranks above 0 re-derive their streams from (seed, rank, epoch),
        with a warning that the run no longer equals an uninterrupted one."""
        states = resumed.get("rng_ranks") or [resumed["rng"]]
        if len(states) == self.world_size:
            set_rng_state(states[self.rank], *generators)
            return
        set_rng_state(states[0], *generators)
        if self.rank:
            log.warning("resume state written by %d process(es), this run has %d: rank %d draws "
                        "from a re-derived stream (the resumed run differs from an uninterrupted "
                        "one)", len(states), self.world_size, self.rank)
            _seed_everything(seed + 7919 * self.rank + 104729 * int(resumed.get("epoch", 0)))

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


SINGLE_PROCESS = Distributed()


def from_env(env=os.environ) -> Distributed:
    """The torchrun launch this process belongs to (WORLD_SIZE > 1), or a single process."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    try:
        rank, local_rank = int(env["RANK"]), int(env["LOCAL_RANK"])
    except KeyError as e:
        raise SetupError(f"WORLD_SIZE={world} but {e.args[0]} is not set: start multi-process "
                         "stage 1 with torchrun") from None
    return Distributed(world, rank, local_rank)


def setup(device: str = "auto", env=os.environ) -> tuple[Distributed, torch.device]:
    """Join the torchrun process group if there is one: NCCL with cuda:LOCAL_RANK when the
    device is CUDA, gloo on CPU. ``device`` names the kind (auto/cpu/cuda); under torchrun the
    CUDA index is always the local rank."""
    ctx = from_env(env)
    dev = select_device(device)
    if not ctx.active:
        return ctx, dev
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if ctx.local_rank >= n:
            raise SetupError(f"{ctx.world_size} processes on this node but {n} visible CUDA device(s): "
                             f"request one GPU per process ({PROCESSES_KEY})")
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
        dist.init_process_group(backend, device_id=dev)
    else:
        backend = "gloo"
        dist.init_process_group(backend)
    if dist.get_world_size() != ctx.world_size or dist.get_rank() != ctx.rank:
        raise RuntimeError("process group and WORLD_SIZE/RANK disagree")
    return Distributed(ctx.world_size, ctx.rank, ctx.local_rank, backend), dev


def find_unused_parameters(method) -> bool:
    """Whether DDP must look for parameters a step leaves without a gradient: a method says so
    with ``ddp_unused_parameters`` (a bool attribute or property, default False). Without it DDP
    would wait for those gradients for ever; with it, every forward pays a graph traversal, so
    only methods that need it set it (tests/test_cuda_paths.py checks each method's claim
    against the gradients a step really produces)."""
    return bool(getattr(method, "ddp_unused_parameters", False))


def world_size() -> int:
    """Processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over every rank (``t`` itself when not distributed); a new tensor, on
    ``t``'s device."""
    if world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


class _GatherBatch(torch.autograd.Function):
    """All ranks' (B, ...) tensors concatenated in rank order; backward: the sum over ranks of
    the gradient of the gathered tensor, this rank's rows. Every rank computes the same loss
    on the gathered batch, so the summed gradient is world_size x this rank's share, and DDP's
    average over ranks then gives the single-process gradient of that loss."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """Every rank's batch of ``x`` concatenated (rank order; equal per-rank batches, which
    ``ShardedSampler`` guarantees for training); gradients flow back to each rank's rows. ``x``
    itself when not distributed."""
    if world_size() == 1:
        return x
    return _GatherBatch.apply(x)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _MethodStep(nn.Module):
    """The network and the method's extra modules under one module whose forward is the
    method's loss, so that DDP sees (and synchronises the gradients of) everything a step runs."""

    def __init__(self, method, net: nn.Module, extra: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.extra = extra
        self.method = method  # not a module: kept out of DDP's parameters and buffers

    def forward(self, x, y, epoch: int, **kw):
        return self.method.loss(self.net, x, y, epoch, **kw)


class ShardedSampler(Sampler[int]):
    """Rank ``rank``'s share of ``sampler``'s draw: positions rank, rank + N, rank + 2N, ...

    Every rank holds an identically seeded copy of the sampler, so all draw the same global
    sequence; with per-rank batches of B / N, per-rank batch j holds exactly the indices of the
    single-process batch j. The last ``len % N`` draws are dropped so that every rank takes the
    same number of steps (a rank with one step more would wait for the others for ever); a
    training loader that drops its last partial global batch drops those already.
    """

    def __init__(self, sampler: Sampler, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.sampler = sampler
        self.rank = rank
        self.world_size = world_size

    @property
    def generator(self):  # the resume state saves and restores the sampler's generator
        return getattr(self.sampler, "generator", None)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        idx = list(self.sampler)
        usable = len(idx) // self.world_size * self.world_size
        return iter(idx[self.rank:usable:self.world_size])

    def __len__(self) -> int:
        return len(self.sampler) // self.world_size


def sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Every BatchNorm below ``module`` synchronised: ``CPUSyncBatchNorm`` on the CPU (torch's
    SyncBatchNorm refuses CPU tensors), torch's ``SyncBatchNorm`` on CUDA, or timm's converter
    where timm's fused BatchNorm + activation layers are (torch's would keep the norm and drop
    the activation: timm models' BatchNormAct2d)."""
    if device_type == "cpu":
        return convert_batchnorm(module, CPUSyncBatchNorm)
    if any(_is_norm_act(m) for m in module.modules()):
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def _is_norm_act(module: nn.Module) -> bool:
    """timm's BatchNormAct2d: a BatchNorm that applies its ``drop`` and ``act`` children after
    normalising."""
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) and isinstance(getattr(module, "act", None), nn.Module)
            and isinstance(getattr(module, "drop", None), nn.Module))


class _NormAct:
    """Mixin: a (synchronised) BatchNorm followed by the ``drop`` and ``act`` of the timm layer it
    replaces (BatchNormAct2d's order)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(input)))


@functools.lru_cache(maxsize=None)
def _norm_act_class(cls: type) -> type:
    return type(f"{cls.__name__}Act", (_NormAct, cls), {})


def convert_batchnorm(module: nn.Module, cls: type[nn.modules.batchnorm._BatchNorm]) -> nn.Module:
    """Every BatchNorm below ``module`` (and ``module`` itself) replaced by ``cls``, sharing the
    parameters and running statistics (so optimiser state and state_dict keys are unchanged); a
    timm BatchNormAct2d keeps its dropout and activation (``_NormAct``)."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
        target = _norm_act_class(cls) if _is_norm_act(module) else cls
        out = target(module.num_features, module.eps, module.momentum, module.affine,
                     module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_batchnorm(child, cls))
    return out


class _AllReduceBatchNorm(torch.autograd.Function):
    """Batch normalisation with statistics over every rank's batch (gloo all-reduce).

    Forward: one all-reduce of per-channel (sum, sum of squares, count), in float64 so that
    E[x^2] - E[x]^2 loses nothing that a single-process BatchNorm keeps. Backward: one
    all-reduce of (sum dy, sum dy * x_hat), the two batch-coupling terms of the input gradient;
    the weight and bias gradients stay local, DDP averages them like every other parameter
    (the same split as torch's SyncBatchNorm)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        dims = [0, *range(2, x.dim())]
        x64 = x.double()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64)
        stats = torch.cat([x64.sum(dims), (x64 * x64).sum(dims), count])
        dist.all_reduce(stats, group=group)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        shape = [1, c] + [1] * (x.dim() - 2)
        invstd = (var + eps).rsqrt()
        x_hat = ((x64 - mean.view(shape)) * invstd.view(shape)).to(x.dtype)
        ctx.save_for_backward(x_hat, weight, invstd.to(x.dtype))
        ctx.n, ctx.group = n, group
        var_unbiased = var * n / (n - 1).clamp_min(1)
        ctx.mark_non_differentiable(mean, var_unbiased)
        y = x_hat
        if weight is not None:
            y = y * weight.view(shape) + bias.view(shape)
        return y, mean, var_unbiased

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x_hat, weight, invstd = ctx.saved_tensors
        dims = [0, *range(2, dy.dim())]
        c = dy.shape[1]
        shape = [1, c] + [1] * (dy.dim() - 2)
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * x_hat).sum(dims)
        both = torch.cat([sum_dy, sum_dy_xhat]).double()
        dist.all_reduce(both, group=ctx.group)
        mean_dy = (both[:c] / ctx.n).to(dy.dtype).view(shape)
        mean_dy_xhat = (both[c:] / ctx.n).to(dy.dtype).view(shape)
        scale = invstd if weight is None else invstd * weight
        dx = scale.view(shape) * (dy - mean_dy - x_hat * mean_dy_xhat)
        dw = sum_dy_xhat if weight is not None else None
        db = sum_dy if weight is not None else None
        return dx, dw, db, None, None


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Synchronised BatchNorm for CPU tensors (the gloo backend).

    torch 2.14's ``nn.SyncBatchNorm`` refuses CPU input ("SyncBatchNorm expected input tensor to
    be on GPU") and DDP refuses it in a CPU module ("SyncBatchNorm layers only work with GPU
    modules"), so multi-process CPU runs (tests, CPU clusters) use this all-reduce version with
    the same semantics: global batch statistics in training, running statistics in eval, the
    running variance unbiased over the global count. Same state_dict as ``nn.BatchNorm2d``."""

    def __init__(self, *args, process_group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        use_batch = self.training or self.running_mean is None
        if not (use_batch and dist.is_available() and dist.is_initialized()):
            return super().forward(input)  # plain BatchNorm
        y, mean, var_unbiased = _AllReduceBatchNorm.apply(
            input, self.weight, self.bias, self.eps, self.process_group or dist.group.WORLD)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            m = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
            with torch.no_grad():
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(var_unbiased.to(self.running_var.dtype), alpha=m)
        return y
