"""The Snakemake HTML report in a real browser (headless Chromium, the Debian package).

A tiny digits run (one seed, one epoch; the paper's Table 1 with the paper's numbers beside ours,
Table 3 combined with a second experiment's CSV, a figure) is built in a temporary directory and
``snakemake --report`` writes its report. Chromium opens the report, the test clicks through it as
a reader would (menu -> Tables -> a table's eye button) over the DevTools protocol (a pipe, no
extra package) and reads what the report's viewer shows: every table's cells must be the CSV's
numbers, the Markdown / LaTeX / CSV versions must be downloads beside it, figures must show with
their captions, and the run's config and provenance must be a page of the report.

Skips when no Chromium is installed (CI installs it: .ci/run). Also a script, for the screenshot
in docs/report.md: ``python tests/test_report_browser.py results/report.html docs/img/report.png``.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import load_test_config  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")

#: tests/configs/digits.yaml with a report of the paper's tables and a figure
TINY = load_test_config("digits")
TINY["report"] = {
    "title": "digits-LT, one epoch (browser test)",
    "paper": "hyper_kvasir",  # Table 1 is Hyper-Kvasir's: the paper's numbers beside ours
    "lmd": "ce/crt",
    "bootstrap": {"resamples": 200},
    "tables": {
        "table1": {"rows": [{"run": "ce", "paper": "CE"}, {"run": "ce/crt", "label": "Decoupling",
                                                          "paper": "Decoupling"}]},
        "table3": {"rows": [{"run": "ce", "paper": "CE"}, {"run": "ce/crt", "label": "Decoupling"}],
                   "combine": ["digits-lt-other"]},
    },
    "figures": {"class_distribution": True},
}
OTHER = "digits-lt-other"  # the second experiment of the combined Table 3


def find_browser() -> str | None:
    for name in BROWSERS:
        exe = shutil.which(name)
        if exe:
            return exe
    return None


# ---------------------------------------------------------------- the DevTools protocol over a pipe

class Browser:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4:
    answers and events out, NUL-terminated JSON)."""

    def __init__(self, exe: str, width: int = 1600, height: int = 1000):
        self.profile = tempfile.mkdtemp(prefix="lmdlt-chromium-")
        r_cmd, self.w = os.pipe()
        self.r, w_out = os.pipe()
        # out of the way of 3 and 4 before the child moves them there
        a, b = fcntl.fcntl(r_cmd, fcntl.F_DUPFD, 10), fcntl.fcntl(w_out, fcntl.F_DUPFD, 10)

        def child():
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--hide-scrollbars", "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(args, pass_fds=(3, 4, a, b), preexec_fn=child,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (r_cmd, w_out, a, b):
            os.close(fd)
        self.buf, self.n = b"", 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=self.session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": False},
                  session=self.session)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.r], [], [], left)[0]:
                    raise TimeoutError(f"chromium did not answer {method} within {timeout} s")
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.n:  # everything else is an event
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def js(self, expression: str, context: int | None = None):
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        if context is not None:
            params["contextId"] = context
        res = self.send("Runtime.evaluate", params, session=self.session)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:80]}: {res['exceptionDetails'].get('exception', {}).get('description')}")
        return res["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 30, context: int | None = None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression, context)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"the report never showed {what} within {timeout} s")

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self.r, self.w):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


class Report:
    """The Snakemake report open in the browser, clicked through as a reader would."""

    def __init__(self, browser: Browser, path: Path):
        self.b, self.path = browser, path
        self.open()

    def open(self) -> None:
        """(Re)load the report: its start page."""
        for url in ("about:blank", self.path.resolve().as_uri()):  # no old page to mistake for it
            self.b.send("Page.navigate", {"url": url}, session=self.b.session)
        self.b.wait("typeof app !== 'undefined' && document.querySelectorAll('#app tr, #app li').length > 3",
                    "its menu")

    def menu(self, name: str) -> None:
        """Click a category of the navigation bar (Tables, Figures, ...)."""
        self.b.js("(() => { const a = Array.from(document.querySelectorAll('#app a'))"
                  f".find(a => a.innerText.trim() === {json.dumps(name)}); a.click(); }})()")
        self.b.wait("document.querySelectorAll('#app tbody tr').length > 0", f"the entries of {name}")

    def entries(self) -> list[list[str]]:
        """The label cells of every entry listed (e.g. ["table1", "HTML"])."""
        return self.b.js("Array.from(document.querySelectorAll('#app tbody tr')).map(tr => "
                         "Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim()).filter(t => t))")

    def _row(self, labels: list[str]) -> str:
        return ("Array.from(document.querySelectorAll('#app tbody tr')).find(tr => JSON.stringify("
                "Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim()).filter(t => t)) === "
                f"{json.dumps(json.dumps(labels, separators=(',', ':')))})")

    def button(self, labels: list[str], which: int) -> dict:
        """The entry's buttons: 0 the eye (view, or download for a non-viewable file), 1 the info."""
        return self.b.js(f"(() => {{ const tr = {self._row(labels)}; if (!tr) return null; "
                         f"const a = tr.querySelectorAll('a')[{which}]; "
                         "return {href: a.getAttribute('href').slice(0, 40), download: a.getAttribute('download')}; })()")

    def click(self, labels: list[str], which: int) -> None:
        assert self.b.js(f"(() => {{ const tr = {self._row(labels)}; if (!tr) return false; "
                         f"tr.querySelectorAll('a')[{which}].click(); return true; }})()"), \
            f"no entry {labels} in {self.entries()}"

    def view_html(self, labels: list[str], name: str) -> str:
        """Click the entry's eye and return the HTML document the viewer shows (its iframe)."""
        before = {f["id"] for f in self._frames()}  # the viewer makes a new iframe per click
        self.click(labels, 0)
        frame = None
        deadline = time.monotonic() + 30
        while frame is None and time.monotonic() < deadline:
            frame = next((f for f in self._frames() if f["id"] not in before
                          and f";filename={name};" in f["url"]), None)
            if frame is None:
                time.sleep(0.1)
        assert frame is not None, f"clicking {labels} showed no page {name}"
        ctx = self.b.send("Page.createIsolatedWorld", {"frameId": frame["id"], "worldName": "test"},
                          session=self.b.session)["executionContextId"]
        return self.b.wait("document.readyState === 'complete' && document.body && "
                           "document.documentElement.outerHTML", f"the page {name}", context=ctx)

    def _frames(self) -> list[dict]:
        tree = self.b.send("Page.getFrameTree", session=self.b.session)["frameTree"]
        return [c["frame"] for c in tree.get("childFrames", [])]

    def text(self) -> str:
        return self.b.js("document.body.innerText")

    def screenshot(self, out: Path) -> None:
        png = self.b.send("Page.captureScreenshot", {"format": "png"}, session=self.b.session)["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(png))


# ---------------------------------------------------------------- reading the shown tables

class Tables(HTMLParser):
    """Every <table> shown: ``{"head": [[th text, ...], ...], "body": [[td text, ...], ...]}``."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self._cell, self._row = [], None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"head": [], "body": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell, self._kind = [], tag

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(("".join(self._cell).strip(), self._kind))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            part = "head" if any(kind == "th" for _, kind in self._row) else "body"
            self.tables[-1][part].append([text for text, _ in self._row])
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def expected_cell(r: pd.Series, m: str, n_seeds_col: str) -> str:
    """What a table shows for a metric of a CSV row: mean (± std from two seeds on), in %; a
    paper table's row without a run: "not run"."""
    mean = r[f"{m}_mean"]
    if pd.isna(mean):
        return "not run" if "run" in r and pd.isna(r["run"]) else "–"
    text = pct(mean) if r[f"{m}_n"] < 2 else f"{pct(mean)} ± {pct(r[f'{m}_std'])}"
    return text + (" †" if r[f"{m}_n"] < r[n_seeds_col] else "")


def body_rows(table: dict) -> dict[str, list[str]]:
    """Row label -> the row's other cells."""
    return {row[0]: row[1:] for row in table["body"]}


# ---------------------------------------------------------------- the run and the report

@pytest.fixture(scope="module")
def browser():
    exe = find_browser()
    if exe is None:
        pytest.skip("no Chromium installed (apt-get install chromium; .ci/run installs it in CI)")
    b = Browser(exe)
    yield b
    b.close()


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, browser):
    from conftest import run_snakemake, write_config

    work = tmp_path_factory.mktemp("browser")
    write_config(work, TINY)
    run_snakemake(work, "--cores", "2")
    root = work / "results" / TINY["dataset"]["name"]
    # a second experiment's Table 3 (another imbalance ratio): the combined table appears
    other = pd.read_csv(root / "tables" / "table3.csv")
    other["experiment"], other["imbalance_ratio"] = OTHER, 2 * TINY["split"]["imbalance_ratio"]
    (work / "results" / OTHER / "tables").mkdir(parents=True)
    other.to_csv(work / "results" / OTHER / "tables" / "table3.csv", index=False)
    run_snakemake(work, "--cores", "2")
    run_snakemake(work, "--report", "results/report.html")
    return work, root


@pytest.fixture
def report(browser, report_run):
    work, _ = report_run
    return Report(browser, work / "results" / "report.html")


def tables_of(work: Path, root: Path):
    """Per table: its label in the report, the CSVs its page is rendered from and the downloads
    beside it (format label -> file name)."""
    both = {"Markdown": "{}.md", "LaTeX": "{}.tex"}
    out = [("all runs", "results", [root / "tables" / "results.csv"], {"Markdown": "{}.md", "CSV": "{}.csv"})]
    out += [(t, t, [root / "tables" / f"{t}.csv"], {**both, "CSV": "{}.csv"}) for t in TINY["report"]["tables"]]
    combined = [root / "tables" / "table3.csv", work / "results" / OTHER / "tables" / "table3.csv"]
    out.append(("table3 (combined)", "table3", combined, both))
    return out


@pytest.mark.slow
def test_every_table_is_an_html_table_with_the_csv_numbers(report, report_run):
    work, root = report_run
    report.menu("Tables")
    listed = report.entries()
    for label, stem, csvs, downloads in tables_of(work, root):
        shown = Tables(report.view_html([label, "HTML"], f"{stem}.html")).tables
        assert shown, f"{label}: the report shows no table"
        rows = body_rows(shown[0])
        frames = [pd.read_csv(c) for c in csvs]
        if "table" in frames[0].columns:  # a paper table: column groups by imbalance ratio
            frames.sort(key=lambda t: float(t["imbalance_ratio"].iloc[0]))
            metrics = [c[:-len("_paper")] for c in frames[0].columns if c.endswith("_paper")]
            n_col = "n_seeds_expected"
        else:
            metrics = [c[:-len("_mean")] for c in frames[0].columns if c.endswith("_mean")]
            n_col = "n_seeds"
        labels = list(dict.fromkeys(r for t in frames for r in t["row"]))
        assert list(rows) == labels, f"{label}: rows {list(rows)}, the CSV's {labels}"
        for row in labels:
            want = [expected_cell(t.set_index("row").loc[row], m, n_col) for t in frames for m in metrics]
            assert rows[row] == want, f"{label}, {row}: shown {rows[row]}, the CSV's {want}"
        # the other formats beside it, as downloads
        for fmt, name in downloads.items():
            assert [label, fmt] in listed, f"{label}: no {fmt} beside the HTML table ({listed})"
            assert report.button([label, fmt], 0)["download"] == name.format(stem), (label, fmt)


@pytest.mark.slow
def test_the_paper_numbers_stand_beside_ours(report, report_run):
    work, root = report_run
    csv = pd.read_csv(root / "tables" / "table1.csv").set_index("row")
    metrics = [c[:-len("_paper")] for c in csv.columns if c.endswith("_paper")]
    report.menu("Tables")
    shown = Tables(report.view_html(["table1", "HTML"], "table1.html")).tables
    assert len(shown) == 2, "no side-by-side table with the paper's numbers"
    rows = body_rows(shown[1])
    assert set(rows) == set(csv.index[csv[[f"{m}_paper" for m in metrics]].notna().any(axis=1)])
    for row, cells in rows.items():
        r = csv.loc[row]
        want = []
        for m in metrics:
            paper = pct(r[f"{m}_paper"]) + ("" if pd.isna(r[f"{m}_paper_std"]) else f" ± {pct(r[f'{m}_paper_std'])}")
            want += [pct(r[f"{m}_mean"]), paper, f"{100 * r[f'{m}_diff']:+.2f}"]
        assert cells == want, f"{row}: shown {cells}, the CSV's {want}"


def caption_phrase(name: str) -> str:
    """Words of a caption file (workflow/report/) that the report shows verbatim: the first line
    without reST or Jinja markup."""
    from conftest import REPO

    line = next(x for x in (REPO / "workflow" / "report" / name).read_text().splitlines()
                if x.strip() and not any(c in x for c in "{}`*|_"))
    return " ".join(line.split()[:6])


def shows(phrase: str) -> str:
    return f"document.body.innerText.replace(/\\s+/g, ' ').includes({json.dumps(phrase)})"


@pytest.mark.slow
def test_figures_show_with_their_captions(report, report_run):
    report.menu("Figures")
    assert ["class distribution"] in report.entries()
    report.click(["class distribution"], 0)
    report.b.wait("Array.from(document.querySelectorAll('#app img')).some(i => i.src.startsWith('data:image/png'))",
                  "the figure")
    report.click(["class distribution"], 1)  # the info panel holds the caption
    report.b.wait(shows(caption_phrase("class_distribution.rst")), "the figure's caption")


@pytest.mark.slow
def test_tables_have_captions(report):
    report.menu("Tables")
    report.click(["table1", "HTML"], 1)
    report.b.wait(shows(caption_phrase("table.rst")), "the table's caption")
    report.open()
    report.menu("Tables")
    report.click(["all runs", "HTML"], 1)
    report.b.wait(shows(caption_phrase("results_table.rst")), "the results table's caption")


@pytest.mark.slow
def test_config_and_provenance_are_in_the_report(report, report_run):
    work, root = report_run
    report.menu("Config and provenance")
    assert ["config (YAML)"] in report.entries()
    assert report.button(["config (YAML)"], 0)["download"] == "config.yaml"
    page = report.view_html(["config and provenance"], "provenance.html")
    prov = Tables(page).tables[1]
    head, rows = prov["head"][0], prov["body"]
    # every metric file the tables come from, with the hashes of its parents and its code version
    metric_files = sorted(root.glob("seed*/**/metrics.json"))
    assert len(rows) == len(metric_files)
    for f in metric_files:
        rec = json.loads(f.read_text())["provenance"]
        rel = str(f.relative_to(work))
        row = next((r for r in rows if r[head.index("metric file")] == rel), None)
        assert row is not None, f"{rel} is not in the provenance table"
        for key, value in rec["parents"].items():
            assert row[head.index(key)] == (str(value)[:12] if value else "–"), (rel, key)
        assert row[head.index("code version")] == rec["code_version"]
    # the config as the run used it (defaults filled): the YAML in the page parses to the config
    from html import unescape

    from lmdlt.config import validate_config

    start, end = page.index('<pre id="config">') + len('<pre id="config">'), page.index("</pre>")
    assert yaml.safe_load(unescape(page[start:end])) == json.loads(json.dumps(validate_config(TINY)))


# ---------------------------------------------------------------- the pages without a browser

def _metric_files(tmp_path, rows, drop=None):
    """Metric files with a provenance record; ``drop``: (row, seed) whose file lacks ECE."""
    from lmdlt.io import write_json

    rng = np.random.default_rng(0)
    specs = []
    for i, row in enumerate(rows):
        files = {}
        for seed in ("0", "1"):
            metrics = {m: float(rng.uniform(0.2, 0.9)) for m in ("bacc", "auc", "ece")}
            if (row, seed) == drop:
                metrics.pop("ece")
            files[seed] = str(tmp_path / f"r{i}" / f"seed{seed}.json")
            write_json(files[seed], {"metrics": metrics, "provenance": {
                "code_version": "v-test", "created": "now",
                "parents": {"predictions": f"{i}{seed}" * 20, "split": None}}})
        specs.append({"row": row, "stage1": f"s{i}", "stage2": None, "files": files})
    return specs


def test_the_results_page_shows_the_csv_cells(tmp_path):
    from lmdlt.report.html import table_html
    from lmdlt.report.tables import write_table

    rows = _metric_files(tmp_path, ["CE", "A <b> & \"B\""], drop=("CE", "1"))
    write_table(rows, ["bacc", "auc", "ece"], "T", None, tmp_path / "t.md", tmp_path / "t.csv")
    csv = pd.read_csv(tmp_path / "t.csv").set_index("row")
    shown = Tables(table_html(tmp_path / "t.csv", "T")).tables[0]
    assert shown["head"] == [["Method", "BACC (%)", "AUC (%)", "ECE (%)"]]
    cells = body_rows(shown)
    assert list(cells) == list(csv.index)  # the label as written, markup escaped
    for row, shown_cells in cells.items():
        assert shown_cells == [expected_cell(csv.loc[row], m, "n_seeds") for m in ("bacc", "auc", "ece")]
    assert cells["CE"][2].endswith(" †") and "±" not in cells["CE"][2]  # one seed of two has ECE


def test_the_provenance_page_lists_every_metric_file(tmp_path):
    from lmdlt.report.html import provenance_html

    rows = _metric_files(tmp_path, ["CE", "RS"])
    page = provenance_html({"seeds": [0, 1], "dataset": {"name": "x"}}, rows)
    prov = Tables(page).tables[1]
    head = prov["head"][0]
    assert [r[head.index("metric file")] for r in prov["body"]] == [f for r in rows for f in r["files"].values()]
    first = prov["body"][0]
    assert first[head.index("predictions")] == ("00" * 20)[:12] and first[head.index("split")] == "–"
    assert first[head.index("code version")] == "v-test"


# ---------------------------------------------------------------- the screenshot in docs/report.md

def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(description="screenshot of a Snakemake report showing one table")
    p.add_argument("report", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--table", default="table1", help="the table's label in the report")
    p.add_argument("--page", default=None, help="its page name (default <table>.html)")
    a = p.parse_args(argv)
    exe = find_browser()
    if exe is None:
        raise SystemExit("no Chromium installed (apt-get install chromium)")
    b = Browser(exe)
    try:
        r = Report(b, a.report)
        r.menu("Tables")
        r.view_html([a.table, "HTML"], a.page or f"{a.table}.html")
        r.screenshot(a.out)
    finally:
        b.close()


if __name__ == "__main__":
    main(sys.argv[1:])
