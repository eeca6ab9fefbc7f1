"""Stage-2 methods (classifier calibration on cached features) behind a registry.

A method is one module here defining a ``Stage2Method`` subclass decorated with
``@register("name")``. It is fitted on the training and validation features only (the runner
never hands it the test split) and then maps features to logits.

Importing the package imports no method: ``get_method(name)`` imports the one module defining
``name`` (the module named like the method, else the one ``lmdlt.catalog`` records, else all),
so a job imports only its own method's dependencies; ``available_methods()`` imports them all,
so a new method file is found with no extra step. The workflow's parse reads names and schemas
from ``lmdlt.catalog`` and imports none of them (no torch).
"""
from __future__ import annotations

from .base import Stage2Method, available_methods, get_method, import_all, register

__all__ = ["Stage2Method", "available_methods", "get_method", "import_all", "register"]
