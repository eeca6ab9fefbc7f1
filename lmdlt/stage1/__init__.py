"""Stage-1 methods (representation learning) behind a registry.

A method is one module here defining a ``Stage1Method`` subclass decorated with
``@register("name")``: it declares its ``params`` schema and computes its loss terms; the
shared training loop (``lmdlt.stage1.trainer``) does everything else.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Stage1Method, available_methods, get_method, register

_SKIP = {"base", "trainer"}


def _import_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in _SKIP:
            importlib.import_module(f"{__name__}.{mod.name}")


_import_all()

__all__ = ["Stage1Method", "available_methods", "get_method", "register"]
