import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, REPO
from lmdlt.config import ConfigError, load_config, pairs, row_label, validate_config, validate_variant


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_default_config_validates_and_fills_defaults(config):
    cfg = validate_config(copy.deepcopy(config))
    assert cfg["results_dir"] == "results"
    assert cfg["compute"]["device"] == "auto" and cfg["compute"]["threads"] == 1  # device: schema default
    ce = cfg["stage1"]["ce"]
    assert ce["select"] == "best_val" and ce["weight_decay"] == 0.0005
    assert ce["model"]["pretrained"] is None
    assert ce["params"] == {"label_smoothing": 0.0}  # the method's own schema filled it


def test_unknown_key_names_the_key(config):
    config["stage1"]["ce"]["epoch"] = 3
    with pytest.raises(ConfigError, match=r"unknown config key stage1\.ce\.epoch\b"):
        validate_config(config)


def test_unknown_top_level_key(config):
    config["seed"] = [0]
    with pytest.raises(ConfigError, match=r"unknown config key seed\b"):
        validate_config(config)


def test_wrong_type_names_the_key(config):
    config["stage1"]["ce"]["epochs"] = "ten"
    with pytest.raises(ConfigError, match=r"stage1\.ce\.epochs: 'ten' is not of type 'integer'"):
        validate_config(config)


@pytest.mark.parametrize("path,value,match", [
    (("stage1", "ce", "method"), "nope", r"stage1\.ce\.method: unknown stage-1 method 'nope'"),
    (("stage2", "crt", "method"), "nope", r"stage2\.crt\.method: unknown stage-2 method 'nope'"),
    (("stage1", "ce", "sampler"), "nope", r"stage1\.ce\.sampler: unknown sampler 'nope'"),
    (("stage2", "crt", "params", "sampler"), "nope", r"stage2\.crt\.params\.sampler: unknown sampler"),
    (("stage2", "crt", "params", "epochs"), 0, r"stage2\.crt\.params\.epochs: 0 is less than the minimum"),
    (("stage1", "ce", "model", "arch"), "vgg", r"stage1\.ce\.model\.arch: unknown encoder 'vgg'"),
    (("dataset", "source"), "nope", r"dataset\.source: unknown source 'nope'"),
    (("split", "protocol"), "nope", r"split\.protocol: unknown protocol 'nope'"),
    (("split", "imbalance_ratio"), 0.5, r"split\.imbalance_ratio: 0\.5 is less than the minimum"),
    (("stage1", "ce", "batch_size"), 0, r"stage1\.ce\.batch_size: 0 is less than the minimum"),
])
def test_bad_values_are_rejected_naming_the_key(config, path, value, match):
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=match):
        validate_config(config)


def test_method_params_unknown_key(config):
    config["stage2"]["crt"]["params"]["lr_typo"] = 1
    with pytest.raises(ConfigError, match=r"unknown config key stage2\.crt\.params\.lr_typo"):
        validate_config(config)


def test_stage2_may_only_name_existing_stage1_variants(config):
    config["stage2"]["crt"]["stage1"] = ["missing"]
    with pytest.raises(ConfigError, match=r"stage2\.crt\.stage1: no stage-1 variant named 'missing'"):
        validate_config(config)


def test_pairs_and_labels():
    cfg = {"stage1": {"a": {"label": "A"}, "b": {}},
           "stage2": {"x": {"label": "X"}, "y": {"stage1": ["b"]}}}
    assert pairs(cfg) == [("a", None), ("b", None), ("a", "x"), ("b", "x"), ("b", "y")]
    assert row_label(cfg, "a", None) == "A"
    assert row_label(cfg, "a", "x") == "A + X"
    assert row_label(cfg, "b", "y") == "b + y"


def test_validate_variant_fills_defaults_for_hand_runs():
    v = validate_variant("stage2", {"method": "crt"})
    assert v["params"]["sampler"] == "class_balanced" and v["params"]["epochs"] == 10


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("dataset: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(unsafe)


def test_lmdlt_validate_config_names_file_line_and_column(tmp_path):
    """The documented way to locate a syntax error that Snakemake reports without a position."""
    shutil.copy(FIXTURES / "bad-syntax.yaml", tmp_path / "bad.yaml")
    proc = subprocess.run([str(Path(sys.executable).with_name("lmdlt")), "validate-config",
                           str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "bad.yaml" in proc.stderr and "line 2, column 7" in proc.stderr, proc.stderr
