"""Config validation: JSON-schema with defaults filled, plus the checks a schema cannot express.

The schema lives in ``workflow/schemas/config.schema.yaml``. Method-specific parameters
(``stage1.<variant>.params``, ``stage2.<variant>.params``) are validated against the schema
each registered method declares, so adding a method never touches the main schema.
Every error names the offending key, e.g. ``stage1.ce.epochs: 'ten' is not of type 'integer'``.

Grid sweeps: a variant carrying ``grid:`` (``{params.lambda_e: [1.0e-2, 1.0e-3]}``; several keys
give their product) is replaced by one named variant per point (:func:`expand_grids`), before
``inherit:`` is resolved and the variants are checked, so everything downstream (the workflow,
the report) sees ordinary variants.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEFAULT_SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A malformed config; the message names the key."""


def _with_defaults(validator_class):
    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_FillingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _key(prefix: str, path) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in path]
    return ".".join(parts) or "<config>"


def validate_against(instance: dict, schema: dict, prefix: str = "") -> dict:
    """Fill defaults into ``instance`` in place and validate; raise ConfigError naming the key."""
    # str(): a path may mix list indices and keys at one depth (int < str is a TypeError)
    errors = sorted(_FillingValidator(schema).iter_errors(instance),
                    key=lambda e: [str(p) for p in e.path])
    if errors:
        e = errors[0]
        if e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            keys = ", ".join(_key(prefix, list(e.path) + [k]) for k in extra)
            known = ", ".join(sorted(e.schema.get("properties", {}))) or "none"
            raise ConfigError(f"unknown config key {keys} (allowed here: {known})")
        raise ConfigError(f"{_key(prefix, e.path)}: {e.message}")
    return instance


def load_schema(path: str | Path = DEFAULT_SCHEMA) -> dict:
    """The schema, its report table and figure keys filled from the report registry."""
    from .report.registry import complete_schema

    p = Path(path)
    return complete_schema(copy.deepcopy(_parsed_schema(str(p.resolve()), p.stat().st_mtime_ns)))


@functools.lru_cache(maxsize=8)
def _parsed_schema(path: str, mtime_ns: int) -> dict:
    # pure-Python YAML parsing of the schema takes ~0.2 s; keyed by mtime so edits are seen
    with open(path) as f:
        return yaml.safe_load(f)


def validate_config(config: dict, schema_path: str | Path = DEFAULT_SCHEMA, *,
                    expansions: dict | None = None) -> dict:
    """Validate a whole pipeline config in place (defaults filled) and return it.

    Grid variants are expanded (:func:`expand_grids`); pass a dict as ``expansions`` to receive
    what each grid became."""
    # Method, encoder and sampler names and schemas come from the catalog, not the torch-backed
    # registries: the workflow's parse imports no torch (lmdlt/catalog.py says how and why)
    from .catalog import current
    from .data.sources import available_sources, get_source
    from .data.splits import available_protocols

    cat = current()
    available_encoders, available_samplers = cat.available_encoders, cat.available_samplers

    def get_stage1(name):
        return cat.get_method("stage1", name)

    def get_stage2(name):
        return cat.get_method("stage2", name)

    if not isinstance(config, dict):
        raise ConfigError(f"the config must be a mapping, got {type(config).__name__}")
    schema = load_schema(schema_path)
    validate_against(config, schema)
    grids = expand_grids(config)
    if expansions is not None:
        expansions.update(grids)
    made_by = {(g.split(".")[0], p.name): (g, p) for g, points in grids.items() for p in points}
    for stage, name in made_by:  # a grid's values pass the same schema as any setting
        with _grid_note(made_by, stage, name):
            validate_against(config[stage][name], schema["properties"][stage]["additionalProperties"],
                             f"{stage}.{name}")

    ds = config["dataset"]
    if ds["source"] not in available_sources():
        raise ConfigError(f"dataset.source: unknown source {ds['source']!r} "
                          f"(known: {', '.join(available_sources())})")
    try:
        source = get_source(ds["source"], ds.get("root"), ds.get("options"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if source.needs_root and not ds.get("root"):
        raise ConfigError(f"dataset.root: source {ds['source']!r} needs a data root (the folder "
                          "or file holding the dataset)")
    if config["split"]["protocol"] not in available_protocols():
        raise ConfigError(f"split.protocol: unknown protocol {config['split']['protocol']!r} "
                          f"(known: {', '.join(available_protocols())})")

    for name, variant in config["stage1"].items():
        key = f"stage1.{name}"
        with _grid_note(made_by, "stage1", name):
            method = _lookup(get_stage1, variant["method"], f"{key}.method")
            validate_against(variant.setdefault("params", {}), method.params_schema(), f"{key}.params")
            problem = cat.arch_problem(variant["model"]["arch"])  # lmdlt's, torchvision's or timm:<name>
            if problem:
                raise ConfigError(f"{key}.model.arch: {problem}")
            _check_sampler(variant["sampler"], f"{key}.sampler", available_samplers())

    resolve_inheritance(config["stage2"], get_stage2)
    for name, variant in config["stage2"].items():
        key = f"stage2.{name}"
        with _grid_note(made_by, "stage2", name):
            method = _lookup(get_stage2, variant["method"], f"{key}.method")
            validate_against(variant.setdefault("params", {}), method.params_schema(), f"{key}.params")
            for s1 in variant.get("stage1") or []:
                if s1 not in config["stage1"]:
                    raise ConfigError(f"{key}.stage1: no stage-1 variant named {s1!r} "
                                      f"(defined: {', '.join(config['stage1'])})")
            if "sampler" in variant["params"]:
                _check_sampler(variant["params"]["sampler"], f"{key}.params.sampler", available_samplers())
    return config


# --- grid sweeps --------------------------------------------------------------------------------

_GRID_KEYS = ("grid", "grid_name")
_FIELD = re.compile(r"\{([^{}]*)\}")
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class GridPoint:
    """One variant a grid makes: its name, label and settings (``{dotted path: value}``, a
    mapping value flattened into its leaves)."""

    def __init__(self, name: str, label: str, settings: dict[str, Any]) -> None:
        self.name, self.label, self.settings = name, label, settings

    def __repr__(self) -> str:
        return f"GridPoint({self.name!r}, {self.label!r}, {self.settings!r})"


def format_value(value: Any) -> str:
    """A setting's value as grid names and labels print it: integers and integral floats without
    a decimal point (``3.0`` -> ``3``), numbers below 0.1 in the shortest scientific form without
    exponent padding (``1.0e-5`` -> ``1e-5``, ``2.5e-4``), other floats as Python prints them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        if abs(value) < 0.1 or abs(value) >= 1e16:
            for digits in range(17):
                text = f"{value:.{digits}e}"
                if float(text) == value:
                    break
            mantissa, exponent = text.split("e")
            return f"{mantissa}e{int(exponent)}"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "-".join(format_value(v) for v in value)
    return str(value)


def _flatten(path: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(f"{path}.{k}", v))
        return out
    return {path: value}


def _set_path(variant: dict, path: str, value: Any, where: str) -> None:
    """Set ``path`` (dotted) in ``variant``, creating the mappings on the way."""
    *parents, leaf = path.split(".")
    node = variant
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {'.'.join(parents[:i + 1])} is not a mapping in this "
                              f"variant, so {path} cannot be set")
    node[leaf] = copy.deepcopy(value)


def _fields(base: str, settings: dict[str, Any]) -> dict[str, str]:
    """Template fields of a grid point: ``{name}`` (the grid variant's name), each setting by its
    dotted path and by its last component where that is unambiguous."""
    fields = {"name": base}
    leaves: dict[str, list[str]] = {}
    for path in settings:
        leaves.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    for path, value in settings.items():
        fields[path] = format_value(value)
    for leaf, paths in leaves.items():
        if len(paths) == 1 and leaf not in fields:
            fields[leaf] = fields[paths[0]]
    return fields


def _render(template: str, fields: dict[str, str], where: str) -> str:
    def sub(m):
        if m.group(1) not in fields:
            raise ConfigError(f"{where}: unknown field {{{m.group(1)}}} in {template!r} "
                              f"(fields: {', '.join('{' + f + '}' for f in fields)})")
        return fields[m.group(1)]

    return _FIELD.sub(sub, template)


def _short(path: str, settings: dict[str, Any]) -> str:
    leaf = path.rsplit(".", 1)[-1]
    return leaf if sum(p.rsplit(".", 1)[-1] == leaf for p in settings) == 1 else path


def grid_points(stage: str, base: str, variant: dict) -> list[GridPoint]:
    """The variants a grid variant makes, in order (the first key varies slowest).

    Names: ``grid_name`` (a template, e.g. ``"icc_le{lambda_e}"``), else the variant's name
    followed by ``_<setting><value>`` per setting (``icc_lambda_e1e-5``; an underscore before
    the value where the setting ends in a digit: ``rrl_lambda_1_0.3``). Labels: a ``label`` with
    ``{fields}`` is a template, else ``"<label> (<setting> <value>, ...)"``
    (``"ICC (lambda_e 1e-5)"``). Fields: ``{name}`` and each setting by its dotted path or its
    last component. A grid key's values may be mappings, merged into the mapping at that key:
    settings that change together (``params: [{virtual_per_class: 100, m_epochs: 10}, ...]``).
    """
    where = f"{stage}.{base}.grid"
    grid = variant["grid"]
    for key in grid:
        if key.split(".")[0] in ("label", *_GRID_KEYS):
            raise ConfigError(f"{where}.{key}: a grid cannot vary {key.split('.')[0]!r}")
    out = []
    for combo in itertools.product(*grid.values()):
        settings: dict[str, Any] = {}
        for key, value in zip(grid, combo):
            settings.update(_flatten(key, value))
        fields = _fields(base, settings)
        if variant.get("grid_name"):
            name = _render(variant["grid_name"], fields, f"{stage}.{base}.grid_name")
        else:
            parts = []
            for path, value in settings.items():
                short = _short(path, settings).replace(".", "_")
                text = re.sub(r"[^A-Za-z0-9_.-]", "-", format_value(value))
                parts.append(short + ("_" if short[-1].isdigit() else "") + text)
            name = "_".join([base, *parts])
        if not _VARIANT_NAME.match(name):
            raise ConfigError(f"{stage}.{base}.grid_name: {name!r} is not a variant name (letters, "
                              f"digits, '_', '.', '-'; first a letter or digit)")
        label = variant.get("label") or base
        if _FIELD.search(label):
            label = _render(label, fields, f"{stage}.{base}.label")
        else:
            label += " (" + ", ".join(f"{_short(p, settings)} {format_value(v)}"
                                      for p, v in settings.items()) + ")"
        out.append(GridPoint(name, label, settings))
    return out


def expand_grids(config: dict) -> dict[str, list[GridPoint]]:
    """Replace every grid variant of ``config["stage1"]`` and ``config["stage2"]``, in place and
    at its position, by the variants of its points (:func:`grid_points`): a copy of the grid
    variant without ``grid``/``grid_name``, its settings set and its label made. A stage-2
    ``stage1:`` list naming a stage-1 grid names all of its variants. Returns
    ``{"stage2.icc_le": [GridPoint, ...]}``.

    Errors: two points with one name, a name already defined, ``inherit:`` naming a grid (a
    variant inherits one point, by its name). An overlay merged over a grid (Snakemake's
    ``--configfile``) replaces its value lists, as any list."""
    out: dict[str, list[GridPoint]] = {}
    for stage in ("stage1", "stage2"):
        variants = config.get(stage) or {}
        if not any(isinstance(v, dict) and "grid" in v for v in variants.values()):
            continue
        expanded: dict[str, dict] = {}
        for base, variant in variants.items():
            if "grid" not in variant:
                if base in expanded:
                    raise ConfigError(f"{stage}.{base}: defined twice (also made by a grid)")
                expanded[base] = variant
                continue
            points = grid_points(stage, base, variant)
            for p in points:
                if p.name in expanded or (p.name in variants and p.name != base):
                    raise ConfigError(f"{stage}.{base}.grid: makes a variant named {p.name!r}, "
                                      f"which is already defined (give grid_name)")
                child = {k: copy.deepcopy(v) for k, v in variant.items() if k not in _GRID_KEYS}
                for path, value in p.settings.items():
                    _set_path(child, path, value, f"{stage}.{base}.grid.{path}")
                child["label"] = p.label
                expanded[p.name] = child
            out[f"{stage}.{base}"] = points
        variants.clear()
        variants.update(expanded)
    stage1_grids = {k.split(".", 1)[1]: [p.name for p in v] for k, v in out.items()
                    if k.startswith("stage1.")}
    stage2_grids = {k.split(".", 1)[1]: [p.name for p in v] for k, v in out.items()
                    if k.startswith("stage2.")}
    for name, variant in (config.get("stage2") or {}).items():
        if stage1_grids and variant.get("stage1"):
            names = [n for s1 in variant["stage1"] for n in stage1_grids.get(s1, [s1])]
            variant["stage1"] = list(dict.fromkeys(names))
        if variant.get("inherit") in stage2_grids:
            raise ConfigError(f"stage2.{name}.inherit: {variant['inherit']!r} is a grid; inherit "
                              f"one of its variants ({', '.join(stage2_grids[variant['inherit']])})")
    return out


def describe_expansions(expansions: dict[str, list[GridPoint]]) -> list[str]:
    """Lines saying what each grid became (``lmdlt validate-config`` prints them)."""
    lines = []
    for grid, points in expansions.items():
        lines.append(f"{grid}: grid of {len(points)} variant{'s' * (len(points) != 1)}")
        for p in points:
            settings = ", ".join(f"{k}={format_value(v)}" for k, v in p.settings.items())
            lines.append(f"  {p.name}: {settings}  (label {p.label!r})")
    return lines


@contextlib.contextmanager
def _grid_note(made_by: dict, stage: str, name: str):
    """An error in a variant a grid made says which grid and point made it."""
    try:
        yield
    except ConfigError as e:
        if (stage, name) not in made_by:
            raise
        grid, point = made_by[(stage, name)]
        settings = ", ".join(f"{k}={format_value(v)}" for k, v in point.settings.items())
        raise ConfigError(f"{e} (a variant made by {grid}.grid: {settings})") from None


def resolve_inheritance(variants: dict, get_method) -> None:
    """Resolve ``inherit: <variant>`` in place: the variant's params become its parent's
    (resolved first, along chains) restricted to the keys its own method takes, updated with its
    own params. An ablation row thereby shares every setting of its reference row except the one
    it names (e.g. ``icc_nofdc: {method: icc, inherit: icc, params: {lambda_e: 0}}``); what the
    rule receives is the resolved params, so a change to the parent re-runs its children too."""
    done: set[str] = set()

    def resolve(name: str, chain: tuple[str, ...]) -> None:
        variant = variants[name]
        parent = variant.get("inherit")
        if parent is None or name in done:
            done.add(name)
            return
        key = f"stage2.{name}.inherit"
        if parent not in variants:
            raise ConfigError(f"{key}: no stage-2 variant named {parent!r} "
                              f"(defined: {', '.join(variants)})")
        if parent in chain:
            raise ConfigError(f"{key}: inheritance cycle {' -> '.join(chain + (parent,))}")
        resolve(parent, chain + (parent,))
        method = _lookup(get_method, variant["method"], f"stage2.{name}.method")
        own = variant.get("params") or {}
        inherited = {k: copy.deepcopy(v) for k, v in (variants[parent].get("params") or {}).items()
                     if k in method.params}
        variant["params"] = {**inherited, **own}
        done.add(name)

    for name in variants:
        resolve(name, (name,))


def validate_variant(stage: str, variant: dict, schema_path: str | Path = DEFAULT_SCHEMA) -> dict:
    """Validate one stage-1 or stage-2 variant (defaults filled), for running a stage by hand."""
    from .stage1 import get_method as get_stage1
    from .stage2 import get_method as get_stage2

    if isinstance(variant, dict) and "grid" in variant:
        raise ConfigError(f"{stage}.grid: a grid expands in a whole config (lmdlt validate-config "
                          f"prints its variants); a stage run by hand takes one of them")
    schema = load_schema(schema_path)["properties"][stage]["additionalProperties"]
    validate_against(variant, schema, stage)
    method = _lookup(get_stage1 if stage == "stage1" else get_stage2, variant["method"],
                     f"{stage}.method")
    validate_against(variant.setdefault("params", {}), method.params_schema(), f"{stage}.params")
    return variant


def validate_section(section: str, value: dict, schema_path: str | Path = DEFAULT_SCHEMA) -> dict:
    """Validate one top-level section (``dataset``, ``split``, ...) with its defaults filled, for
    running a stage by hand with a partial section."""
    validate_against(value, load_schema(schema_path)["properties"][section], section)
    return value


def _lookup(getter, name: str, key: str):
    try:
        return getter(name)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def _check_sampler(name: str, key: str, known: list[str]) -> None:
    if name not in known:
        raise ConfigError(f"{key}: unknown sampler {name!r} (known: {', '.join(known)})")


def check_data_root(config: dict) -> None:
    """The configured data root must exist: checked by the workflow before any job starts (not
    as a missing CSV in the first job's log). Kept out of ``validate_config`` so that a config
    can be validated on a machine without the data (an experiment's placeholder root)."""
    from .data.sources import get_source

    ds = config["dataset"]
    if get_source(ds["source"], ds.get("root"), ds.get("options")).needs_root and not os.path.exists(ds["root"]):
        raise ConfigError(f"dataset.root: {ds['root']!r} does not exist (relative paths are read "
                          f"from {os.getcwd()}); set it to the {ds['source']} data folder, e.g. "
                          f"--config dataset='{{root: /path/to/data}}'")


def load_config(path: str | Path, schema_path: str | Path = DEFAULT_SCHEMA, *,
                overlays: list[str | Path] = (), expansions: dict | None = None) -> dict:
    """Safe-load a YAML config file, merge ``overlays`` over it (in order, as Snakemake merges
    its ``--configfile`` files: mappings merged key by key, anything else replaced) and
    validate it."""
    config = _read_yaml(path)
    for overlay in overlays:
        merge_config(config, _read_yaml(overlay))
    return validate_config(config, schema_path, expansions=expansions)


def _read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    with open(p) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"{p}: the config must be a mapping, got {type(config).__name__}")
    return config or {}


def merge_config(config: dict, overlay: dict) -> dict:
    """Merge ``overlay`` into ``config`` in place, as ``snakemake.utils.update_config``."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            merge_config(config[key], value)
        else:
            config[key] = value
    return config


def pairs(config: dict) -> list[tuple[str, str | None]]:
    """(stage-1, stage-2) variant pairs to evaluate; stage-2 None is the stage-1 classifier alone."""
    out: list[tuple[str, str | None]] = [(s1, None) for s1 in config["stage1"]]
    for s2, variant in config["stage2"].items():
        for s1 in variant.get("stage1") or list(config["stage1"]):
            out.append((s1, s2))
    return out


def row_label(config: dict, s1: str, s2: str | None) -> str:
    l1 = config["stage1"][s1].get("label") or s1
    if s2 is None:
        return l1
    return f"{l1} + {config['stage2'][s2].get('label') or s2}"
