"""Config validation: JSON-schema with defaults filled, plus the checks a schema cannot express.

The schema lives in ``workflow/schemas/config.schema.yaml``. Method-specific parameters
(``stage1.<variant>.params``, ``stage2.<variant>.params``) are validated against the schema
each registered method declares, so adding a method never touches the main schema.
Every error names the offending key, e.g. ``stage1.ce.epochs: 'ten' is not of type 'integer'``.
"""
from __future__ import annotations

import copy
import functools
import os
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
    p = Path(path)
    return copy.deepcopy(_parsed_schema(str(p.resolve()), p.stat().st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _parsed_schema(path: str, mtime_ns: int) -> dict:
    # pure-Python YAML parsing of the schema takes ~0.2 s; keyed by mtime so edits are seen
    with open(path) as f:
        return yaml.safe_load(f)


def validate_config(config: dict, schema_path: str | Path = DEFAULT_SCHEMA) -> dict:
    """Validate a whole pipeline config in place (defaults filled) and return it."""
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
    validate_against(config, load_schema(schema_path))

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
        method = _lookup(get_stage1, variant["method"], f"{key}.method")
        validate_against(variant.setdefault("params", {}), method.params_schema(), f"{key}.params")
        if variant["model"]["arch"] not in available_encoders():
            raise ConfigError(f"{key}.model.arch: unknown encoder {variant['model']['arch']!r} "
                              f"(known: {', '.join(available_encoders())})")
        _check_sampler(variant["sampler"], f"{key}.sampler", available_samplers())

    resolve_inheritance(config["stage2"], get_stage2)
    for name, variant in config["stage2"].items():
        key = f"stage2.{name}"
        method = _lookup(get_stage2, variant["method"], f"{key}.method")
        validate_against(variant.setdefault("params", {}), method.params_schema(), f"{key}.params")
        for s1 in variant.get("stage1") or []:
            if s1 not in config["stage1"]:
                raise ConfigError(f"{key}.stage1: no stage-1 variant named {s1!r} "
                                  f"(defined: {', '.join(config['stage1'])})")
        if "sampler" in variant["params"]:
            _check_sampler(variant["params"]["sampler"], f"{key}.params.sampler", available_samplers())
    return config


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


def load_config(path: str | Path, schema_path: str | Path = DEFAULT_SCHEMA) -> dict:
    """Safe-load a YAML config file and validate it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    with open(p) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return validate_config(config or {}, schema_path)


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
