"""The stage-1 and stage-2 method registries: one mechanism for both (``lmdlt.stage1.base``,
``lmdlt.stage2.base`` each hold one instance).

A method is one module of its stage's package, named like the method, whose class is decorated
``@register("name")``. ``get(name)`` imports only that module, so that a job pays for its own
method's imports; a method registered in a module of another name is still found, by importing
every module. ``available()`` imports every module, so a new method file is found with no extra
step.

A method's ``params`` (JSON-schema ``properties``) give every param, beside its ``default``, a
``description`` and a ``source``: where the default comes from (``SOURCE_KINDS``,
``with_sources``), checked by tests/test_method_defaults.py and printed by
``lmdlt validate-config --explain``.

This module imports nothing of ``lmdlt`` (and no torch): the stage packages import it to
register their methods, and ``lmdlt.catalog`` reads the registries through ``loaded(stage)``.
Who imports what, and when: docs/imports.md.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

# the registry of each stage whose package is imported (one instance per stage)
_LOADED: dict[str, "MethodRegistry"] = {}


class MethodRegistry:
    def __init__(self, stage: str, package: str, directory: Path, not_methods: set[str]) -> None:
        self.stage = stage                 # "stage1" / "stage2" (the catalog's key)
        self.package = package             # e.g. "lmdlt.stage2"
        self.directory = Path(directory)
        self.not_methods = set(not_methods)  # modules of the package that define no method
        self.classes: dict[str, type] = {}
        _LOADED[stage] = self

    @property
    def label(self) -> str:
        return f"stage-{self.stage[-1]}"

    def register(self, name: str):
        def deco(cls):
            if name in self.classes:
                raise ValueError(f"{self.label} method {name!r} registered twice")
            cls.name = name
            self.classes[name] = cls
            return cls

        return deco

    def import_all(self) -> None:
        """Import every method module of the package (each registers its method)."""
        for mod in pkgutil.iter_modules([str(self.directory)]):
            if mod.name not in self.not_methods:
                importlib.import_module(f"{self.package}.{mod.name}")

    def available(self) -> list[str]:
        self.import_all()
        return sorted(self.classes)

    def get(self, name: str) -> type:
        if name not in self.classes:
            own = self.directory / f"{name}.py"
            if name.isidentifier() and name not in self.not_methods and own.is_file():
                importlib.import_module(f"{self.package}.{name}")
        if name not in self.classes:  # registered in a module of another name, or unknown
            self.import_all()
        if name not in self.classes:
            raise ValueError(f"unknown {self.label} method {name!r} (known: {', '.join(self.available())})")
        return self.classes[name]


#: how a param's ``source`` begins: where its default comes from
SOURCE_KINDS = ("paper", "reference", "option", "departure")


def with_sources(params: dict, **sources: str) -> dict:
    """A copy of ``params`` (a method's JSON-schema ``properties``) with the ``source`` of each
    named param set: where its default comes from, ``paper: <equation, table, section>``,
    ``reference: <repository@commit file:line>``, ``option: <why>`` (a switch of ours) or
    ``departure: <ours> (reference: <value>)``. For blocks shared by several methods
    (``LINEAR_PARAMS``, ``TAU_GRID_PARAMS``) whose values have a different origin in each.
    JSON-schema validation ignores the key; ``lmdlt validate-config --explain`` prints it."""
    unknown = sorted(set(sources) - set(params))
    if unknown:
        raise KeyError(f"with_sources: no param {', '.join(unknown)} (params: {', '.join(params)})")
    return {k: ({**v, "source": sources[k]} if k in sources else v) for k, v in params.items()}


def loaded(stage: str) -> MethodRegistry | None:
    """The registry of ``stage`` ("stage1", "stage2") when its stage package is imported in this
    process (its ``classes`` are the methods registered so far), else None."""
    return _LOADED.get(stage)
