"""`lmdlt runs`: one table of every run (metrics + flattened parameters), filtered, printed,
written as Parquet / CSV."""
import shutil

import pandas as pd
import pytest
import yaml

from lmdlt.cli import main
from lmdlt.io import read_json, sha256_json
from lmdlt.metrics import group_metrics
from lmdlt.runs import collect_runs, filter_runs


@pytest.fixture(scope="module")
def runs(tiny_experiment):
    return collect_runs(tiny_experiment.parent)


def test_every_metrics_file_is_one_row_with_its_metrics_and_parameters(runs, tiny_experiment):
    # 2 seeds x (the stage-1 row ce, ce/crt, ce/icc)
    assert len(runs) == 6
    assert sorted(zip(runs["run"], runs["seed"])) == sorted(
        (r, s) for r in ("ce", "ce/crt", "ce/icc") for s in (0, 1))
    assert set(runs["experiment"]) == {"tiny"}
    icc = runs[(runs["run"] == "ce/icc") & (runs["seed"] == 1)].iloc[0]
    record = read_json(tiny_experiment / "seed1/stage2/ce/icc/metrics.json")
    assert icc["bacc"] == record["metrics"]["bacc"] and icc["auc"] == record["metrics"]["auc"]
    config = yaml.safe_load((tiny_experiment / "report/config.yaml").read_text())
    assert icc["tail_bacc"] == group_metrics(record, config["groups"])["tail_bacc"]
    assert icc["method"] == "icc" and icc["row"] == "CE + ICC"
    # both stages' parameters, flattened; defaults filled (the variant as it ran)
    assert icc["stage2.params.iterations"] == 2 and icc["stage2.params.lambda_e"] == 1e-4
    assert icc["stage1.epochs"] == 3 and icc["stage1.model.arch"] == config["stage1"]["ce"]["model"]["arch"]
    ce = runs[(runs["run"] == "ce") & (runs["seed"] == 0)].iloc[0]
    assert ce["method"] == "ce" and pd.isna(ce["stage2.method"])


def test_where_filters_by_column_and_parameter(runs):
    icc = filter_runs(runs, ["method=icc"])
    assert sorted(icc["run"] + "@" + icc["seed"].astype(str)) == ["ce/icc@0", "ce/icc@1"]
    assert list(filter_runs(runs, ["method=icc", "seed=0"])["seed"]) == [0]
    assert len(filter_runs(runs, ["method!=icc"])) == 4
    assert set(filter_runs(runs, ["iterations=2"])["run"]) == {"ce/icc"}  # a parameter by its last part
    best = runs["bacc"].max()
    assert list(filter_runs(runs, [f"bacc>={best}"])["bacc"]) == [best]
    with pytest.raises(ValueError, match="no such column; did you mean method"):
        filter_runs(runs, ["methd=icc"])
    with pytest.raises(ValueError, match="several columns end in 'epochs'"):
        filter_runs(runs, ["epochs=3"])


def test_the_cli_prints_the_runs_and_writes_parquet_and_csv(tiny_experiment, tmp_path, capsys):
    pq, csv = tmp_path / "runs.parquet", tmp_path / "runs.csv"
    assert main(["runs", str(tiny_experiment.parent), "--where", "method=icc",
                 "--parquet", str(pq), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("tiny ")]
    assert len(lines) == 2 and all(" ce/icc " in line and " icc " in line for line in lines)
    assert "2 of 6 runs" in out and "│" in out
    table = pd.read_parquet(pq)
    assert list(table["run"]) == ["ce/icc", "ce/icc"] and "stage2.params.lambda_e" in table
    assert pd.read_csv(csv)["bacc"].tolist() == pytest.approx(table["bacc"].tolist())


def test_parameters_come_from_the_checkpoint_when_the_config_moved_on(tiny_experiment, tmp_path):
    copy = tmp_path / "results" / "tiny"
    shutil.copytree(tiny_experiment, copy, ignore=shutil.ignore_patterns("tracking"))
    config = yaml.safe_load((copy / "report/config.yaml").read_text())
    ran = dict(config["stage1"]["ce"])
    config["stage1"]["ce"]["epochs"] = 30
    (copy / "report/config.yaml").write_text(yaml.safe_dump(config))
    table = collect_runs(copy)
    assert set(table["stage1.epochs"]) == {ran["epochs"]}  # what the checkpoints were trained with
    assert sha256_json(ran) == read_json(copy / "seed0/stage1/ce/metrics.json")["provenance"]["parents"]["stage1_config"]


def test_an_empty_folder_is_no_runs(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 0
    assert "no metrics.json" in capsys.readouterr().out
