"""Each method param's meaning and where its default comes from, as text.

Every param of a method's ``params`` (its JSON-schema properties) carries a ``default``, a
``description`` and a ``source`` (``lmdlt.method_registry.SOURCE_KINDS``). This module prints
them: ``lmdlt validate-config --explain`` (every method, or with a config every variant's
method with the values that config gives), and the generated page docs/method-params.md
(``python -m lmdlt.method_params > docs/method-params.md``; tests/test_method_defaults.py fails
when the page is stale). ``explain`` reads the method catalog, so it imports no
torch when the catalog is cached (``lmdlt.catalog``); the page is generated from the registries
themselves, in the order each method declares its params.
"""
from __future__ import annotations

import json
from typing import Any

STAGES = ("stage1", "stage2")
_TITLE = {"stage1": "Stage 1", "stage2": "Stage 2"}


def _value(v: Any) -> str:
    return json.dumps(v)  # null, true, [0.1, 1.0]: as a config file would spell them


def _methods(stage: str):
    """(name, class) of every registered method, in the registries' own order of params (the
    catalog's cached copy has its keys sorted)."""
    import importlib

    base = importlib.import_module(f"lmdlt.{stage}.base")
    return [(name, base.get_method(name)) for name in base.available_methods()]


def _param_lines(params: dict, values: dict | None) -> list[str]:
    out = []
    for key, spec in sorted(params.items()):  # sorted: the catalog's cache sorts them anyway
        default = spec.get("default")
        if values is None:
            head = f"  {key}: {_value(default)}"
        else:
            value = values.get(key, default)
            head = f"  {key}: {_value(value)}" + ("" if value == default else f"  (default {_value(default)})")
        out += [head, f"      {spec.get('description', '')}", f"      source: {spec.get('source', '(none)')}"]
    return out


def explain(config: dict | None = None) -> list[str]:
    """Lines naming every param with its value, default, description and source: of every
    registered method (``config`` None), or of the method of each stage-1 / stage-2 variant of a
    validated ``config`` (its params filled), with the default beside a value that differs."""
    from .catalog import current

    cat = current()
    lines: list[str] = []
    if config is None:
        for stage in STAGES:
            for name in cat.available_methods(stage):
                lines.append(f"{stage} method {name}")
                lines += _param_lines(cat.get_method(stage, name).params, None)
        return lines
    for stage in STAGES:
        for variant, v in (config.get(stage) or {}).items():
            method = cat.get_method(stage, v["method"])
            lines.append(f"{stage}.{variant} (method {v['method']})")
            lines += _param_lines(method.params, v.get("params") or {})
    return lines


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The page docs/method-params.md: one table per method, a row per param."""
    out = ["# Method parameters: defaults and their sources", "",
           "Generated from each method's `params` (`python -m lmdlt.method_params > "
           "docs/method-params.md`; a test fails when this page is stale). Source kinds: "
           "**paper** (equation, table or section), **reference** (the reference code, "
           "`repository@commit file:line`), **option** (a switch of ours, no paper value), "
           "**departure** (our value, then the reference's or the paper's). "
           "`lmdlt validate-config --explain [CONFIG]` prints the same, with a config's values.", ""]
    for stage in STAGES:
        out += [f"## {_TITLE[stage]}", ""]
        for name, method in _methods(stage):
            out += [f"### `{name}` ({_TITLE[stage].lower()})", "",
                    "| param | default | source | meaning |", "|---|---|---|---|"]
            for key, spec in method.params.items():
                out.append(f"| `{key}` | `{_cell(_value(spec.get('default')))}` | "
                           f"{_cell(spec.get('source', ''))} | {_cell(spec.get('description', ''))} |")
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
