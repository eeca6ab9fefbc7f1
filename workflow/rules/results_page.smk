# The results page (report.results_page, e.g. docs/results.md): rendered from this experiment's
# comparison table and, when their outputs exist, the naive-split experiment's same table and
# the learning-curve experiment's checkpoints (lmdlt/report/results_page.py). No number on the
# page is typed by hand; its CSVs are copied beside it for tests/test_results_page.py.
RESULTS_PAGE = config["report"].get("results_page")


def results_page_inputs():
    page = RESULTS_PAGE
    out = {"table": f"{TABLES}/{page['table']}.csv"}
    if page.get("naive"):
        naive = f"{config['results_dir']}/{page['naive']}/tables/{page['table']}.csv"
        if os.path.exists(naive):
            out["naive"] = naive
    if page.get("curve"):
        curve = [
            f"{config['results_dir']}/{page['curve']}/seed{s}/stage1/{page['curve_variant']}/model.pt"
            for s in SEEDS
        ]
        out["curve"] = [c for c in curve if os.path.exists(c)]
        # what each of the curve's schedules ends at: checkpoint, its test metrics and its
        # stage 2's (the page reads the metrics beside each checkpoint)
        curve_dir = f"{config['results_dir']}/{page['curve']}"
        runs = [
            (s, v)
            for v in page.get("curve_budgets") or []
            for s in SEEDS
            if os.path.exists(f"{curve_dir}/seed{s}/stage1/{v}/model.pt")
        ]
        out["budgets"] = [f"{curve_dir}/seed{s}/stage1/{v}/model.pt" for s, v in runs]
        out["budget_metrics"] = [
            f"{curve_dir}/seed{s}/stage1/{v}/metrics.json" for s, v in runs
        ]
        if page.get("curve_stage2"):
            stage2 = [
                f"{curve_dir}/seed{s}/stage2/{v}/{page['curve_stage2']}/metrics.json"
                for s, v in runs
            ]
            out["budget_stage2_metrics"] = [m for m in stage2 if os.path.exists(m)]
    return out


if RESULTS_PAGE:
    if RESULTS_PAGE["table"] not in TABLE_SPECS:
        raise WorkflowError(
            f"invalid config: report.results_page.table: {RESULTS_PAGE['table']} "
            "is not declared in report.tables"
        )
    REPORT_FILES.append(RESULTS_PAGE["out"])
    RESULTS_PAGE_INPUTS = results_page_inputs()
    # the optional inputs, known at parse time: their options only when they exist
    RESULTS_PAGE_OPTIONAL = "".join(
        [
            " --naive {input.naive:q}" if "naive" in RESULTS_PAGE_INPUTS else "",
            " --curve {input.curve:q}" if RESULTS_PAGE_INPUTS.get("curve") else "",
            (
                " --budgets {input.budgets:q} --budget-stage2 {params.budget_stage2:q}"
                if RESULTS_PAGE_INPUTS.get("budgets")
                else ""
            ),
        ]
    )

    rule results_page:
        input:
            **RESULTS_PAGE_INPUTS,
        output:
            RESULTS_PAGE["out"],
        log:
            f"{LOGS}/results_page.log",
        localrule: True
        params:
            meta=as_json(
                {
                    k: RESULTS_PAGE[k]
                    for k in (
                        "title",
                        "table_title",
                        "command",
                        "machine",
                        "budget",
                        "curve_note",
                        "budget_note",
                    )
                }
            ),
            benchmarks=BENCHMARKS,
            budget_stage2=RESULTS_PAGE.get("curve_stage2") or "",
        shell:
            "lmdlt report-results-page --table {input.table:q}"
            + RESULTS_PAGE_OPTIONAL
            + " --benchmarks {params.benchmarks:q} --meta {params.meta:q} --out {output:q} > {log:q} 2>&1"
