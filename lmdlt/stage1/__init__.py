"""Stage-1 methods (representation learning) behind a registry.

A method is one module here defining a ``Stage1Method`` subclass decorated with
``@register("name")``: it declares its ``params`` schema and computes its loss terms; the
shared training loop (``lmdlt.stage1.trainer``) does everything else.

Importing the package imports no method: ``get_method(name)`` imports the one module defining
``name`` (the module named like the method, else the one ``lmdlt.catalog`` records, else all),
so a job imports only its own method's dependencies; ``available_methods()`` imports them all,
so a new method file is found with no extra step. The workflow's parse reads names and schemas
from ``lmdlt.catalog`` and imports none of them (no torch).
"""
from __future__ import annotations

from .base import Stage1Method, available_methods, get_method, import_all, register

__all__ = ["Stage1Method", "available_methods", "get_method", "import_all", "register"]
