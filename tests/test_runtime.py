"""lmdlt.runtime: the DataLoader options chosen from device, threads and data path, and
setup_torch's deterministic mode."""
import pytest
import torch

from lmdlt.runtime import loader_options


@pytest.mark.parametrize("device, threads, in_memory, workers", [
    ("cpu", 1, True, 0), ("cpu", 8, True, 0),         # decoded images in memory, CPU: none
    ("cpu", 1, False, 0), ("cpu", 4, False, 3),       # decoding on the fly: threads - 1
    ("cuda", 1, True, 1), ("cuda", 4, True, 3),       # CUDA: overlap with the GPU's work
    ("cuda", 16, True, 15), ("cuda", 64, True, 32),   # every core but the main process's, at most 32
    ("cuda", None, False, 1),                         # no threads given: 1
])
def test_loader_options(device, threads, in_memory, workers):
    opts = loader_options(device, threads, in_memory)
    # persistent workers: started once per loader (augmentation seeds are per sample, not per worker)
    assert opts == {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": device == "cuda"}


def test_loader_options_build_a_working_loader():
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.arange(10))
    for in_memory in (True, False):
        loader = DataLoader(ds, batch_size=4, **loader_options("cpu", 2, in_memory))
        assert torch.cat([b[0] for b in loader]).sort().values.tolist() == list(range(10))


def test_setup_torch_is_deterministic_without_the_nan_fill():
    import torch.utils.deterministic as det

    from lmdlt.runtime import setup_torch

    before = (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory)
    try:
        setup_torch(0, 1)
        assert torch.are_deterministic_algorithms_enabled()
        assert det.fill_uninitialized_memory is False  # the 5% of docs/benchmarks.md, section 3
    finally:
        torch.use_deterministic_algorithms(before[0])
        det.fill_uninitialized_memory = before[1]
