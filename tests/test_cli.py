"""lmdlt.cli: --version, one error line, help on every option; the producers' commands score
what they make (their metrics equal `lmdlt evaluate`'s), and every consumer (extraction, stage 2,
ICC, evaluation, the report) refuses an input made for another config."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

import lmdlt
from conftest import link_digits
from lmdlt.cli import build_parser, main
from lmdlt.config import validate_variant
from lmdlt.io import read_json, sha256_json
from lmdlt.metrics import GROUP_METRICS, group_metrics
from lmdlt.report.paper_tables import metric_values


def test_version_prints_the_package_version():
    out = subprocess.run([sys.executable, "-m", "lmdlt.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"lmdlt {lmdlt.__version__}"


def test_an_error_is_one_line():
    out = subprocess.run([sys.executable, "-m", "lmdlt.cli", "show-split", "/nonexistent/split.parquet"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lmdlt show-split: error:"), out.stderr


def test_every_subcommand_and_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "options without help: " + ", ".join(missing)


GROUPS = {"rule": "rank", "sizes": [3, 4, 3]}


CE = {"method": "ce", "label": "CE", "epochs": 2, "batch_size": 64}


OTHER = {**CE, "lr": 0.05}                       # another stage-1 variant config


CRT = {"method": "crt", "label": "cRT", "params": {"epochs": 2}}


ICC = {"method": "icc", "label": "ICC", "params": {"iterations": 1, "virtual_per_class": 20,
                                                   "m_epochs": 1, "e_batch_size": 64}}


def j(obj) -> str:
    return json.dumps(obj)


def fails(capsys, argv) -> str:
    """The command exits 1 with one error line; returns that line."""
    capsys.readouterr()
    assert main(argv) == 1
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    """One CE encoder, its features + stage-1 metrics and cRT predictions + metrics, all made
    by the producers' commands as the rules call them; and `lmdlt evaluate` of both."""
    d = link_digits(digits, tmp_path_factory.mktemp("scoring"))
    common = ["--split", str(d / "split.parquet"), "--threads", "1"]
    assert main(["train-stage1", *common, "--images", str(d / "images.h5"), "--params", j(CE),
                 "--seed", "0", "--device", "cpu", "--out", str(d / "model.pt")]) == 0
    assert main(["extract", *common, "--images", str(d / "images.h5"), "--checkpoint", str(d / "model.pt"),
                 "--device", "cpu", "--stage1-params", j(CE), "--out", str(d / "features.h5"),
                 "--metrics-out", str(d / "metrics_s1.json")]) == 0
    assert main(["train-stage2", *common, "--features", str(d / "features.h5"),
                 "--checkpoint", str(d / "model.pt"), "--params", j(CRT), "--stage1-params", j(CE),
                 "--seed", "0", "--out", str(d / "predictions.h5"),
                 "--metrics-out", str(d / "metrics_s2.json")]) == 0
    for name, src in (("s1", "features.h5"), ("s2", "predictions.h5")):
        assert main(["evaluate", "--predictions", str(d / src), "--groups", j(GROUPS),
                     "--manifest", str(d / "split.parquet"), "--out", str(d / f"old_{name}.json")]) == 0
    return d


@pytest.mark.parametrize("which", ["s1", "s2"])
def test_producer_metrics_equal_the_separate_evaluation(run, which):
    new, old = read_json(run / f"metrics_{which}.json"), read_json(run / f"old_{which}.json")
    assert new["train_counts"] == old["train_counts"] and new["n_images"] == old["n_images"]
    shared = {k: v for k, v in old["metrics"].items() if k not in GROUP_METRICS}
    assert {k: new["metrics"][k] for k in shared} == shared          # bit for bit
    assert not set(GROUP_METRICS) & set(new["metrics"])              # derived at the report
    assert group_metrics(new, GROUPS) == {k: old["metrics"][k] for k in GROUP_METRICS}
    row = {"row": "r", "files": {"0": str(run / f"metrics_{which}.json")}, "group_rule": GROUPS}
    for m in (*GROUP_METRICS, "bacc"):
        assert metric_values(row, m) == {"0": old["metrics"][m]}


def test_a_group_metric_without_a_rule_is_an_error_not_a_blank(run):
    row = {"row": "CE", "files": {"0": str(run / "metrics_s1.json")}}
    with pytest.raises(ValueError, match="tail_bacc needs the head/medium/tail rule"):
        metric_values(row, "tail_bacc")


def test_the_producers_record_the_encoders_config_hash(run):
    want = sha256_json(validate_variant("stage1", dict(CE)))
    for name in ("metrics_s1.json", "metrics_s2.json"):
        assert read_json(run / name)["provenance"]["parents"]["stage1_config"] == want
    s2 = read_json(run / "metrics_s2.json")["provenance"]["parents"]
    assert s2["scored_stage"] == "stage2"
    assert s2["scored_config"] == sha256_json(validate_variant("stage2", dict(CRT)))


def test_stage2_refuses_features_of_another_stage1_config(run, tmp_path, capsys):
    msg = fails(capsys, ["train-stage2", "--features", str(run / "features.h5"), "--params", j(CRT),
                         "--stage1-params", j(OTHER), "--seed", "0", "--out", str(tmp_path / "p.h5")])
    assert "was made for another stage-1 config" in msg
    assert "features.h5" in msg and "p.h5" in msg
    assert sha256_json(validate_variant("stage1", dict(OTHER))) in msg
    assert sha256_json(validate_variant("stage1", dict(CE))) in msg
    assert not (tmp_path / "p.h5").exists()


def test_icc_refuses_a_checkpoint_of_another_stage1_config(run, tmp_path, capsys):
    msg = fails(capsys, ["train-stage2-encoder", "--checkpoint", str(run / "model.pt"),
                         "--split", str(run / "split.parquet"), "--images", str(run / "images.h5"),
                         "--params", j(ICC), "--stage1-params", j(OTHER), "--seed", "0",
                         "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "icc.h5")])
    assert "model.pt was made for another stage-1 config" in msg
    assert not (tmp_path / "icc.h5").exists()


def test_evaluation_refuses_predictions_of_another_stage2_config(run, tmp_path, capsys):
    other = {**CRT, "params": {"epochs": 3}}
    assert "predictions.h5 was made for another stage-2 config" in fails(capsys, [
        "evaluate", "--predictions", str(run / "predictions.h5"), "--stage2-params", j(other),
        "--out", str(tmp_path / "m.json")])
    assert "predictions.h5 was made for another stage-1 config" in fails(capsys, [
        "evaluate", "--predictions", str(run / "predictions.h5"), "--stage1-params", j(OTHER),
        "--out", str(tmp_path / "m.json")])
    assert not (tmp_path / "m.json").exists()
    assert main(["evaluate", "--predictions", str(run / "predictions.h5"), "--stage1-params", j(CE),
                 "--stage2-params", j(CRT), "--out", str(tmp_path / "m.json")]) == 0


def test_the_report_refuses_metrics_of_another_variant(run):
    from lmdlt.report.spec import row_checks

    config = {"groups": GROUPS, "stage1": {"ce": validate_variant("stage1", dict(CE)),
                                           "other": validate_variant("stage1", dict(OTHER))},
              "stage2": {"crt": validate_variant("stage2", dict(CRT))}}
    ok = {"row": "CE + cRT", "files": {"0": str(run / "metrics_s2.json")}, **row_checks(config, "ce", "crt")}
    assert metric_values(ok, "bacc")
    bad = {**ok, **row_checks(config, "other", "crt")}   # e.g. a stale file at the row's path
    with pytest.raises(ValueError, match=r"metrics_s2\.json scores an output of another stage1 config"):
        metric_values(bad, "bacc")
