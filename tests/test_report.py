"""The paper's tables and figures: aggregation from the metric files only, ECE, bootstrap, LaTeX."""
import copy
import json
import re

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from lmdlt.config import ConfigError, validate_config
from lmdlt.io import write_json
from lmdlt.metrics import compute_metrics, expected_calibration_error
from lmdlt.report import paper_numbers
from lmdlt.report.figures import class_distribution_figure, sweep_figure, sweep_points
from lmdlt.report.paper_tables import render, write_paper_table
from lmdlt.report.spec import figure_specs, sweep_runs, table_specs
from lmdlt.report.stats import balanced_accuracy_batch, paired_bootstrap
from lmdlt.report.tables import to_markdown


ICC = {"iterations": 2, "virtual_per_class": 50, "lambda_e": 1e-4}
CONFIG = {
    "dataset": {"name": "synthetic", "source": "digits", "image_size": 8},
    "split": {"protocol": "cui", "imbalance_ratio": 100},
    "seeds": [0, 1, 2],
    "groups": {"rule": "rank", "sizes": [1, 1, 1]},
    "stage1": {"ce": {"method": "ce", "label": "CE"},
               "rrl": {"method": "rrl", "label": "RRL", "params": {"lambda_1": 1.0}},
               "rrl_l1_3": {"method": "rrl", "label": "RRL 3", "params": {"lambda_1": 3.0}}},
    "stage2": {
        "crt": {"method": "crt", "label": "cRT", "stage1": ["ce"]},
        "icc": {"method": "icc", "label": "ICC", "stage1": ["ce", "rrl", "rrl_l1_3"], "params": dict(ICC)},
        "icc_le1e-2": {"method": "icc", "stage1": ["rrl"], "params": {**ICC, "lambda_e": 1e-2}},
        "icc_EuMu": {"method": "icc", "stage1": ["rrl"], "params": {**ICC, "m_sampler": "instance"}},
        "icc_J1": {"method": "icc", "stage1": ["rrl"], "params": {**ICC, "iterations": 1}},
        "icc_other": {"method": "icc", "stage1": ["rrl"], "params": {**ICC, "e_lr": 0.5}},
    },
    "report": {
        "lmd": "rrl/icc",
        "tables": {
            "table1": {"rows": [{"run": "ce", "paper": "CE"}, {"run": "ce/crt", "paper": "Decoupling"},
                                {"run": "rrl/icc", "label": "LMD", "paper": "LMD"}]},
            "table3": {"rows": [{"run": "ce", "paper": "CE"}, {"run": "rrl/icc", "label": "LMD", "paper": "LMD"}]},
            "table4": {"reference": "rrl/icc"},
            "table5": {"reference": "rrl/icc"},
        },
        "figures": {"fig6": {"references": ["rrl/icc"]}, "fig7": {"references": ["rrl/icc"]},
                    "class_distribution": True},
    },
}
K, N_TEST = 3, 60


def paths(root):
    return {"stage1_metrics": f"{root}/seed{{seed}}/stage1/{{s1}}/metrics.json",
            "stage2_metrics": f"{root}/seed{{seed}}/stage2/{{s1}}/{{s2}}/metrics.json",
            "features": f"{root}/seed{{seed}}/stage1/{{s1}}/features.h5",
            "predictions": f"{root}/seed{{seed}}/stage2/{{s1}}/{{s2}}/predictions.h5",
            "stage2_benchmark": f"{root}/bench/seed{{seed}}/stage2_{{s1}}_{{s2}}.tsv",
            "split": f"{root}/seed{{seed}}/split.parquet"}


def config(**report):
    cfg = copy.deepcopy(CONFIG)
    cfg["report"].update(report)
    return validate_config(cfg)


def write_runs(spec_rows, rng, drop=None):
    from lmdlt.metrics import group_metrics

    """Synthetic metric files (random metric values) and prediction files for the rows."""
    labels = np.repeat(np.arange(K), N_TEST // K)
    ids = np.array([f"img{i:03d}" for i in range(N_TEST)], dtype=object)
    for r in spec_rows:
        for seed, path in r["files"].items():
            metrics = {m: float(rng.uniform(0.3, 0.95)) for m in
                       ("bacc", "auc", "f1", "precision", "recall", "kappa_quadratic", "head_bacc",
                        "medium_bacc", "tail_bacc", "ece")}
            if drop and (r["run"], seed) == drop:
                metrics.pop("ece")
            # head / medium / tail as the report derives them: from the per-class recall
            record = {"metrics": metrics, "train_counts": [50, 10, 2], "class_names": ["a", "b", "c"]}
            metrics["per_class_recall"] = [float(x) for x in rng.uniform(0.3, 0.95, K)]
            metrics.update(group_metrics(record, r["group_rule"]))
            # what the producers record: the configs of the output they scored
            record["provenance"] = {"parents": {
                "stage1_config": r["config_hashes"]["stage1"],
                "scored_stage": "stage2" if r["stage2"] else "features",
                "scored_config": r["config_hashes"].get("stage2")}}
            write_json(path, record)
            pred = r["predictions"][seed]
            from pathlib import Path
            Path(pred).parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(pred, "w") as f:
                f["test/labels"] = labels
                f["test/logits"] = rng.normal(size=(N_TEST, K)) + 2.0 * np.eye(K)[labels] * rng.uniform()
                f.create_dataset("test/ids", data=ids, dtype=h5py.string_dtype())


def file_values(row, metric):
    from lmdlt.io import read_json
    return np.array([read_json(p)["metrics"][metric] for p in row["files"].values()
                     if metric in read_json(p)["metrics"]])


# ------------------------------------------------------------------ ECE

def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.65, 0.35], [0.25, 0.75], [0.15, 0.85]])
    labels = np.array([0, 1, 1, 0])  # correct, wrong, correct, wrong
    # 5 bins: (0.6, 0.8] holds 0.65 (wrong) and 0.75 (right): |0.5 - 0.70| * 2/4 = 0.1
    #         (0.8, 1.0] holds 0.90 (right) and 0.85 (wrong): |0.5 - 0.875| * 2/4 = 0.1875
    assert expected_calibration_error(labels, probs, n_bins=5) == pytest.approx(0.2875)
    # a single bin: |accuracy - mean confidence| = |0.5 - 0.7875|
    assert expected_calibration_error(labels, probs, n_bins=1) == pytest.approx(0.2875)
    confident = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(np.array([0, 1]), confident) == 0.0
    assert expected_calibration_error(np.array([1, 0]), confident) == 1.0


def test_ece_is_in_the_run_metrics():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    logits = rng.normal(size=(30, 3))
    m = compute_metrics(labels, logits, {"head": [0], "medium": [1], "tail": [2]})
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert m["ece"] == pytest.approx(expected_calibration_error(labels, probs))


# ------------------------------------------------------------------ bootstrap

def test_vectorised_bacc_equals_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 80)
    pred = rng.integers(0, 4, 80)
    idx = rng.integers(0, 80, size=(20, 80))
    fast = balanced_accuracy_batch(labels, pred, idx, 4)
    slow = [balanced_accuracy_score(labels[i], pred[i]) for i in idx]
    np.testing.assert_allclose(fast, slow)


def test_paired_bootstrap_known_answer():
    # one class, n images: A always right, B right on 70%: the recall difference is 0.3 with
    # standard error sqrt(0.3 * 0.7 / n) (B's errors resampled; A's recall is always 1)
    n = 2000
    labels = np.zeros(n, dtype=int)
    probs_a = np.tile([0.9, 0.1], (n, 1))
    probs_b = probs_a.copy()
    probs_b[: int(0.3 * n)] = [0.1, 0.9]
    res = paired_bootstrap([labels], [probs_a], [probs_b], "bacc", resamples=4000, seed=3)
    se = np.sqrt(0.3 * 0.7 / n)
    assert res["diff"] == pytest.approx(0.3)
    assert res["lo"] == pytest.approx(0.3 - 1.96 * se, abs=0.004)
    assert res["hi"] == pytest.approx(0.3 + 1.96 * se, abs=0.004)
    assert res["p"] < 0.001
    same = paired_bootstrap([labels], [probs_b], [probs_b], "bacc", resamples=500)
    assert (same["diff"], same["lo"], same["hi"], same["p"]) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_averages_seeds():
    labels = np.zeros(100, dtype=int)
    right, wrong = np.tile([0.9, 0.1], (100, 1)), np.tile([0.1, 0.9], (100, 1))
    # seed 0: A right, B wrong (+1); seed 1: both right (0): mean difference 0.5, no variance
    res = paired_bootstrap([labels, labels], [right, right], [wrong, right], "bacc", resamples=200)
    assert (res["diff"], res["lo"], res["hi"], res["n_seeds"]) == (0.5, 0.5, 0.5, 2)


# ------------------------------------------------------------------ spec resolution

def test_sweeps_find_the_runs_that_differ_only_in_the_varied_setting(tmp_path):
    cfg = config()
    assert sweep_runs(cfg, "rrl/icc", ["lambda_e"], "x") == [("rrl", "icc"), ("rrl", "icc_le1e-2")]
    assert sweep_runs(cfg, "rrl/icc", ["lambda_1"], "x") == [("rrl", "icc"), ("rrl_l1_3", "icc")]
    specs = table_specs(cfg, paths(tmp_path))
    assert [r["row"] for r in specs["table4"]["rows"]] == ["lambda_e = 1e-02", "lambda_e = 1e-04"]
    assert [r["row"] for r in specs["table5"]["rows"]] == ["E uniform, M uniform", "E uniform, M class-balanced"]
    assert specs["table1"]["paper"] is None  # not the paper's dataset
    figs = figure_specs(cfg, paths(tmp_path))
    assert [p["x"] for p in figs["fig6"]["series"][0]["points"]] == [1, 2]
    assert [p["x"] for p in figs["fig7"]["series"][0]["points"]] == [1.0, 3.0]
    assert "icc_other" not in json.dumps(figs) and "icc_other" not in json.dumps(specs)


def test_a_declared_row_the_config_lacks_is_a_config_error(tmp_path):
    cfg = config()
    cfg["report"]["tables"]["table1"]["rows"].append({"run": "rrl/crt"})  # crt runs on ce only
    with pytest.raises(ConfigError, match=r"report.tables.table1.rows\[3\]: no evaluated run 'rrl/crt'"):
        table_specs(cfg, paths(tmp_path))


# ------------------------------------------------------------------ tables

def test_table_numbers_are_the_aggregation_of_the_metric_files(tmp_path):
    spec = table_specs(config(), paths(tmp_path))["table1"]
    write_runs(spec["rows"], np.random.default_rng(0), drop=("ce", "1"))
    table = write_paper_table(spec, tmp_path / "t1.csv", tmp_path / "t1.md", tmp_path / "t1.tex")
    csv = pd.read_csv(tmp_path / "t1.csv").set_index("row")
    md = (tmp_path / "t1.md").read_text()
    assert list(csv.index) == ["CE", "CE + cRT", "LMD"] == list(table["row"])
    for r in spec["rows"]:
        for m in spec["metrics"] + ["ece"]:
            v = file_values(r, m)
            assert csv.loc[r["row"], f"{m}_mean"] == pytest.approx(v.mean(), rel=1e-6)
            assert csv.loc[r["row"], f"{m}_std"] == pytest.approx(v.std(ddof=1), rel=1e-5)
            assert csv.loc[r["row"], f"{m}_n"] == len(v)
        cells = [f"{100 * file_values(r, m).mean():.2f} ± {100 * file_values(r, m).std(ddof=1):.2f}"
                 for m in spec["metrics"]]
        line = next(x for x in md.splitlines() if x.startswith(f"| {r['row']} |"))
        assert [c.strip("* ") for c in line.strip("| ").split(" | ")[1:]] == cells
    for m in spec["metrics"]:  # the best mean of each column, and only it, is bold
        best = csv[f"{m}_mean"].idxmax()
        col = spec["metrics"].index(m) + 1
        for x in md.splitlines()[4:7]:
            cell = x.strip("| ").split(" | ")[col]
            assert cell.startswith("**") == x.startswith(f"| {best} |")
    # a seed whose metric file lacks ECE is marked, never a silently smaller mean
    assert csv.loc["CE", "ece_n"] == 2 and "† CE: fewer seeds than declared for ECE 2/3" in md
    # the LMD row against the others (paired bootstrap), in the notes
    assert np.isnan(csv.loc["LMD", "vs_lmd_diff"]) and csv["vs_lmd_diff"].notna().sum() == 2
    assert "Paired bootstrap: BACC of LMD [rrl/icc] minus each row" in md and "vs CE " in md
    assert "Side by side with the paper" not in md


def test_a_missing_metric_file_is_an_error(tmp_path):
    spec = table_specs(config(), paths(tmp_path))["table3"]
    write_runs(spec["rows"], np.random.default_rng(0))
    (tmp_path / "seed2" / "stage1" / "ce" / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="row 'CE', seed 2: metric file .* is missing"):
        write_paper_table(spec, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")


def test_paper_columns_on_the_paper_dataset(tmp_path):
    spec = table_specs(config(paper="hyper_kvasir"), paths(tmp_path))["table1"]
    assert spec["paper"] == "hyper_kvasir"
    write_runs(spec["rows"], np.random.default_rng(2))
    write_paper_table(spec, tmp_path / "t1.csv", tmp_path / "t1.md", tmp_path / "t1.tex")
    csv = pd.read_csv(tmp_path / "t1.csv").set_index("row")
    assert csv.loc["LMD", "auc_paper"] == pytest.approx(0.9896)
    assert csv.loc["LMD", "recall_paper"] == pytest.approx(0.6727)
    assert csv.loc["CE", "f1_paper"] == pytest.approx(0.4662)
    assert csv.loc["LMD", "auc_diff"] == pytest.approx(csv.loc["LMD", "auc_mean"] - 0.9896)
    md = (tmp_path / "t1.md").read_text()
    assert "## Side by side with the paper (hyper_kvasir)" in md
    lmd = next(x for x in md.splitlines()[::-1] if x.startswith("| LMD |"))
    assert f"| 98.96 | {100 * (csv.loc['LMD', 'auc_mean'] - 0.9896):+.2f} |" in lmd
    # Table 3 takes its column from the experiment's imbalance ratio
    t3 = table_specs(config(paper="isic2019_lt"), paths(tmp_path))["table3"]
    write_paper_table(t3, tmp_path / "t3.csv", tmp_path / "t3.md", tmp_path / "t3.tex")
    assert pd.read_csv(tmp_path / "t3.csv").set_index("row").loc["LMD", "bacc_paper"] == pytest.approx(0.7075)


def test_paper_numbers_match_lmd_rows():
    """The transcription checked against LMD's own rows (lmdlt/report/paper_numbers.py's docstring)."""
    lmd = {"table1": ("LMD", [98.96, 62.99, 92.43, 62.35, 67.27]),
           "table2": ("LMD", [63.79, 61.05, 60.59, 61.63])}
    for table, (row, values) in lmd.items():
        metrics = ["auc", "f1", "kappa_quadratic", "precision", "recall"] if table == "table1" else \
            ["head_bacc", "medium_bacc", "tail_bacc", "bacc"]
        assert [round(100 * paper_numbers.paper_value(table, row, m)[0], 2) for m in metrics] == values
    assert [round(100 * paper_numbers.paper_value("table3", "LMD", "bacc", r)[0], 2)
            for r in (100, 300, 500)] == [70.75, 59.39, 56.88]
    assert [round(100 * paper_numbers.paper_value("table3", "LMD", "auc", r)[0], 2)
            for r in (100, 300, 500)] == [95.11, 94.01, 93.69]
    assert paper_numbers.paper_value("table4", 1e-4, "bacc")[0] == pytest.approx(0.6727)
    assert paper_numbers.paper_value("table5", ["instance", "class_balanced"], "tail_bacc") == \
        pytest.approx((0.6059, 0.0031))


def parse_booktabs(tex: str) -> list[list[str]]:
    """Check a LaTeX table's booktabs structure; return the cells of its body rows."""
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    m = re.search(r"\\begin\{tabular\}\{([lcr]+)\}\n(.*)\\end\{tabular\}", tex, re.S)
    assert m, "no tabular"
    ncol, body = len(m.group(1)), m.group(2).strip().splitlines()
    assert body[0] == r"\toprule" and body[-1] == r"\bottomrule"
    assert sum(line == r"\midrule" for line in body) == 1
    mid = body.index(r"\midrule")
    rows = []
    for i, line in enumerate(body[1:-1], start=1):
        if line.startswith(("\\midrule", "\\cmidrule")):
            continue
        assert line.endswith(r"\\"), line
        cells = re.split(r"(?<!\\)&", line[:-2])
        spans = sum(int(s) - 1 for s in re.findall(r"\\multicolumn\{(\d+)\}", line))
        assert len(cells) + spans == ncol, line
        if i > mid:
            rows.append([c.strip() for c in cells])
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    return rows


def test_latex_is_a_booktabs_table_and_table3_combines(tmp_path):
    cfg = config()
    spec = table_specs(cfg, paths(tmp_path / "a"))["table3"]
    write_runs(spec["rows"], np.random.default_rng(4))
    write_paper_table(spec, tmp_path / "a.csv", tmp_path / "a.md", tmp_path / "a.tex")
    rows = parse_booktabs((tmp_path / "a.tex").read_text())
    assert [r[0] for r in rows] == ["CE", "LMD"] and len(rows[0]) == 3
    assert "r = 100" in (tmp_path / "a.tex").read_text()
    cfg300 = copy.deepcopy(cfg)
    cfg300["split"]["imbalance_ratio"] = 300
    cfg300["dataset"]["name"] = "synthetic-r300"
    spec300 = table_specs(cfg300, paths(tmp_path / "b"))["table3"]
    write_runs(spec300["rows"], np.random.default_rng(5))
    write_paper_table(spec300, tmp_path / "b.csv", tmp_path / "b.md", tmp_path / "b.tex")
    render([tmp_path / "b.csv", tmp_path / "a.csv"], "Table 3", tmp_path / "c.md", tmp_path / "c.tex", "t3",
           absent=["synthetic-r500"])
    assert "Not run yet (no table CSV): synthetic-r500." in (tmp_path / "c.md").read_text()
    tex = (tmp_path / "c.tex").read_text()
    rows = parse_booktabs(tex)
    assert len(rows[0]) == 5 and r"\multicolumn{2}{c}{r = 100} & \multicolumn{2}{c}{r = 300}" in tex
    md = (tmp_path / "c.md").read_text()
    a, b = pd.read_csv(tmp_path / "a.csv").set_index("row"), pd.read_csv(tmp_path / "b.csv").set_index("row")
    line = next(x for x in md.splitlines() if x.startswith("| CE |"))
    cells = [c.strip("* ") for c in line.strip("| ").split(" | ")[1:]]
    assert cells[1].startswith(f"{100 * a.loc['CE', 'bacc_mean']:.2f}")  # r = 100 first
    assert cells[3].startswith(f"{100 * b.loc['CE', 'bacc_mean']:.2f}")
    with pytest.raises(ValueError, match="different tables"):
        t4 = table_specs(cfg, paths(tmp_path / "a"))["table4"]
        write_runs(t4["rows"], np.random.default_rng(6))
        write_paper_table(t4, tmp_path / "d.csv", tmp_path / "d.md", tmp_path / "d.tex")
        render([tmp_path / "a.csv", tmp_path / "d.csv"], "x", tmp_path / "e.md", tmp_path / "e.tex", "x")


# ------------------------------------------------------------------ figures

def test_sweep_figure_plots_the_aggregated_metric_files(tmp_path):
    cfg = config()
    spec = figure_specs(cfg, paths(tmp_path))["fig6"]
    points = spec["series"][0]["points"]
    write_runs(points, np.random.default_rng(7))
    for p in points:
        for f in p["benchmarks"].values():
            from pathlib import Path
            Path(f).parent.mkdir(parents=True, exist_ok=True)
            Path(f).write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t100\n")
    x, mean, std = sweep_points(spec["series"][0], "bacc")
    assert list(x) == [1, 2]
    assert mean[0] == pytest.approx(file_values(points[0], "bacc").mean())
    assert std[1] == pytest.approx(file_values(points[1], "bacc").std(ddof=1))
    sweep_figure(spec, tmp_path / "f.png", tmp_path / "f.pdf")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"


def test_class_distribution_figure(tmp_path):
    from lmdlt.data.splits import write_manifest

    spec = figure_specs(config(), paths(tmp_path))["class_distribution"]
    for seed, path in spec["splits"].items():
        table = pd.DataFrame({"id": [f"i{j}" for j in range(9)], "label": [0, 0, 0, 0, 1, 1, 2, 0, 1],
                              "split": ["train"] * 6 + ["val", "test", "test"]})
        write_manifest(path, table, ["a", "b", "c"], {"stage": "split", "seed": int(seed)})
    class_distribution_figure(spec, tmp_path / "c.png", tmp_path / "c.pdf")
    assert (tmp_path / "c.png").stat().st_size > 5000


def test_table5_marks_the_combinations_not_in_the_config(tmp_path):
    spec = table_specs(config(paper="isic_archive_lt"), paths(tmp_path))["table5"]
    write_runs(spec["rows"], np.random.default_rng(8))
    write_paper_table(spec, tmp_path / "t5.csv", tmp_path / "t5.md", tmp_path / "t5.tex")
    csv = pd.read_csv(tmp_path / "t5.csv")
    assert csv["row"].tolist() == ["E uniform, M uniform", "E class-balanced, M uniform",
                                   "E class-balanced, M class-balanced", "E uniform, M class-balanced"]
    assert csv["run"].fillna("").tolist() == ["rrl/icc_EuMu", "", "", "rrl/icc"]
    assert csv.loc[1, "tail_bacc_paper"] == pytest.approx(0.5477)  # paper numbers even when not run
    md = (tmp_path / "t5.md").read_text()
    assert "| E class-balanced, M uniform | not run | not run | not run | not run |" in md
    assert "Not in this config (no run declared or found): E class-balanced, M uniform; " in md
    parse_booktabs((tmp_path / "t5.tex").read_text())


def test_results_table_aggregates_the_files_and_marks_missing_metrics(tmp_path):
    """results.md/csv: the mean and sample std of the metric files; a metric missing from one
    seed's file is marked with its count (never a silently smaller mean); a missing file stops."""
    from lmdlt.report.tables import write_table

    bacc = {0: 0.5, 1: 0.7, 2: 0.9}
    files = {}
    for seed, b in bacc.items():
        metrics = {"bacc": b, "auc": 0.8 + seed / 100}
        if seed != 2:
            metrics["ece"] = 0.1 * (seed + 1)  # absent from seed 2's file
        files[str(seed)] = tmp_path / f"m{seed}.json"
        write_json(files[str(seed)], {"metrics": metrics})
    rows = [{"row": "CE", "stage1": "ce", "stage2": None, "files": {s: str(p) for s, p in files.items()}}]
    table = write_table(rows, ["bacc", "auc", "ece"], "t", {"rule": "rank", "sizes": [1, 1, 1]},
                        tmp_path / "r.md", tmp_path / "r.csv")
    csv = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert csv["bacc_mean"] == pytest.approx(0.7) and csv["bacc_std"] == pytest.approx(np.std([.5, .7, .9], ddof=1))
    assert csv["n_seeds"] == 3 and csv["ece_n"] == 2 and csv["ece_mean"] == pytest.approx(0.15)
    md = (tmp_path / "r.md").read_text()
    assert "| CE | **70.00 ± 20.00** |" in md and "**15.00 ± 7.07** †" in md and "CE ECE 2/3" in md
    assert "seeds [0, 1, 2]" in md and len(table) == 1
    files["1"].unlink()
    with pytest.raises(FileNotFoundError, match=r"row 'CE', seed 1: metric file .*m1.json is missing"):
        write_table(rows, ["bacc"], "t", None, tmp_path / "r2.md", tmp_path / "r2.csv")
    assert not (tmp_path / "r2.md").exists() and not (tmp_path / "r2.csv").exists()


def _table(n_seeds: int) -> pd.DataFrame:
    return pd.DataFrame([{"row": "CE", "stage1": "ce", "stage2": "", "bacc_mean": 0.5, "bacc_std": 0.0,
                          "bacc_n": n_seeds, "n_seeds": n_seeds}])


def test_one_seed_shows_no_spread():
    assert "± 0.00" not in to_markdown(_table(1), ["bacc"], "t", "c")
    assert "50.00 ± 0.00" in to_markdown(_table(2), ["bacc"], "t", "c")
