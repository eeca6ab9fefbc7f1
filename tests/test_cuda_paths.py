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
