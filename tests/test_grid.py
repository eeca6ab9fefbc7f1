"""Grid sweeps (``grid:`` on a variant): expansion into named, labelled variants in config
loading, its errors, ``lmdlt validate-config`` printing it, and the digits sweeps overlay
written as grids making exactly the variants and jobs of its hand-copied form
(tests/fixtures/lmd-sweeps-digits-explicit.yaml)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import run_snakemake

from lmdlt.cli import main
from lmdlt.config import ConfigError, format_value, load_config, validate_config, validate_variant

REPO = Path(__file__).resolve().parent.parent
OVERLAY = REPO / "workflow" / "experiments" / "overlays" / "lmd-sweeps-digits.yaml"
EXPLICIT = REPO / "tests" / "fixtures" / "lmd-sweeps-digits-explicit.yaml"

ENCODER = {"method": "ce", "model": {"arch": "small_resnet", "width": 8}, "epochs": 2}
ICC = {"method": "icc", "label": "ICC", "stage1": ["ce"],
       "params": {"iterations": 3, "virtual_per_class": 500, "m_epochs": 2, "lambda_e": 1.0e-4}}


def config(stage1: dict | None = None, stage2: dict | None = None) -> dict:
    return {"dataset": {"name": "d", "source": "digits"},
            "split": {"protocol": "cui", "imbalance_ratio": 10},
            "seeds": [0], "stage1": stage1 or {"ce": copy.deepcopy(ENCODER)},
            "stage2": stage2 or {}}


@pytest.mark.parametrize("value, text", [
    (1.0e-5, "1e-5"), (2.5e-4, "2.5e-4"), (1.0e-2, "1e-2"), (0.3, "0.3"), (3.0, "3"),
    (10.0, "10"), (10000, "10000"), (0.0, "0"), (-1.0e-3, "-1e-3"), (1.5, "1.5"),
    (True, "true"), (None, "null"), ("class_balanced", "class_balanced"), ([1, 2], "1-2")])
def test_values_print_in_their_shortest_readable_form(value, text):
    assert format_value(value) == text


def test_a_grid_becomes_the_product_of_its_keys_first_key_slowest():
    grids = {}
    cfg = validate_config(config(stage2={
        "icc": copy.deepcopy(ICC),
        "sweep": {"method": "icc", "label": "ICC", "stage1": ["ce"], "inherit": "icc",
                  "grid": {"params.lambda_e": [1.0e-2, 1.0e-3], "params.iterations": [1, 5, 20]}}}),
        expansions=grids)
    names = list(cfg["stage2"])
    assert names == ["icc", "sweep_lambda_e1e-2_iterations1", "sweep_lambda_e1e-2_iterations5",
                     "sweep_lambda_e1e-2_iterations20", "sweep_lambda_e1e-3_iterations1",
                     "sweep_lambda_e1e-3_iterations5", "sweep_lambda_e1e-3_iterations20"]
    v = cfg["stage2"]["sweep_lambda_e1e-3_iterations5"]
    assert v["label"] == "ICC (lambda_e 1e-3, iterations 5)"
    assert "grid" not in v and "grid_name" not in v
    # the grid's values over the inherited params, the rest inherited from icc
    assert (v["params"]["lambda_e"], v["params"]["iterations"]) == (1.0e-3, 5)
    assert (v["params"]["virtual_per_class"], v["params"]["m_epochs"]) == (500, 2)
    assert [p.name for p in grids["stage2.sweep"]] == names[1:]
    assert grids["stage2.sweep"][0].settings == {"params.lambda_e": 1.0e-2, "params.iterations": 1}


def test_names_and_labels_from_templates_and_settings_that_change_together():
    cfg = validate_config(config(stage2={
        "icc": copy.deepcopy(ICC),
        "icc_R": {"method": "icc", "label": "ICC (R {virtual_per_class}, {name})", "inherit": "icc",
                  "params": {"select": "last"},
                  "grid": {"params": [{"virtual_per_class": 100, "m_epochs": 10},
                                      {"virtual_per_class": 2000, "m_epochs": 1}]},
                  "grid_name": "icc_R{params.virtual_per_class}"}}))
    assert list(cfg["stage2"]) == ["icc", "icc_R100", "icc_R2000"]
    assert cfg["stage2"]["icc_R100"]["label"] == "ICC (R 100, icc_R)"
    # a mapping value is merged into the variant's params: its own and the inherited stay
    assert {k: cfg["stage2"]["icc_R100"]["params"][k]
            for k in ("virtual_per_class", "m_epochs", "select", "iterations")} \
        == {"virtual_per_class": 100, "m_epochs": 10, "select": "last", "iterations": 3}
    assert cfg["stage2"]["icc_R2000"]["params"]["m_epochs"] == 1


def test_a_stage1_grid_sets_top_level_and_nested_settings_and_its_name_stands_for_its_variants():
    encoder = {**copy.deepcopy(ENCODER), "label": "CE", "grid": {"model.width": [4, 8], "lr": [0.1]}}
    cfg = validate_config(config(stage1={"ce": encoder},
                                 stage2={"crt": {"method": "crt", "stage1": ["ce"]}}))
    assert list(cfg["stage1"]) == ["ce_width4_lr0.1", "ce_width8_lr0.1"]
    v = cfg["stage1"]["ce_width4_lr0.1"]
    assert (v["model"]["width"], v["model"]["arch"], v["lr"], v["epochs"]) == (4, "small_resnet", 0.1, 2)
    assert v["label"] == "CE (width 4, lr 0.1)"
    assert cfg["stage2"]["crt"]["stage1"] == ["ce_width4_lr0.1", "ce_width8_lr0.1"]


def test_a_setting_ending_in_a_digit_is_separated_from_its_value():
    encoder = {**copy.deepcopy(ENCODER), "method": "rrl", "grid": {"params.lambda_1": [0.3, 3.0]}}
    cfg = validate_config(config(stage1={"rrl": encoder}))
    assert list(cfg["stage1"]) == ["rrl_lambda_1_0.3", "rrl_lambda_1_3"]
    assert cfg["stage1"]["rrl_lambda_1_3"]["label"] == "rrl (lambda_1 3)"


@pytest.mark.parametrize("stage2, message", [
    ({"g": {"method": "icc", "grid": {"params.lambda_e": [1.0e-3, 0.001]}}},
     r"stage2\.g\.grid: makes a variant named 'g_lambda_e1e-3', which is already defined"),
    ({"g_lambda_e1e-3": {"method": "icc"}, "g": {"method": "icc", "grid": {"params.lambda_e": [1.0e-3]}}},
     r"stage2\.g\.grid: makes a variant named 'g_lambda_e1e-3', which is already defined"),
    ({"g": {"method": "icc", "grid": {"params.lambda_e": [1.0e-3]}, "grid_name": "g{lambda}"}},
     r"stage2\.g\.grid_name: unknown field \{lambda\}.*fields: \{name\}, \{params\.lambda_e\}, \{lambda_e\}"),
    ({"g": {"method": "icc", "label": "ICC {R}", "grid": {"params.lambda_e": [1.0e-3]}}},
     r"stage2\.g\.label: unknown field \{R\}"),
    ({"g": {"method": "icc", "grid": {"params.lambda_e": ["big"]}}},
     r"stage2\.g_lambda_e.*\.params\.lambda_e: 'big' is not of type 'number' "
     r"\(a variant made by stage2\.g\.grid: params\.lambda_e=big\)"),
    ({"g": {"method": "icc", "grid": {"label": ["a", "b"]}}},
     r"stage2\.g\.grid\.label: a grid cannot vary 'label'"),
    ({"g": {"method": "icc", "grid": {"params.lambda_e": 1.0e-3}}},
     r"stage2\.g\.grid\.params\.lambda_e: 0\.001 is not of type 'array'"),
    ({"g": {"method": "icc", "grid": {"params.lambda_e": []}}},
     r"stage2\.g\.grid\.params\.lambda_e: \[\] should be non-empty"),
    ({"g": {"method": "icc", "grid": {"params.lambda_e": [1.0e-3]}},
      "h": {"method": "icc", "inherit": "g"}},
     r"stage2\.h\.inherit: 'g' is a grid; inherit one of its variants \(g_lambda_e1e-3\)"),
    ({"g": {"method": "icc", "grid": {"stage1": [["ce"]]}, "grid_name": "g/{stage1}"}},
     r"stage2\.g\.grid_name: 'g/ce' is not a variant name"),
    ({"g": {"method": "icc", "stage1": ["ce"], "grid": {"stage1.first": ["ce"]}}},
     r"stage2\.g\.grid\.stage1\.first: stage1 is not a mapping in this variant"),
], ids=["duplicate-point", "existing-name", "name-field", "label-field", "value-type", "label",
        "not-a-list", "empty", "inherit-grid", "bad-name", "not-a-mapping"])
def test_grid_errors_name_the_grid(stage2, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(config(stage2=stage2))


def test_a_grid_value_passes_the_schema_of_the_setting_it_sets():
    encoder = {**copy.deepcopy(ENCODER), "grid": {"epochs": [2, "ten"]}}
    with pytest.raises(ConfigError, match=r"^stage1\.ce_epochsten\.epochs: 'ten' is not of type "
                                          r"'integer' \(a variant made by stage1\.ce\.grid: epochs=ten\)$"):
        validate_config(config(stage1={"ce": encoder}))


def test_a_stage_run_by_hand_takes_one_variant_not_a_grid():
    with pytest.raises(ConfigError, match=r"stage2\.grid: a grid expands in a whole config"):
        validate_variant("stage2", {"method": "icc", "grid": {"params.lambda_e": [1.0e-3]}})


def test_the_sweeps_overlay_makes_exactly_the_hand_copied_variants():
    """Same names, labels and settings (hence the same output files and params stamps) as the
    overlay's explicit form, in the same order."""
    grids = {}
    new = load_config(REPO / "config.yaml", overlays=[OVERLAY], expansions=grids)
    old = load_config(REPO / "config.yaml", overlays=[EXPLICIT])
    assert "grid" in OVERLAY.read_text() and "grid" not in EXPLICIT.read_text().split("stage1:", 1)[1]
    assert set(grids) == {"stage1.rrl_l1", "stage2.vfc_R", "stage2.icc_R", "stage2.icc_J", "stage2.icc_le"}
    for stage in ("stage1", "stage2"):
        assert list(new[stage]) == list(old[stage])
        assert new[stage] == old[stage]
    assert new == old


def test_validate_config_prints_the_expansion(capsys):
    assert main(["validate-config", str(REPO / "config.yaml"), str(OVERLAY)]) in (0, None)
    out = capsys.readouterr().out
    assert "# stage2.icc_le: grid of 3 variants\n" in out
    assert "#   icc_le1e-5: params.lambda_e=1e-5  (label 'ICC (lambda_e 1e-5)')\n" in out
    assert "#   icc_R100: params.virtual_per_class=100, params.m_epochs=10  (label 'ICC (R 100)')\n" in out
    printed = yaml.safe_load(out)  # the comments keep it valid YAML: the validated config
    assert printed["stage2"]["icc_le1e-5"]["params"]["lambda_e"] == 1.0e-5
    assert "icc_le" not in printed["stage2"]
    assert printed["stage2"]["icc_l1"]["stage1"] == ["rrl_l1_0.3", "rrl_l1_3", "rrl_l1_10"]


def _jobs(workdir: Path, overlay: Path) -> dict[tuple[str, str], list]:
    """{(rule, outputs): params stamps' contents} of a dry-run of config.yaml + ``overlay``."""
    workdir.mkdir()
    proc = run_snakemake(workdir, "-n", "--configfile", str(REPO / "config.yaml"), str(overlay))
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \S+:\n)", proc.stdout + proc.stderr):
        m = re.match(r"(?:local)?rule (\S+):\n", block)
        if m:
            fields = dict(re.findall(r"^ {4}(\w+): (.*)$", block, re.M))
            stamps = [f for f in fields.get("input", "").split(", ")
                      if "params-changed" in f or f.endswith(".params.json")]
            jobs[(m.group(1), fields.get("output", ""))] = [
                json.loads((workdir / s).read_text()) for s in stamps]
    return jobs


def test_the_sweeps_overlay_dry_runs_the_same_jobs_as_its_explicit_form(tmp_path):
    """Every job (rule and output files) and the settings each receives (its params stamp)."""
    new, old = _jobs(tmp_path / "grid", OVERLAY), _jobs(tmp_path / "explicit", EXPLICIT)
    assert len(old) > 200 and sum(r == "train_stage2_encoder" for r, _ in old) >= 13 * 3
    assert set(new) == set(old)
    assert new == old
