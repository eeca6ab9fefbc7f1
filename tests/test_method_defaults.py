"""Every stage-1 and stage-2 method param carries, in its schema beside its default, a
description and a source (``lmdlt.method_registry.SOURCE_KINDS``): ``paper: <equation, table,
section>``, ``reference: <repository@commit file:line>``, ``option: <why>`` (a switch of ours) or
``departure: <ours> (<the reference's or the paper's value>)``. A new param without a source
fails here.

The values a paper or a reference repository gives (and our departures from them) are pinned by
value below, so a default changed without its source changing fails too; an option's default is
ours and is not pinned here (its behaviour is, in the method's own tests)."""
import json

import jsonschema
import pytest

from lmdlt.config import validate_against
from lmdlt.method_registry import SOURCE_KINDS
from lmdlt.stage1 import available_methods as stage1_methods, get_method as get1
from lmdlt.stage2 import available_methods as stage2_methods, get_method as get2

ALL = [(1, m) for m in stage1_methods()] + [(2, m) for m in stage2_methods()]
PARAMS = [(s, m, k) for s, m in ALL for k in (get1 if s == 1 else get2)(m).params]
PINNED_KINDS = {"paper", "reference", "departure"}

# (stage, method) -> {param: the default its source gives}
PINNED = {
    (1, "ce"): {},
    (1, "rs"): {"gamma": 0.0},
    (1, "focal"): {"gamma": 2.0},
    (1, "ldam"): {"max_m": 0.5, "s": 30.0, "drw_start": 0.8, "drw_beta": 0.9999,
                  "lr_schedule": "reference"},
    (1, "ce_drw"): {"drw_start": 0.8, "drw_beta": 0.9999, "lr_schedule": "reference"},
    (1, "cc_sam"): {"flat_ratio": 0.3, "noise_ratio": 1.0e-6, "mixup": True, "mixup_alpha": 1.0,
                    "step": "reference"},
    (1, "balanced_softmax"): {"tau": 1.0},
    (1, "cb_focal"): {"beta": 0.9999, "gamma": 1.0, "prior": 0.1},
    (1, "seesaw"): {"p": 0.8, "q": 2.0},
    (1, "bal_mixup"): {"alpha": 0.1},
    (1, "supcon"): {"tau": 0.1, "dim": 128},
    (1, "cb_wd_max"): {"max_norm_thresh": None},
    (1, "gcl"): {"s": 30.0, "m": 0.0, "noise_mul": 0.5, "noise_std": 1 / 3},
    (1, "iccl"): {"tau": 0.07, "momentum": 0.99, "dim": 128, "gamma": 0.0, "uniform_weight": 1.0,
                  "interp_weight": 1.0, "beta": 1.0, "warmup_epochs": None},
    (1, "aduc"): {"tau": 0.1, "alpha_max": 1.0, "alpha_min": 0.01, "t_decay": None,
                  "alpha_schedule": "paper", "logit_compensation": "log_prior", "logit_tau": None},
    (1, "lcreg"): {"num_latent": 40, "lambda_0": 0.5, "w_aug": 0.1, "w_recon": 0.1, "w_cls": 1.0},
    (1, "rrl"): {"lambda_1": 10.0, "prob_weight": 0.5, "ce_weight": 1.0, "ce_view": "weak",
                 "gram": "reference", "consistency_start_epoch": 21, "ema_decay": 0.999,
                 "teacher_bn": "batch", "flip": True, "vflip": True, "blur_p": 0.5,
                 "blur_sigma": [0.1, 1.0], "affine_p": 0.5, "rotation_degrees": 45.0,
                 "translate": 0.0625, "scale": 0.2, "border": "reflect", "distortion_p": 0.0,
                 "rgb_shift": 15.0, "rgb_shift_p": 0.5, "jitter": 0.2, "jitter_p": 0.5,
                 "saturation": 0.0, "hue": 0.0, "grid_dropout_p": 0.2, "grid_dropout_ratio": 0.5,
                 "grid_dropout_unit": None},
    (2, "gcl"): {"s": 20.0, "m": 0.1, "noise_mul": 0.5, "noise_std": 1 / 3, "gamma": 1.0,
                 "sampler": "class_balanced", "epochs": 30, "batch_size": 64, "lr": 0.002,
                 "momentum": 0.9, "weight_decay": 2e-4},
    (2, "cb_wd_max"): {"loss": "cb_softmax_bce", "beta": 0.9999, "max_norm_thresh": 0.1,
                       "project": "epoch", "weight_decay": 0.1, "lr": 0.01, "epochs": 10,
                       "batch_size": 64, "momentum": 0.9, "sampler": "instance"},
    (2, "logit_adjust"): {"tau_min": 0.0, "tau_max": 2.0},
    (2, "crt"): {"epochs": 10, "momentum": 0.9, "weight_decay": 5e-4, "sampler": "class_balanced",
                 "batch_size": 128, "lr": 0.1},
    (2, "lws"): {"sampler": "class_balanced", "momentum": 0.9, "epochs": 10, "weight_decay": 0.0,
                 "batch_size": 128, "lr": 0.1},
    (2, "tau_norm"): {"tau_min": 0.0, "tau_max": 2.0, "tau_step": 0.1},
    (2, "ncm"): {"metric": "cosine"},
    (2, "kd_rebalance"): {"gamma": 1.0, "w_d": 0.5, "tau_d": 10.0, "epochs": 10,
                          "sampler": "class_aware", "lr": 0.01, "momentum": 0.9, "batch_size": 128,
                          "weight_decay": 5e-4},
    (2, "vfc"): {"virtual_per_class": 50000, "m_sampler": "class_balanced", "cov_reg": 0.01,
                 "stats_decay": 0.999, "features": "virtual", "mode": "sampled", "m_epochs": 1,
                 "m_batch_size": 352, "m_lr": 1e-5, "m_momentum": 0.9, "m_weight_decay": 1e-4,
                 "m_schedule": "constant"},
    (2, "icc"): {"iterations": 200, "lambda_e": 1e-4, "e_sampler": "instance", "e_epochs": 1,
                 "e_batch_size": 352, "e_lr": 1e-6, "e_momentum": 0.9, "e_weight_decay": 1e-4,
                 "e_label_loss": "ce", "gce_q": 0.7, "e_label_grad": "paper", "fdc_sign": "paper",
                 "classifier_init": "once", "lr_milestones": [], "virtual_stats": "ema",
                 "eval_features": "post_e_step", "select": "best_val", "fdc_reference_dim": None,
                 "fdc_floor": None, "virtual_per_class": 50000, "m_sampler": "class_balanced",
                 "cov_reg": 0.01, "stats_decay": 0.999, "features": "virtual", "mode": "sampled",
                 "m_epochs": 1, "m_batch_size": 352, "m_lr": 1e-5, "m_momentum": 0.9,
                 "m_weight_decay": 1e-4},
}


def spec(stage, name, param) -> dict:
    return (get1 if stage == 1 else get2)(name).params[param]


def kind(source: str) -> str:
    return source.split(":", 1)[0].strip()


@pytest.mark.parametrize("stage,name,param", PARAMS, ids=[f"s{s}-{m}-{k}" for s, m, k in PARAMS])
def test_every_param_has_a_default_a_description_and_a_source(stage, name, param):
    p = spec(stage, name, param)
    assert "default" in p, f"stage-{stage} {name}.{param}: no default"
    assert str(p.get("description", "")).strip(), f"stage-{stage} {name}.{param}: no description"
    source = str(p.get("source", ""))
    assert kind(source) in SOURCE_KINDS and source.split(":", 1)[-1].strip(), (
        f"stage-{stage} {name}.{param}: source {source!r} must read '<{'|'.join(SOURCE_KINDS)}>: ...'")
    if kind(source) == "departure":  # a departure names what it departs from
        assert "reference" in source or "paper" in source, f"{name}.{param}: {source}"


@pytest.mark.parametrize("stage,name,param", PARAMS, ids=[f"s{s}-{m}-{k}" for s, m, k in PARAMS])
def test_paper_and_reference_defaults_are_pinned_by_value(stage, name, param):
    p = spec(stage, name, param)
    pinned = PINNED.get((stage, name), {})
    if kind(p["source"]) in PINNED_KINDS:
        assert param in pinned, f"stage-{stage} {name}.{param} ({p['source']}): pin its value here"
    if param in pinned:
        if isinstance(pinned[param], float):
            assert p["default"] == pytest.approx(pinned[param], rel=1e-12), p["source"]
        else:
            assert p["default"] == pinned[param] and type(p["default"]) is type(pinned[param]), p["source"]


def test_every_pin_names_a_registered_method_and_param():
    for (stage, name), values in PINNED.items():
        assert (stage, name) in ALL, (stage, name)
        for param in values:
            assert param in (get1 if stage == 1 else get2)(name).params, (stage, name, param)
    assert {m for m in ALL} == set(PINNED), "every method has its PINNED entry (empty: options only)"


@pytest.mark.parametrize("stage,name", ALL, ids=[f"s{s}-{n}" for s, n in ALL])
def test_the_schema_with_its_sources_validates_and_fills_the_defaults(stage, name):
    """``source`` and ``description`` are annotations: the schema is valid JSON schema, JSON
    data (the catalog caches it), and validating {} fills exactly the defaults."""
    cls = (get1 if stage == 1 else get2)(name)
    schema = cls.params_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert json.loads(json.dumps(schema)) == schema
    filled = validate_against({}, schema)
    assert filled == {k: v["default"] for k, v in cls.params.items()}


def test_the_method_params_page_is_generated_from_the_schemas():
    """docs/method-params.md is ``python -m lmdlt.method_params`` (regenerate it after a change)."""
    from pathlib import Path

    from lmdlt.method_params import markdown

    page = Path(__file__).resolve().parent.parent / "docs" / "method-params.md"
    assert page.read_text() == markdown(), (
        "docs/method-params.md is stale: python -m lmdlt.method_params > docs/method-params.md")


def test_validate_config_explain_prints_every_param_with_its_default_and_source(capsys):
    from lmdlt.cli import main

    assert main(["validate-config", "--explain"]) == 0
    out = capsys.readouterr().out
    for stage, name, param in PARAMS:
        p = spec(stage, name, param)
        block = out.split(f"stage{stage} method {name}\n", 1)[1].split("\nstage", 1)[0]
        assert f"  {param}: {json.dumps(p['default'])}\n" in block, (name, param)
        assert f"source: {p['source']}" in block, (name, param)


def test_validate_config_explain_with_a_config_shows_its_values_beside_the_defaults(tmp_path, capsys):
    from lmdlt.cli import main

    cfg = tmp_path / "overlay.yaml"
    cfg.write_text("stage2:\n  crt:\n    params: {lr: 0.05}\n")
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    assert main(["validate-config", "--explain", str(root / "config.yaml"), str(cfg)]) == 0
    out = capsys.readouterr().out
    crt = out.split("stage2.crt (method crt)\n", 1)[1].split("\nstage", 1)[0]
    assert "  lr: 0.05  (default 0.1)\n" in crt
    assert "source: " + spec(2, "crt", "lr")["source"] in crt
    assert "  momentum: 0.9\n" in crt  # a value equal to its default: no "(default ...)"
