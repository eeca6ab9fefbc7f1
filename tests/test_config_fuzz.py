"""Property test: malformed configs derived from the default ``config.yaml`` are all rejected by
``validate_config`` with a ``ConfigError`` naming the offending key, never another exception."""
from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from lmdlt.config import ConfigError, validate_config

# JSON round trip: the YAML anchors of the default share dicts between variants, and one
# mutation must change one place
DEFAULT = json.loads(json.dumps(yaml.safe_load((REPO / "config.yaml").read_text())))
STAGE1 = sorted(DEFAULT["stage1"])
STAGE2 = sorted(DEFAULT["stage2"])
NEEDS_ROOT = ["cifar", "ham10000", "hyper_kvasir", "imagefolder", "isic2019", "isic_lists", "medmnist"]


def _paths(node, prefix=()):
    """Every position in the config (dict values and list items), depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


def _dicts(node, prefix=()):
    if isinstance(node, dict):
        yield prefix
        for k, v in node.items():
            yield from _dicts(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _dicts(v, prefix + (i,))


PATHS = sorted(_paths(DEFAULT), key=lambda p: [str(x) for x in p])
DICTS = sorted(_dicts(DEFAULT), key=lambda p: [str(x) for x in p])
# positive integers and numbers that must stay positive (sizes, counts, epochs, rates)
POSITIVE = ([("dataset", "image_size"), ("compute", "threads"), ("split", "val_per_class"),
             ("split", "test_per_class")]
            + [("stage1", v, key) for v in STAGE1 for key in ("epochs", "batch_size", "lr")]
            + [("stage1", v, "model", key) for v in STAGE1 for key in ("width", "blocks_per_stage")]
            + [("stage2", "crt", "params", key) for key in ("epochs", "batch_size", "lr")]
            # vfc inherits icc's params (inherit: icc); vfc_R10 sets its own R and epochs over them
            + [("stage2", "vfc_R10", "params", key) for key in ("virtual_per_class", "m_epochs")]
            + [("stage2", "icc", "params", key) for key in ("iterations", "e_batch_size", "e_epochs",
                                                           "virtual_per_class", "m_batch_size")])


def dotted(path) -> str:
    return ".".join(str(p) for p in path)


def get(cfg, path):
    for p in path:
        cfg = cfg[p]
    return cfg


def put(cfg, path, value):
    get(cfg, path[:-1])[path[-1]] = value


def wrong_type(value, pick):
    """A replacement JSON-schema can never accept where ``value`` stood."""
    if isinstance(value, dict):
        return [1, 2]
    if isinstance(value, list):
        return {"not": "a list"}
    return [{"x": 1}] if pick else {"x": 1}


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)


@st.composite
def malformed(draw):
    """(config, key fragments the error must name)."""
    cfg = json.loads(json.dumps(DEFAULT))
    kind = draw(st.sampled_from(["type", "method1", "method2", "sampler1", "sampler2", "nonpositive",
                                 "no_root", "unknown_key", "absent_stage1", "missing_required"]))
    if kind == "type":
        path = draw(st.sampled_from(PATHS))
        put(cfg, path, wrong_type(get(cfg, path), draw(st.booleans())))
        return cfg, [dotted(path)]
    if kind in ("method1", "method2"):
        stage = "stage1" if kind == "method1" else "stage2"
        variant = draw(st.sampled_from(STAGE1 if stage == "stage1" else STAGE2))
        cfg[stage][variant]["method"] = "no_such_" + draw(names)
        return cfg, [f"{stage}.{variant}.method", "unknown"]
    if kind == "sampler1":
        variant = draw(st.sampled_from(STAGE1))
        cfg["stage1"][variant]["sampler"] = "no_such_" + draw(names)
        return cfg, [f"stage1.{variant}.sampler", "unknown sampler"]
    if kind == "sampler2":
        variant = draw(st.sampled_from(["crt", "lws", "kd_rebalance", "cb_wd_max"]))
        cfg["stage2"][variant].setdefault("params", {})["sampler"] = "no_such_" + draw(names)
        return cfg, [f"stage2.{variant}.params.sampler", "unknown sampler"]
    if kind == "nonpositive":
        path = draw(st.sampled_from(POSITIVE))
        node = get(cfg, path[:-1])
        node[path[-1]] = draw(st.integers(max_value=0) | st.floats(max_value=0, allow_nan=False))
        return cfg, [dotted(path)]
    if kind == "no_root":
        cfg["dataset"]["source"] = draw(st.sampled_from(NEEDS_ROOT))
        if draw(st.booleans()):
            cfg["dataset"]["root"] = draw(st.sampled_from([None, ""]))
        return cfg, ["dataset.root", "needs a data root"]
    if kind == "unknown_key":
        parent = draw(st.sampled_from(DICTS))
        key = "zz_" + draw(names)
        get(cfg, parent)[key] = 1
        return cfg, [dotted(parent), key]
    if kind == "absent_stage1":
        variant = draw(st.sampled_from(STAGE2))
        missing = "absent_" + draw(names)
        cfg["stage2"][variant]["stage1"] = [*(cfg["stage2"][variant].get("stage1") or []), missing]
        return cfg, [f"stage2.{variant}.stage1", missing]
    # a required key left out
    path = draw(st.sampled_from([("dataset",), ("split",), ("seeds",), ("stage1",), ("dataset", "name"),
                                 ("dataset", "source"), ("split", "protocol")]
                                + [("stage1", v, "method") for v in STAGE1]
                                + [("stage2", v, "method") for v in STAGE2]))
    del get(cfg, path[:-1])[path[-1]]
    return cfg, [path[-1]]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed())
def test_malformed_configs_are_rejected_naming_the_key(case):
    cfg, fragments = case
    with pytest.raises(ConfigError) as info:  # any other exception type fails the test
        validate_config(cfg)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not named in: {msg}"


def test_the_default_config_itself_is_valid():
    validate_config(json.loads(json.dumps(DEFAULT)))
