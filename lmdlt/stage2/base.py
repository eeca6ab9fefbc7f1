"""The stage-2 method interface and registry."""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..method_registry import MethodRegistry
from ..resume import ResumeState
from ..tracking import NO_TRACKING, Tracker

# modules of this package that define no method (imported by the methods needing them)
_METHODS = MethodRegistry("stage2", __name__.rpartition(".")[0], Path(__file__).parent,
                          {"base", "guards", "linear", "runner"})


class Stage2Method(abc.ABC):
    """Fitted on cached features; maps features to logits.

    ``fit`` receives the training split, the validation split (for model selection) and the
    stage-1 classifier (weight, bias); it never receives the test split.

    A method that also fine-tunes the encoder (LMD's ICC) sets ``needs_encoder = True`` and
    implements ``fit_encoder`` instead: it then gets the stage-1 network and the training and
    validation images (``lmdlt train-stage2-encoder``, Snakemake rule ``train_stage2_encoder``),
    and leaves the fine-tuned network in ``self.net``; predictions are re-extracted with it.
    """

    name: str = ""
    params: dict[str, Any] = {}
    needs_encoder: bool = False
    #: set by the runner before fitting: loops that take real time save and resume through it
    resume: ResumeState | None = None
    #: set by the runner: loops with curves (ICC's iterations) log each point through it
    tracker: Tracker = NO_TRACKING

    def __init__(self, params: dict, num_classes: int) -> None:
        self.p = params
        self.num_classes = num_classes

    @classmethod
    def params_schema(cls) -> dict:
        return {"type": "object", "additionalProperties": False, "properties": cls.params}

    @abc.abstractmethod
    def fit(self, train: dict, val: dict, stage1_classifier: dict, generator: torch.Generator) -> None:
        """Learn from ``train`` (features, labels, logits) and ``val``."""

    def fit_encoder(self, net: torch.nn.Module, images: dict, generator: torch.Generator,
                    device) -> None:
        """Methods with ``needs_encoder``: learn from the network and ``images``
        ({"train": (uint8 NHWC, labels), "val": ...}); set ``self.net``."""
        raise TypeError(f"stage-2 method {self.name!r} works on cached features only")

    @abc.abstractmethod
    def logits(self, features: np.ndarray) -> np.ndarray:
        """Class scores (N, K) for features (N, C)."""

    def state(self) -> dict[str, np.ndarray]:
        """Arrays saved beside the predictions (the fitted classifier)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Plain values worth recording in the provenance (e.g. a selected hyper-parameter)."""
        return {}


def register(name: str):
    """Class decorator: registers a Stage2Method subclass under ``name``."""
    return _METHODS.register(name)


def import_all() -> None:
    """Import every method module of this package (each registers its method)."""
    _METHODS.import_all()


def available_methods() -> list[str]:
    return _METHODS.available()


def get_method(name: str) -> type[Stage2Method]:
    """The registered class; imports only the module defining it (``lmdlt.method_registry``)."""
    return _METHODS.get(name)


# A tau swept on the validation split (tau-norm, post-hoc logit adjustment): the grid's params
# (each method gives their sources, ``method_registry.with_sources``)
TAU_GRID_PARAMS = {
    "tau_min": {"type": "number", "minimum": 0, "default": 0.0,
                "description": "smallest tau of the grid"},
    "tau_max": {"type": "number", "minimum": 0, "default": 2.0,
                "description": "largest tau of the grid (included when on it)"},
    "tau_step": {"type": "number", "exclusiveMinimum": 0, "default": 0.1,
                 "description": "step of the grid"},
}


def tau_grid(p: dict, method: str):
    """tau_min, tau_min + tau_step, ..., up to tau_max (included when on the grid)."""
    lo, hi, step = p["tau_min"], p["tau_max"], p["tau_step"]
    if hi < lo:
        raise ValueError(f"{method}: tau_max {hi} < tau_min {lo}")
    return np.round(lo + step * np.arange(int(np.floor((hi - lo) / step + 1e-9)) + 1), 10)
