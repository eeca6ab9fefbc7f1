"""The stage-1 method interface and registry."""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..data.transforms import train_transform
from ..method_registry import MethodRegistry

# modules of this package that define no method (imported by the methods needing them)
_METHODS = MethodRegistry("stage1", __name__.rpartition(".")[0], Path(__file__).parent,
                          {"base", "trainer"})


class SharpnessStep:
    """A SAM-style two-pass step (Foret et al., ICLR 2021), run by the trainer for a method whose
    ``sharpness_step()`` returns one. With g = the gradient at w (the first pass, the method's
    ``loss``), the trainer adds e(w) = ``perturbation(params, grads)`` to ``params(net, extra)``,
    runs ``loss`` again on the same batch at w + e, copies w back (exactly, not w + e - e) and
    steps the optimiser with ``(1 - first_pass_weight) * g(w + e) + first_pass_weight * g(w)``
    (0, the default, is plain SAM). BatchNorm running statistics are those of the first pass
    (the second pass's updates are undone). Under DDP both passes run on every rank, the first
    pass's gradients are already averaged, so every rank computes the same e.

    A variant (CC-SAM, ImbSAM, ASAM...) overrides ``perturbation`` (its radius rule) and/or
    ``params`` (which weights are perturbed); the default is plain SAM over every trainable
    parameter: e = rho * g / ||g||, one norm over all of them."""

    def __init__(self, rho: float, first_pass_weight: float = 0.0) -> None:
        if not 0.0 <= first_pass_weight <= 1.0:
            raise ValueError(f"first_pass_weight must lie in [0, 1], got {first_pass_weight}")
        self.rho = rho
        self.first_pass_weight = first_pass_weight

    def params(self, net: nn.Module, extra: nn.Module) -> list[nn.Parameter]:
        """The weights to perturb (default: every trainable parameter of net and extra)."""
        return [q for q in list(net.parameters()) + list(extra.parameters()) if q.requires_grad]

    @torch.no_grad()
    def perturbation(self, params: list[nn.Parameter],
                     grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """e(w) for each of ``params`` (None: not perturbed) from their first-pass gradients."""
        present = [g for g in grads if g is not None]
        if not present:
            return [None] * len(params)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in present]))
        scale = self.rho / (norm + 1e-12)
        return [None if g is None else (g.float() * scale).to(g.dtype) for g in grads]


class Stage1Method(abc.ABC):
    """Computes named loss terms for one batch; the trainer sums them and steps the optimiser.

    Subclasses set ``params`` (a JSON-schema ``properties`` mapping with defaults) and
    implement ``loss``. ``modules`` returns extra trainable modules (projection heads,
    centroids...) and ``after_step`` updates state that is not trained by gradients (EMA
    teachers); a method holding such state outside ``modules()`` implements ``state_dict`` /
    ``load_state_dict`` so that an interrupted run resumes exactly.
    """

    name: str = ""
    params: dict[str, Any] = {}

    def __init__(self, params: dict, class_counts: np.ndarray) -> None:
        self.p = params
        self.class_counts = np.asarray(class_counts)
        self.epochs = 1
        self.steps_per_epoch = 1

    @classmethod
    def params_schema(cls) -> dict:
        return {"type": "object", "additionalProperties": False, "properties": cls.params}

    def train_transform(self, augment: dict, size: int) -> Callable[[torch.Tensor], Any]:
        """Per-sample transform of a uint8 CHW image; may return a tuple of views
        (e.g. strong and weak), which ``loss`` then receives as a tuple of batches."""
        return train_transform(augment, size)

    def modules(self) -> nn.ModuleDict:
        return nn.ModuleDict()

    @abc.abstractmethod
    def loss(self, net: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...], y: torch.Tensor,
             epoch: int) -> dict[str, torch.Tensor]:
        """Named loss terms for a batch of uint8 images ``x`` (or of views, see
        ``train_transform``) with labels ``y``; ``epoch`` counts from 0."""

    def after_step(self, net: nn.Module) -> None:
        """Hook after each optimiser step (default: nothing to update)."""

    def sharpness_step(self) -> SharpnessStep | None:
        """A SAM-style two-pass step (``SharpnessStep``) for the trainer to run each optimiser
        step; None (default) keeps the single pass."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """State the method keeps outside ``modules()`` (EMA teachers, running statistics,
        step counters), as tensors and plain data, for resuming an interrupted run."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; called after ``on_train_start``."""
        if state:
            raise ValueError(f"stage-1 method {self.name!r} keeps no state, got {sorted(state)}")

    def on_train_start(self, net: nn.Module, epochs: int, steps_per_epoch: int) -> None:
        """Called once before the first step: the run's length (for schedules such as DRW,
        AdUni's alpha or ICCL's warm-up) and the network (for initialisation)."""
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch

    def selectable(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) may be kept by ``select: best_val``: False for the
        epochs before the method is itself (RRL's CE warm-up, a DRW method before its switch)."""
        return True

    def lr_lambda(self, total_steps: int) -> Callable[[int], float] | None:
        """The method's own learning-rate factor per optimiser step (e.g. LDAM-DRW's linear
        warm-up and step decay at the DRW epoch), overriding the variant's ``lr_schedule``;
        None (default) keeps the variant's schedule."""
        return None

    def on_epoch_end(self, net: nn.Module, train_images, device) -> None:
        """Hook after an epoch's last step, before validation (default: nothing); receives the
        training images (uint8 NHWC, un-augmented)."""

    def train_sampler(self) -> dict | None:
        """The sampler this method is defined by, as ``{"name": ..., **options}`` (e.g. RS:
        class-balanced); None leaves the variant's ``sampler`` in force."""
        return None

    def paired_sampler(self) -> dict | None:
        """A second, differently sampled batch per step (e.g. ICCL's class-aware batch), as
        ``{"name": ..., **options}``; when set, ``loss`` receives it as the keyword argument
        ``paired=(x2, y2)``."""
        return None

    @property
    def class_counts_tensor(self) -> torch.Tensor:
        return torch.as_tensor(self.class_counts, dtype=torch.float32)


def register(name: str):
    """Class decorator: registers a Stage1Method subclass under ``name``."""
    return _METHODS.register(name)


def import_all() -> None:
    """Import every method module of this package (each registers its method)."""
    _METHODS.import_all()


def available_methods() -> list[str]:
    return _METHODS.available()


def get_method(name: str) -> type[Stage1Method]:
    """The registered class; imports only the module defining it (``lmdlt.method_registry``)."""
    return _METHODS.get(name)
