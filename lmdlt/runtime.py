"""Device, threads and seeding, shared by every torch stage."""
from __future__ import annotations

import contextlib
import os
import random
import sys

import numpy as np
import torch


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when visible, else CPU. An explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import SetupError

        raise SetupError(f"device {name!r} requested but CUDA is not available on this machine")
    return dev


def deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without the import of
    ``torch._inductor.config`` it starts with, which pulls in ``torch._dynamo`` (about 2 s CPU per
    job, docs/benchmarks.md section 7; torch 2.14 sets inductor's flag, then calls
    ``torch._C._set_deterministic_algorithms``). lmdlt never compiles, so the eager switch is the
    whole effect; an inductor already imported gets its flag too. A torch without the private
    switch gets the public call."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    setter(True, warn_only=True)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = True


#: cuBLAS's deterministic workspace setting (CUDA docs, "Results reproducibility"): without it,
#: cuBLAS may pick split-K reductions whose order varies between runs, and torch's deterministic
#: mode warns on every such matmul. Read when the first cuBLAS handle is created, i.e. it must
#: be in the environment before the job's first CUDA matmul: setup_torch, the first call of
#: every torch job, sets it unless the user set another value.
CUBLAS_WORKSPACE = ":4096:8"


def setup_torch(seed: int, threads: int | None = None) -> torch.Generator:
    """Seed every RNG, make kernels deterministic; return a seeded generator for samplers.

    Deterministic mode over cuDNN's benchmark mode, on purpose: a resumed run must end with
    the weights of the uninterrupted one and a re-run of a config must reproduce its numbers,
    on CUDA as on the CPU. So ``torch.use_deterministic_algorithms`` (warn-only: an operation
    without a deterministic CUDA kernel warns instead of stopping the run),
    ``cudnn.deterministic = True``, ``cudnn.benchmark = False`` (benchmark mode times several
    convolution algorithms per shape and keeps the fastest, whose choice can differ between
    runs) and ``CUBLAS_WORKSPACE_CONFIG`` (``CUBLAS_WORKSPACE``). The price on CUDA is the
    speed of cuDNN's heuristic choice against its timed one; ``benchmarks/gpu_check.py``
    measures both so that the choice can be revisited on a GPU."""
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    deterministic_algorithms()
    # deterministic mode also NaN-fills every new uninitialised tensor: 5% of a stage-1 step
    # (docs/benchmarks.md, "loop overhead"); our kernels write what they allocate before reading
    torch.utils.deterministic.fill_uninitialized_memory = False
    g = torch.Generator()
    g.manual_seed(seed)
    return g


PRECISIONS = ("auto", "fp32", "bf16")


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes in bf16 natively: compute capability 8.0 or more (Ampere,
    Hopper...), or ROCm. Older cards (V100, T4) only emulate it, slower than fp32."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``auto``: bf16 autocast on a CUDA device with native bf16 (``cuda_has_native_bf16``),
    fp32 elsewhere (the CPU, pre-Ampere GPUs: fp16 there would need loss scaling, a path of its
    own, so they train in fp32); ``fp32``/``bf16`` force it, and ``bf16`` on a CUDA device
    without native bf16 is an error."""
    if precision not in PRECISIONS:
        raise ValueError(f"compute.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    native = device.type == "cuda" and cuda_has_native_bf16(device)
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and device.type == "cuda" and not native:
        major, minor = torch.cuda.get_device_capability(device)
        raise ValueError(f"compute.precision: bf16 on {device}, compute capability {major}.{minor}, "
                         "which has no native bf16 (8.0 or more needed): use fp32 or auto")
    return precision


@contextlib.contextmanager
def full_precision(device_type: str):
    """Autocast off inside the block, for computations whose inputs the caller casts to fp32:
    Gram matrices and quadratic forms whose small differences bf16 rounding would swamp (CUDA's
    and the CPU's autocast both run matmul and einsum in bf16)."""
    if device_type in ("cuda", "cpu"):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward-pass context for a resolved precision (no-op for fp32). Loss terms and
    optimiser state stay fp32: autocast only lowers matmuls and convolutions."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(device: torch.device, setting: str = "auto") -> bool:
    """Channels-last memory format: on by default on CUDA (tensor cores), off on CPU."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"compute.channels_last: {setting!r} is not one of auto, on, off")
    return device.type == "cuda" if setting == "auto" else setting == "on"


def loader_options(device: torch.device | str, threads: int | None, in_memory: bool) -> dict:
    """DataLoader keyword arguments chosen from the job's device, CPU threads and data path.

    - ``num_workers``: 0 on the CPU when the images are already decoded in memory (the
      per-sample work is a crop/flip of a small uint8 tensor; worker processes would only take
      cores from the model's own threads and add a copy of every batch between processes:
      measured 0.73x the images/s of no worker, benchmarks/image_cache_throughput.py); images
      decoded on the fly on the CPU: the job's threads less one for the main process (0 for a
      one-thread job: a worker only pays on a core of its own); CUDA, whose kernels run
      asynchronously while the next batch is prepared: the threads less one, at least 1, at
      most 32 (a worker augments about 1,800 weak or 160 RRL two-view images per second at
      224 px, docs/devices.md: every core the job has may be needed).
    - ``persistent_workers``: on whenever there are workers: they are started once per loader,
      not once per epoch (and per ICC E-step). Resuming stays exact: the training loader's
      augmentation draws from per-sample seeds (``lmdlt.data.augment.SeededDraws``), not from
      the workers' own random state, so neither their number nor their persistence changes
      what an image gets.
    - ``pin_memory``: only on CUDA (page-locked host memory for asynchronous copies; useless
      and a cost on the CPU).

    Only the arguments decide (never ``os.cpu_count()``): ``threads`` is what the job was given.
    """
    dev = torch.device(device)
    threads = max(1, int(threads or 1))
    if dev.type == "cuda":
        workers = min(32, max(1, threads - 1))
    elif in_memory:
        workers = 0
    else:
        workers = min(8, threads - 1)
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": dev.type == "cuda"}
