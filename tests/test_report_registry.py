"""The report registry (lmdlt/report/registry.py): every table and figure kind and every report
entry declared once, read by the config schema, the workflow's targets and rules, and the
renderers; the workflow's final targets (lmdlt/report/targets.py)."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from lmdlt.config import ConfigError, load_schema, validate_config
from lmdlt.report import registry
from lmdlt.report.registry import FIGURES, TABLES, TableKind
from lmdlt.report.targets import ReportTargets

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PATHS = {"stage1_metrics": "r/seed{seed}/stage1/{s1}/metrics.json",
         "stage2_metrics": "r/seed{seed}/stage2/{s1}/{s2}/metrics.json",
         "features": "r/seed{seed}/stage1/{s1}/features.h5",
         "predictions": "r/seed{seed}/stage2/{s1}/{s2}/predictions.h5",
         "stage2_benchmark": "b/seed{seed}/stage2_{s1}_{s2}.tsv", "split": "r/seed{seed}/split.parquet"}


def tiny_config(report: dict) -> dict:
    """config.yaml cut to CE and CE + cRT on one seed, with this report section."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["dataset"]["name"] = "tiny"
    cfg["seeds"] = [0]
    cfg["stage1"] = {"ce": cfg["stage1"]["ce"]}
    cfg["stage2"] = {"crt": {**cfg["stage2"]["crt"], "stage1": ["ce"]}}
    cfg["report"] = {"title": "tiny", **report}
    return cfg


def test_the_schema_takes_its_table_and_figure_keys_from_the_registry():
    raw = yaml.safe_load(SCHEMA.read_text())["properties"]["report"]["properties"]
    assert raw["tables"]["properties"] == {} and raw["figures"]["properties"] == {}  # named once
    report = load_schema()["properties"]["report"]["properties"]
    assert list(report["tables"]["properties"]) == list(TABLES)
    assert list(report["figures"]["properties"]) == list(FIGURES)
    assert report["results_page"]["properties"]["table"]["enum"] == list(TABLES)
    assert sorted(report["paper"]["enum"][1:]) == registry.paper_datasets()
    assert report["figures"]["properties"]["tsne"]["required"] == ["runs"]  # $defs.tsne_figure


def test_an_undeclared_table_kind_is_refused_naming_the_known_ones():
    cfg = tiny_config({"tables": {"table9": {"rows": [{"run": "ce"}]}}})
    with pytest.raises(ConfigError, match=r"unknown config key report\.tables\.table9 "
                                          r"\(allowed here: table1, table2, table3, table4, table5\)"):
        validate_config(cfg)


def test_every_entry_family_and_caption_exists():
    for name, entry in registry.ENTRIES.items():
        assert (REPO / "workflow" / "report" / entry.caption).is_file(), name
    assert {k.entry for k in TABLES.values()} | {k.entry for k in FIGURES.values()} <= set(registry.ENTRIES)
    defs = yaml.safe_load(SCHEMA.read_text())["$defs"]
    for name, kind in FIGURES.items():
        assert kind.family in registry.FAMILIES and f"{kind.family}_figure" in defs, name
        if kind.family == "sweep":
            assert kind.caption and kind.x and kind.metrics, name
    assert registry.report_args("paper_table", "tex") == {
        "caption": "../report/table.rst", "category": "Tables",
        "labels": {"table": "{table}", "format": "LaTeX"}}
    assert registry.report_args("tsne", figure="fig5")["labels"] == {"figure": "fig5"}


def test_final_outputs_are_what_the_config_declares():
    cfg = validate_config(tiny_config({"tables": {"table2": {"rows": [{"run": "ce"}, {"run": "ce/crt"}]}},
                                       "figures": {"tsne": {"runs": ["ce"]}}}))
    out = ReportTargets(cfg, PATHS).final_outputs()
    root = "results/tiny"
    assert sorted(out) == sorted(
        [f"{root}/tables/results.{e}" for e in ("md", "csv", "html")]
        + [f"{root}/figures/per_class_recall.{e}" for e in ("png", "pdf")]
        + [f"{root}/report/provenance.html", f"{root}/report/config.yaml"]
        + [f"{root}/tables/table2.{e}" for e in ("md", "csv", "tex", "html")]
        + [f"{root}/figures/fig{n}.{e}" for n in (4, 5) for e in ("png", "pdf")])


def test_a_combined_table_names_exactly_the_experiments_not_run_yet():
    """combine: [this one, a, b] with only a's CSV present: the table combines ours and a's and
    says b is absent (this experiment's own name is never absent)."""
    cfg = tiny_config({"tables": {"table3": {"rows": [{"run": "ce"}], "combine": ["tiny", "a", "b"]}}})
    cfg = validate_config(cfg)
    present = {"results/a/tables/table3.csv"}
    targets = ReportTargets(cfg, PATHS, exists=present.__contains__)
    assert targets.combined == {"table3": {"csv": ["results/tiny/tables/table3.csv",
                                                   "results/a/tables/table3.csv"],
                                           "absent": ["b"]}}
    assert "results/combined/table3.md" in targets.final_outputs()
    assert ReportTargets(cfg, PATHS, exists=lambda p: False).combined == {}


def test_the_results_page_must_read_a_declared_table():
    page = {"out": "page.md", "table": "table1", "command": "c", "machine": "m", "budget": "b"}
    cfg = validate_config(tiny_config({"tables": {"table2": {"rows": [{"run": "ce"}]}}, "results_page": page}))
    with pytest.raises(ConfigError, match=r"report\.results_page\.table: table1 is not declared"):
        ReportTargets(cfg, PATHS)


TOY_RENDERER = '''
from pathlib import Path


def render(spec, out_csv, out_md, out_tex):
    """The toy table: its title and its rows' labels, one file per format."""
    text = spec["title"] + "\\n" + "\\n".join(r["row"] for r in spec["rows"]) + "\\n"
    for out in (out_csv, out_md, out_tex):
        Path(out).write_text(text)
'''
TOY_ENTRY = ('TABLES["toy"] = TableKind("Toy: BACC only", ("bacc",), '
             'renderer="toy_renderer:render")')


def test_a_toy_table_kind_is_one_registry_entry_and_one_renderer(tmp_path, monkeypatch):
    """Adding a table kind touches lmdlt/report/registry.py (one TABLES entry) and its renderer
    (here a module of its own): the schema accepts ``report.tables.toy``, the workflow's targets
    and rules make tables/toy.{csv,md,tex,html} (a Snakemake dry-run), and ``lmdlt
    report-paper-table`` runs the toy's renderer."""
    (tmp_path / "toy_renderer.py").write_text(TOY_RENDERER)
    work = tmp_path / "work"
    work.mkdir()
    cfg = tiny_config({"tables": {"toy": {"rows": [{"run": "ce"}, {"run": "ce/crt", "label": "CE + cRT"}]}}})
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    code = textwrap.dedent(f"""
        import sys
        from lmdlt.report.registry import TABLES, TableKind
        {TOY_ENTRY}
        from snakemake.cli import main
        main(["-s", {str(REPO / "Snakefile")!r}, "--directory", {str(work)!r}, "-n", "-p",
              "--workflow-profile", "none", "--cores", "1"])
    """)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=work)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    toy = {f"results/tiny/tables/toy.{e}" for e in ("csv", "md", "tex", "html")}
    jobs = [b for b in out.split("\n\n") if "wildcards: table=toy" in b]
    assert {re.search(r"^(?:local)?rule (\w+):", b, re.M).group(1) for b in jobs} == {
        "paper_table", "paper_table_html"}
    outputs = {f for b in jobs for line in b.splitlines() if line.strip().startswith("output:")
               for f in line.split(":", 1)[1].strip().split(", ")}
    assert outputs == toy
    assert "lmdlt report-paper-table --spec" in out

    # the rule's command runs the kind's renderer
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(TABLES, "toy", TableKind("Toy: BACC only", ("bacc",), renderer="toy_renderer:render"))
    spec = ReportTargets(validate_config(copy.deepcopy(cfg)), PATHS).tables["toy"]
    from lmdlt.cli import main

    outs = [str(tmp_path / f"toy.{e}") for e in ("csv", "md", "tex")]
    main(["report-paper-table", "--spec", json.dumps(spec), "--out-csv", outs[0], "--out-md", outs[1],
          "--out-tex", outs[2]])
    assert Path(outs[1]).read_text() == "Toy: BACC only\nCE\nCE + cRT\n"


def test_a_table_reads_predictions_only_for_its_paired_bootstrap():
    rows = {"rows": [{"run": "ce"}, {"run": "ce/crt"}]}
    cfg = validate_config(tiny_config({"tables": {"table1": rows, "table2": {**rows, "lmd": None}},
                                       "lmd": "ce/crt"}))
    targets = ReportTargets(cfg, PATHS)
    metrics = ["r/seed0/stage1/ce/metrics.json", "r/seed0/stage2/ce/crt/metrics.json"]
    assert targets.table_inputs("table2") == metrics
    assert targets.table_inputs("table1") == metrics + ["r/seed0/stage1/ce/features.h5",
                                                        "r/seed0/stage2/ce/crt/predictions.h5"]
    assert targets.metric_files() == metrics
    assert json.loads(targets.per_class_recall_params()["rows"])[0].keys() == {
        "row", "stage1", "stage2", "files", "config_hashes"}  # no group_rule: groups re-run no figure
