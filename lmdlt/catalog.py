"""The method catalog: what the workflow's parse needs from the torch-backed registries, without torch.

Validating a config and laying out the workflow needs, from the registries, only names and plain
data: each stage-1 and stage-2 method's ``params`` (its JSON-schema ``properties``) and
``params_schema()``, each stage-2 method's ``needs_encoder``, the encoder names
(``lmdlt.models``) and the sampler names (``lmdlt.data.samplers``). The modules declaring them
import torch (and method modules torchvision): ~2.7 s of the 5-6 s a ``snakemake -n`` of the
default config took, in every Snakemake process (each cluster job re-parses the workflow too).

The catalog holds that data, computed by importing the registries once and cached as JSON in a
user cache directory (``$LMDLT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmdlt``, else
``~/.cache/lmdlt``; never the repository), in a file named by a *source key*: the SHA-256 of
every ``*.py`` file of the installed ``lmdlt`` package (relative path and content, ~80 files,
~1.5 ms to hash), the Python version and the environment (``sys.prefix``). Any edit to any
package file, a new method file included, gives a new key, hence a rebuild the first time it is
needed: no extra step, and a stale catalog is never read (a file whose recorded key or format
differs from the current one is ignored too). The whole package is hashed, not only the method
packages, because a schema may take its values from any module (``LINEAR_PARAMS``,
``TAU_GRID_PARAMS``); the price is a rebuild after edits that could not matter. A cache that
cannot be written (read-only home) only costs the rebuild in each process. The catalog also
records each method's module (``MethodInfo.module``).

Where the live registry is already imported in this process (a job that has torch anyway), its
entries are used as they are (``lmdlt.method_registry.loaded``); the catalog only stands in for
registries not imported. The catalog depends on the registries, never the reverse: a registry
finds a method by its module's name, or by importing every module. What the parse, a job and the
job server import: docs/imports.md.

Options weighed, measured on the 2-core CPU VM (docs/benchmarks.md, "Workflow parse imports"):

* (a) this catalog: one full import (~3-4 s) per change to the package, then ~1 ms per parse
  (stat walk, JSON read); the parse went from 2.7 to 0.5-0.7 s, ``snakemake -n`` of the default
  config from ~6 to ~2 s. The method modules stay as they are: a method is one module behind a
  registry, and adding one touches that file and its test only.
* (b) method modules importing torch lazily: every module defines ``nn.Module`` subclasses and
  torch-typed code at top level, so every method (and every new one) would have to be written
  around the rule; one stray top-level ``import torch`` brings the 3 s back. Rejected.
* (c) static extraction with ``ast``: params are often not literals (``{**LINEAR_PARAMS, ...}``,
  ``dict(TAU_GRID_PARAMS)``, constants imported from other modules, class inheritance,
  ``params_schema`` overrides); an evaluator of that subset of Python would be a second,
  silently diverging definition of each schema. Rejected.

Params must be JSON data (no tuples, no inf/nan): a build that would not read back identical
fails naming the method, since they are JSON schema anyway.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import method_registry

PACKAGE_DIR = Path(__file__).resolve().parent
FORMAT = 1
_KEEP = 16  # catalog files kept in the cache directory (one per source version)
_LABEL = {"stage1": "stage-1", "stage2": "stage-2"}


@dataclass(frozen=True)
class MethodInfo:
    """What the catalog knows of a method: the class attributes the config checks read."""

    name: str
    params: dict[str, Any]
    schema: dict[str, Any] = field(repr=False)
    module: str = ""
    needs_encoder: bool = False

    def params_schema(self) -> dict:
        return self.schema


def cache_dir() -> Path:
    if os.environ.get("LMDLT_CACHE_DIR"):
        return Path(os.environ["LMDLT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmdlt"


def _content_key() -> str:
    """SHA-256 of the package's Python sources (paths and contents), the Python version and the
    environment: changes whenever any ``lmdlt`` module is edited, added or removed."""
    h = hashlib.sha256(f"{FORMAT}\0{sys.version_info[:2]}\0{sys.prefix}\0".encode())
    for root, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    data = f.read()
                rel = os.path.relpath(path, PACKAGE_DIR).replace(os.sep, "/")
                h.update(f"{rel}\0{len(data)}\0".encode())
                h.update(data)
    return h.hexdigest()


def build() -> dict:
    """Import the registries (torch) and collect the catalog's data."""
    from .data import samplers
    from .models import encoders
    from .stage1 import base as base1
    from .stage2 import base as base2

    out: dict[str, Any] = {"format": FORMAT}
    for stage, base in (("stage1", base1), ("stage2", base2)):
        methods = {}
        for name in base.available_methods():  # imports every method module
            cls = base.get_method(name)
            entry = {"module": cls.__module__, "params": cls.params, "schema": cls.params_schema()}
            if stage == "stage2":
                entry["needs_encoder"] = bool(cls.needs_encoder)
            _check_json(entry, f"{_LABEL[stage]} method {name!r}")
            methods[name] = entry
        out[stage] = methods
    out["encoders"] = encoders.available_encoders()
    out["torchvision_models"] = encoders.torchvision_names()  # model.arch may name one
    out["samplers"] = samplers.available_samplers()
    return out


def _check_json(value: Any, what: str) -> None:
    try:
        back = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: params must be JSON data (they are JSON schema): {e}") from None
    if back != value:
        raise TypeError(f"{what}: params must be JSON data (they are JSON schema): lists, not "
                        f"tuples; string keys")


def source_key() -> str:
    """The content key (``_content_key``), re-hashed only when a file's stat changes: a stat
    walk takes ~0.5 ms, the hash ~2 ms. (The in-process memo trusts mtime_ns + size + inode, as
    Python trusts mtime + size for its bytecode cache; the file on disk is named by content.)"""
    global _memo
    sig = _stat_signature()
    if _memo is None or _memo[0] != sig:
        _memo = (sig, _content_key())
    return _memo[1]


_memo: tuple[int, str] | None = None


def _stat_signature() -> int:
    out = []
    for root, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                st = os.stat(os.path.join(root, name))
                out.append((root, name, st.st_mtime_ns, st.st_size, st.st_ino))
    return hash(tuple(sorted(out)))


def current() -> "Catalog":
    """The catalog for the package's current sources (cached on disk and in the process)."""
    return _load(source_key(), str(cache_dir()))


@functools.lru_cache(maxsize=4)
def _load(key: str, directory: str) -> "Catalog":
    path = Path(directory) / f"catalog-{key[:32]}.json"
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("format") == FORMAT and data.get("key") == key:
            return Catalog(data)
    except (OSError, ValueError):
        pass
    data = {**build(), "key": key}
    _store(path, data)
    return Catalog(data)


def _store(path: Path, data: dict) -> None:
    """Write atomically (concurrent parses may race: each rename is whole); prune old versions."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".catalog-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        old = sorted(path.parent.glob("catalog-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for p in old[_KEEP:]:
            p.unlink(missing_ok=True)
    except OSError:
        pass  # an unwritable cache costs a rebuild per process, never a wrong answer


def _live(stage: str) -> dict:
    """The methods the stage's registry holds in this process ({} when its package is not
    imported)."""
    registry = method_registry.loaded(stage)
    return registry.classes if registry is not None else {}


class Catalog:
    """Registry look-ups answered from the catalog's data (or the live registry, see above)."""

    def __init__(self, data: dict) -> None:
        self.data = data

    def available_methods(self, stage: str) -> list[str]:
        return sorted(self.data[stage])

    def get_method(self, stage: str, name: str):
        """The method class when its registry holds it in this process, else its
        ``MethodInfo``; ValueError (the registry's message) for an unknown name."""
        live = _live(stage)
        if name in live:
            return live[name]
        methods = self.data[stage]
        if name not in methods:
            raise ValueError(f"unknown {_LABEL[stage]} method {name!r} "
                             f"(known: {', '.join(sorted(methods))})")
        e = methods[name]
        return MethodInfo(name=name, params=e["params"], schema=e["schema"], module=e["module"],
                          needs_encoder=e.get("needs_encoder", False))

    def available_encoders(self) -> list[str]:
        mod = sys.modules.get("lmdlt.models.encoders")
        return mod.available_encoders() if mod else list(self.data["encoders"])

    def arch_problem(self, arch: str) -> str | None:
        """Why ``arch`` names no encoder (None when it does: lmdlt's own, a torchvision
        classification model, or ``timm:<name>``, whose name timm checks when the job builds
        it: importing timm costs seconds)."""
        mod = sys.modules.get("lmdlt.models.encoders")
        if mod is not None:
            return mod.arch_problem(arch)
        if arch in self.data["encoders"] or arch in self.data.get("torchvision_models", ()):
            return None
        if arch.startswith("timm:") and len(arch) > len("timm:"):
            return None
        return (f"unknown encoder {arch!r} (known: {', '.join(self.data['encoders'])}, a torchvision "
                "classification model such as resnet50, or timm:<name>)")

    def available_samplers(self) -> list[str]:
        mod = sys.modules.get("lmdlt.data.samplers")
        return mod.available_samplers() if mod else list(self.data["samplers"])


def get_method(stage: str, name: str):
    """``current().get_method(stage, name)``."""
    return current().get_method(stage, name)
