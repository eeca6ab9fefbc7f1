"""Device, threads and seeding, shared by every torch stage."""
from __future__ import annotations

import random

import numpy as np
import torch


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when visible, else CPU. An explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return dev


def setup_torch(seed: int, threads: int | None = None) -> torch.Generator:
    """Seed every RNG, make CPU kernels deterministic; return a seeded generator for samplers."""
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    g = torch.Generator()
    g.manual_seed(seed)
    return g
