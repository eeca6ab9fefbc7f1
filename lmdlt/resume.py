"""Resume state of a training loop: written beside the final output after every epoch (or
iteration), so a job killed on a shared cluster continues from the last completed one.

The file ``<output>.resume.pt`` holds tensors and plain data only (it loads with
``torch.load(weights_only=True)``: a resume file left by someone else cannot run code) and the
identity of the run that wrote it: stage, config hash, parent hashes and seed. A file of another
run (a changed hyper-parameter, other features, another seed) or an unreadable one is ignored
with a warning and overwritten by the next save. Writes are atomic (``io.atomic_path``), so a
kill during a save leaves the previous state. The caller removes the file (``clear``) once the
final output exists.

Loops restore their own objects (``state_dict``s) from the dict they saved; the random states
(torch's global CPU and CUDA generators, Python's and NumPy's global ones, and the loop's own
``torch.Generator``s) go through ``rng_state`` / ``set_rng_state`` so that a resumed run draws
exactly what the uninterrupted one would have.

``ResumeState.load(device)`` maps the saved tensors to the loop's device except the random
states (the ``rng`` entry), which stay on the CPU whatever the device: NumPy's keys become an
array and ``torch.set_rng_state`` takes a CPU byte tensor, so random states on a GPU would make
every resume of a GPU run fail the same way.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_path, sha256_json

log = logging.getLogger("lmdlt.resume")

SUFFIX = ".resume.pt"


def resume_path(out_path: str | os.PathLike) -> Path:
    """Where the resume state of the job writing ``out_path`` lives."""
    out = Path(out_path)
    return out.with_name(out.name + SUFFIX)


def run_identity(stage: str, config: Any, parents: dict[str, str], seed: int | None) -> dict:
    """What a resume state must match to be used: the same stage config, parents and seed."""
    return {"stage": stage, "config_hash": sha256_json(config), "parents": dict(parents),
            "seed": seed}


def rng_state(*generators: torch.Generator) -> dict:
    """Every random state a training loop may draw from (plain tensors, lists and ints)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "generators": [g.get_state() for g in generators],
    }


def set_rng_state(state: dict, *generators: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.cpu().numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    if len(state["generators"]) != len(generators):
        raise ValueError(f"resume state has {len(state['generators'])} generator states, "
                         f"the loop has {len(generators)}")
    for g, s in zip(generators, state["generators"]):
        g.set_state(s.cpu())


class ResumeState:
    """The resume file of one run (``identity`` from ``run_identity``)."""

    def __init__(self, out_path: str | os.PathLike, identity: dict) -> None:
        self.path = resume_path(out_path)
        self.identity = identity
        self.key = sha256_json(identity)

    def save(self, state: dict) -> None:
        """Atomically replace the resume file with ``state`` (tensors and plain data)."""
        with atomic_path(self.path) as tmp:
            torch.save({"identity": self.identity, "key": self.key, "state": state}, tmp)

    def load(self, device: str | torch.device = "cpu") -> dict | None:
        """The saved state of this run, or None (no file, a foreign run's file, unreadable).
        Tensors are on ``device``, except those under ``rng``, which are on the CPU."""
        if not self.path.is_file():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file means: start afresh
            log.warning("ignoring resume state %s: unreadable (%s: %s); starting afresh",
                        self.path, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return None
        if not isinstance(blob, dict) or blob.get("key") != self.key:
            theirs = blob.get("identity") if isinstance(blob, dict) else None
            log.warning("ignoring resume state %s: written by another run (%s; this run %s); "
                        "starting afresh", self.path, _difference(theirs, self.identity), self.key[:12])
            return None
        state = blob["state"]
        if torch.device(device).type == "cpu" or not isinstance(state, dict):
            return state
        return {k: v if k == "rng" else _to_device(v, device) for k, v in state.items()}

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _to_device(obj: Any, device: str | torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _difference(theirs: Any, ours: dict) -> str:
    if not isinstance(theirs, dict):
        return "no identity recorded"
    diff = [f"{k} {theirs.get(k)!r} != {ours.get(k)!r}" for k in ours if theirs.get(k) != ours.get(k)]
    return "; ".join(diff) or "identity differs"
