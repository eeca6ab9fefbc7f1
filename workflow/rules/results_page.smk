# The results page (report.results_page, e.g. docs/results.md): rendered from this experiment's
# comparison table and, when their outputs exist, the naive-split experiment's same table and
# the learning-curve experiment's checkpoints (lmdlt/report/results_page.py; its inputs:
# lmdlt.report.targets). No number on the page is typed by hand; its CSVs are copied beside it
# for tests/test_results_page.py.
if REPORT.results_page:
    # the optional inputs, known at parse time: their options only when they exist
    RESULTS_PAGE_OPTIONAL = "".join(
        [
            " --naive {input.naive:q}" if "naive" in REPORT.results_page_inputs else "",
            (
                " --curve {input.curve:q}"
                if REPORT.results_page_inputs.get("curve")
                else ""
            ),
            (
                " --budgets {input.budgets:q} --budget-stage2 {params.budget_stage2:q}"
                if REPORT.results_page_inputs.get("budgets")
                else ""
            ),
        ]
    )

    rule results_page:
        input:
            **REPORT.results_page_inputs,
        output:
            REPORT.results_page["out"],
        log:
            f"{LOGS}/results_page.log",
        localrule: True
        conda:
            "../envs/lmdlt.yaml"
        params:
            meta=as_json(REPORT.results_page_meta()),
            benchmarks=BENCHMARKS,
            budget_stage2=REPORT.results_page.get("curve_stage2") or "",
        shell:
            "lmdlt report-results-page --table {input.table:q}"
            + RESULTS_PAGE_OPTIONAL
            + " --benchmarks {params.benchmarks:q} --meta {params.meta:q} --out {output:q} > {log:q} 2>&1"
