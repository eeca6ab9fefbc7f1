"""The results page is written by the pipeline from its CSVs: every number on it is the
CSVs', the reading follows the bootstrap intervals, and the committed page is what its committed
CSVs render to."""
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lmdlt.report.results_page import render_from_copies, write_results_page

REPO = Path(__file__).resolve().parents[1]
META = {"title": "T", "table_title": "Tab", "command": "snakemake ...", "machine": "m",
        "budget": "b", "curve_note": "curve"}
RULE = "Head / medium / tail by training-count rank."


def row(label, run, means, vs=None, is_ref=False):
    r = {"row": label, "run": run, "is_lmd": is_ref, "seeds": "0 1 2", "group_rule": RULE}
    for m, v in zip(("head_bacc", "medium_bacc", "tail_bacc", "bacc"), means):
        r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_n"] = v, 0.01, 3
    if vs is not None:  # reference minus row: diff, lo, hi
        r["vs_lmd_diff"], r["vs_lmd_lo"], r["vs_lmd_hi"] = vs
    return r


@pytest.fixture
def tables(tmp_path):
    main = pd.DataFrame([
        row("CE + cRT", "ce/crt", (0.62, 0.55, 0.35, 0.51), is_ref=True),
        row("Better", "a", (0.64, 0.60, 0.41, 0.56), vs=(-0.05, -0.08, -0.02)),
        row("Same", "b", (0.60, 0.55, 0.33, 0.50), vs=(0.01, -0.02, 0.04)),
        row("Worse", "c", (0.55, 0.40, 0.10, 0.35), vs=(0.16, 0.13, 0.19)),
    ])
    naive = main.copy()
    naive["bacc_mean"] = main["bacc_mean"] + [0.10, 0.04, 0.07, 0.01]
    naive["seeds"] = "0"  # the naive experiment may run fewer seeds: the page says which
    main.to_csv(tmp_path / "table2.csv", index=False)
    naive.to_csv(tmp_path / "naive.csv", index=False)
    bench = tmp_path / "bench"
    bench.mkdir()
    for i, s in enumerate((1800.0, 1800.0, 3600.0)):
        f = bench / f"j{i}.tsv"
        f.write_text(f"s\th:m:s\tcpu_time\n{s}\t0:00:00\t{s / 2}\n")
        end = 1.0e9 + (0, 1800, 5400)[i]  # jobs end at t0, t0 + 0.5 h, t0 + 1.5 h: a 2 h span
        os.utime(f, (end, end))
    return tmp_path, main, naive, sorted(map(str, bench.glob("*.tsv")))


def cells(page: str, label: str) -> list[str]:
    line = next(x for x in page.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_every_number_on_the_page_is_the_csvs(tables):
    d, main, naive, bench = tables
    page = write_results_page(d / "table2.csv", d / "page" / "results.md", META,
                              naive_csv=d / "naive.csv", benchmark_files=bench)
    for _, r in main.iterrows():
        got = cells(page, r["row"])
        for c, m in zip(got[:4], ("head_bacc", "medium_bacc", "tail_bacc", "bacc")):
            assert c == f"{100 * r[m + '_mean']:.1f} ± {100 * r[m + '_std']:.1f}"
    assert cells(page, "Better")[4] == "+5.0 [+2.0, +8.0]"   # row minus CE + cRT
    assert cells(page, "Worse")[4] == "-16.0 [-19.0, -13.0]"
    assert cells(page, "CE + cRT")[4] == "reference"
    # the reading follows the intervals, not the means
    assert re.search(r"above CE \+ cRT beyond the interval: Better \(", page)
    assert re.search(r"below it beyond the interval: Worse \(", page)
    assert re.search(r"not distinguishable from it: Same \(", page)
    assert ("changes BACC by +5.5 points on average over 4 rows (from +1.0 to +10.0; naive seeds "
            "0, lesion-grouped seeds 0, 1, 2)") in page
    assert "naive (lesion-leaking) split, seeds 0, against the lesion-grouped means above (seeds 0, 1, 2)" in page
    assert ("3 jobs, 2.00 h of job wall time summed over jobs; 2.00 h wall from the "
            "first job's start to the last job's end") in page and "CPU" not in page
    assert "**Command:** `snakemake ...`" in page and RULE in page


def test_the_page_re_renders_from_its_csv_copies(tables):
    d, *_ , bench = tables
    page = write_results_page(d / "table2.csv", d / "page" / "results.md", META,
                              naive_csv=d / "naive.csv", benchmark_files=bench)
    assert (d / "page" / "results.md").read_text() == page
    assert render_from_copies(d / "page", META) == page
    # the copies carry the numbers: a changed one changes the page
    t = pd.read_csv(d / "page" / "results" / "table.csv")
    t.loc[1, "bacc_mean"] += 0.01
    t.to_csv(d / "page" / "results" / "table.csv", index=False)
    assert render_from_copies(d / "page", META) != page


def test_without_the_naive_experiment_the_page_says_so(tables):
    d, *_ = tables
    page = write_results_page(d / "table2.csv", d / "p.md", META)
    assert "the naive split: not run yet" in page and "## The naive split" not in page


def test_the_learning_curve_comes_from_the_checkpoints_history(tables):
    import torch

    d, *_ = tables
    hist = [{"epoch": e, "val_bacc": v} for e, v in ((1, 0.2), (2, 0.31), (3, 0.305))]
    torch.save({"meta": {"provenance": {"seed": 0}, "history": hist}}, d / "model.pt")
    page = write_results_page(d / "table2.csv", d / "p.md", META, curve_checkpoints=[d / "model.pt"])
    assert "| epoch | seed 0 |" in page
    assert "| 2 | 31.0 |" in page and "| 3 | 30.5 |" in page


def test_the_budget_table_is_what_each_schedule_ended_at(tables):
    """The page's budget table: each curve checkpoint's epochs and kept validation BACC, the test
    BACC of the metrics beside it and of its cRT, sorted by epochs; and it re-renders from its copy."""
    import json

    import torch

    d, *_ = tables
    ckpts = []
    for v, epochs, val, test, crt in (("ce", 40, 0.318, 0.355, 0.505), ("ce_e10", 10, 0.251, 0.240, None),
                                      ("ce_e20", 20, 0.297, 0.300, 0.429)):
        run = d / "curve" / "seed0" / "stage1" / v
        run.mkdir(parents=True)
        torch.save({"meta": {"provenance": {"seed": 0, "config": {"epochs": epochs}, "config_hash": f"h{v}"},
                             "selected_val_bacc": val, "history": []}}, run / "model.pt")
        scored = {"provenance": {"parents": {"stage1_config": f"h{v}"}}}  # what the producers record
        (run / "metrics.json").write_text(json.dumps({"metrics": {"bacc": test}, **scored}))
        if crt is not None:
            s2 = d / "curve" / "seed0" / "stage2" / v / "crt"
            s2.mkdir(parents=True)
            (s2 / "metrics.json").write_text(json.dumps({"metrics": {"bacc": crt}, **scored}))
        ckpts.append(run / "model.pt")
    meta = {**META, "budget_note": "budgets"}
    page = write_results_page(d / "table2.csv", d / "page" / "results.md", meta, budget_checkpoints=ckpts)
    lines = [x for x in page.splitlines() if x.startswith("| ") and x.split("|")[1].strip().isdigit()]
    assert lines == ["| 10 | 0 | 25.1 | 24.0 | – |", "| 20 | 0 | 29.7 | 30.0 | 42.9 |",
                     "| 40 | 0 | 31.8 | 35.5 | 50.5 |"]
    assert "| schedule (epochs) | seed | val BACC (%) | test BACC (%) | test BACC + crt (%) |" in page
    assert "budgets" in page and render_from_copies(d / "page", meta) == page
    no_stage2 = write_results_page(d / "table2.csv", d / "p2" / "results.md", meta,
                                   budget_checkpoints=ckpts, budget_stage2=None)
    assert "+ crt" not in no_stage2 and "| 20 | 0 | 29.7 | 30.0 |" in no_stage2
    # a cRT scored on another encoder than this checkpoint (a stale file) is refused, by name
    stale = d / "curve" / "seed0" / "stage2" / "ce_e20" / "crt" / "metrics.json"
    stale.write_text(json.dumps({"metrics": {"bacc": 0.9}, "provenance": {"parents": {"stage1_config": "old"}}}))
    with pytest.raises(ValueError, match=r"learning curve ce_e20.*another stage1 config \(config_hash old\)"):
        write_results_page(d / "table2.csv", d / "p3" / "results.md", meta, budget_checkpoints=ckpts)


def test_the_committed_page_is_what_its_committed_csvs_render_to():
    page = REPO / "docs" / "results.md"
    if not (page.is_file() and (REPO / "docs" / "results" / "table.csv").is_file()):
        pytest.skip("docs/results.md has not been generated yet (it needs the HAM10000-LT runs)")
    over = yaml.safe_load((REPO / "workflow/experiments/overlays/results-ham10000.yaml").read_text())
    meta = {"title": "Results", "table_title": "Results", "curve_note": "CE's validation BACC per epoch.",
            **over["report"]["results_page"]}
    assert render_from_copies(page.parent, meta) == page.read_text()


def test_the_cli_command_the_rule_calls_writes_the_page(tables):
    import json

    from lmdlt.cli import main

    d, main_table, naive, bench = tables
    out = d / "cli" / "results.md"
    assert main(["report-results-page", "--table", str(d / "table2.csv"), "--naive", str(d / "naive.csv"),
                 "--benchmarks", str(d / "bench"), "--meta", json.dumps(META), "--out", str(out)]) == 0
    page = out.read_text()
    assert page == write_results_page(d / "table2.csv", d / "api" / "results.md", META,
                                      naive_csv=d / "naive.csv", benchmark_files=bench)
    assert (d / "cli" / "results" / "table.csv").is_file() and "3 jobs" in page
