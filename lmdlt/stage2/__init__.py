"""Stage-2 methods (classifier calibration on cached features) behind a registry.

A method is one module here defining a ``Stage2Method`` subclass decorated with
``@register("name")``. It is fitted on the training and validation features only (the runner
never hands it the test split) and then maps features to logits.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Stage2Method, available_methods, get_method, register

_SKIP = {"base", "guards", "linear", "runner"}


def _import_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in _SKIP:
            importlib.import_module(f"{__name__}.{mod.name}")


_import_all()

__all__ = ["Stage2Method", "available_methods", "get_method", "register"]
