"""HTML pages for Snakemake's report: every table rendered from its CSV, and the run's config and
provenance.

Snakemake's report viewer shows images, PDFs and HTML files in place and offers any other file
(Markdown, LaTeX, CSV) only as a download, so each table gets an ``.html`` page beside its
``.md``/``.tex``/``.csv``. The page is rendered from the CSV alone, through the same cell layout
as the Markdown (``tables.cells`` for the results table; ``paper_tables``' cells, column groups
and notes for the paper's tables, with the "side by side with the paper" table when the CSV holds
the paper's numbers), so the HTML and the downloads cannot disagree. Pages are self-contained
(inline style, no scripts): the report embeds them as data URIs in an iframe.
"""
from __future__ import annotations

import html
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml

from ..io import atomic_path, code_version, read_json
from . import paper_tables as pt
from . import tables as rt

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.2em; color: #1e293b; }
h1 { font-size: 1.25em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #cbd5e1; padding: 0.3em 0.7em; text-align: right; white-space: nowrap; }
th { background: #f1f5f9; } th.group { text-align: center; }
td:first-child, th:first-child { text-align: left; }
td.best { font-weight: bold; }
tr:hover td { background: #f8fafc; }
p.note, p.source { max-width: 60em; font-size: 0.85em; line-height: 1.4; }
p.source { color: #64748b; }
pre { background: #f8fafc; border: 1px solid #e2e8f0; padding: 0.8em; font-size: 0.8em; overflow-x: auto; }
td.text, th.text { text-align: left; white-space: normal; }
"""

DOWNLOADS = ("The Markdown, LaTeX and CSV versions are downloads beside this page in the report "
             "(and next to the CSV on disk).")


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body: list[str]) -> str:
    """A self-contained HTML document."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{esc(title)}</h1>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def _cell(text: str, best: bool = False, fewer: bool = False, cls: str = "") -> str:
    classes = " ".join(c for c in (cls, "best" if best else "") if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{esc(text)}{' †' if fewer else ''}</td>"


def _colspan(n: int) -> str:
    return f' colspan="{n}"' if n > 1 else ""


def html_table(header_rows: list[list[tuple[str, int]]], body_rows: list[list[str]], table_id: str) -> str:
    """``header_rows``: rows of ``(text, colspan)``; ``body_rows``: rows of ``<td>`` strings."""
    head = []
    for i, hr in enumerate(header_rows):
        cls = "" if i == len(header_rows) - 1 else ' class="group"'
        head.append("<tr>" + "".join(f"<th{cls}{_colspan(n)}>{esc(t)}</th>" for t, n in hr) + "</tr>")
    body = ["<tr>" + "".join(r) + "</tr>" for r in body_rows]
    return (f'<table id="{esc(table_id)}">\n<thead>\n' + "\n".join(head) + "\n</thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>")


def _source(csv_paths) -> str:
    names = ", ".join(Path(p).name for p in csv_paths)
    return f'<p class="source">Rendered from {esc(names)} by lmdlt {esc(code_version())}. {esc(DOWNLOADS)}</p>'


# ---------------------------------------------------------------- the results table

def results_table_html(csv_path, title: str) -> str:
    """The results table (every evaluated run, ``lmdlt report-table``'s CSV)."""
    table = pd.read_csv(csv_path, keep_default_na=True).fillna({"stage2": ""})
    cols, rows, notes = rt.cells(table, rt.metrics_of(table))
    head = [[("Method", 1)] + [(f"{rt.METRIC_NAMES.get(m, m)} (%)", 1) for m in cols]]
    body = [[_cell(label)] + [_cell(t, b, f) for t, b, f in out] for label, out in rows]
    parts = [html_table(head, body, "results")]
    parts += [f'<p class="note">{esc(n)}</p>' for n in notes]
    return page(title, parts + [_source([csv_path])])


# ---------------------------------------------------------------- the paper's tables

def read_paper_csvs(csv_paths) -> list[pd.DataFrame]:
    """The per-experiment CSVs of one paper table, typed as ``paper_tables.render`` reads them."""
    return [pd.read_csv(p, keep_default_na=True, dtype={"paper_row": str, "seeds": str, "group_rule": str,
                                                        "paper": str, "stage2": str, "run": str})
            .fillna({"paper_row": "", "group_rule": "", "paper": "", "stage2": "", "run": ""})
            for p in csv_paths]


def paper_table_html(csv_paths, title: str, absent: list[str] = ()) -> str:
    """One of the paper's tables from one or several experiments' CSVs (Table 3 across r), with
    the paper-vs-ours table when the CSVs hold the paper's numbers."""
    tables = read_paper_csvs(csv_paths)
    kinds = {t["table"].iloc[0] for t in tables}
    if len(kinds) != 1:
        raise ValueError(f"report-html: the CSVs hold different tables {sorted(kinds)}")
    groups = pt.column_groups(tables)
    rows = pt.row_order(tables)
    metric_head = [(f"{pt.METRIC_NAMES.get(m, m)} (%)", 1) for _, t in groups for m in pt.metrics_of(t)]
    head = [[("Method", 1)] + metric_head]
    if any(label for label, _ in groups):
        head.insert(0, [("", 1)] + [(label or "", len(pt.metrics_of(t))) for label, t in groups])
    cells = [(t, pt.cell_texts(t, pt.metrics_of(t))) for _, t in groups]
    body = []
    for row in rows:
        out = [_cell(row)]
        for t, c in cells:
            for m in pt.metrics_of(t):
                out.append(_cell(*c.get((row, m), ("not run", False, False))))
        body.append(out)
    extra = [f"Not run yet (no table CSV): {', '.join(absent)}."] if absent else []
    parts = [html_table(head, body, "table")]
    parts += [f'<p class="note">{esc(n)}</p>' for n in pt.notes(tables) + extra]
    if pt.has_paper_numbers(tables):
        parts.append(f"<h2>Side by side with the paper ({esc(tables[0]['paper'].iloc[0])})</h2>")
        ph_groups, ph = [("", 1)], [("Method", 1)]
        for label, t in groups:
            for m in pt.metrics_of(t):
                name = pt.METRIC_NAMES.get(m, m) + (f" [{label}]" if label else "")
                ph_groups.append((name, 3))
                ph += [("ours", 1), ("paper", 1), ("Δ", 1)]
        pbody = []
        for row in rows:
            out, any_paper = [_cell(row)], False
            for _, t in groups:
                sel = t[t["row"] == row]
                for m in pt.metrics_of(t):
                    if sel.empty or pd.isna(sel[f"{m}_paper"].iloc[0]):
                        out += [_cell("–")] * 3
                        continue
                    any_paper = True
                    r = sel.iloc[0]
                    ours = "–" if pd.isna(r[f"{m}_mean"]) else pt.pct(r[f"{m}_mean"])
                    paper = pt.pct(r[f"{m}_paper"]) + (
                        "" if pd.isna(r[f"{m}_paper_std"]) else f" ± {pt.pct(r[f'{m}_paper_std'])}")
                    diff = "–" if pd.isna(r[f"{m}_diff"]) else f"{100 * r[f'{m}_diff']:+.2f}"
                    out += [_cell(ours), _cell(paper), _cell(diff)]
            if any_paper:
                pbody.append(out)
        parts.append(html_table([ph_groups, ph], pbody, "paper"))
        parts.append('<p class="note">Paper: the published numbers (lmdlt/report/paper_numbers.py, with the '
                     "table they come from); Δ = ours − paper, in percentage points. Rows map to the "
                     "paper's by report.tables.&lt;table&gt;.rows[].paper.</p>")
    return page(title, parts + [_source(csv_paths)])


def table_html(csv_paths, title: str, absent: list[str] = ()) -> str:
    """The page for a table CSV: the paper's layout when the CSV is a paper table (it has a
    ``table`` column), else the results table's."""
    csv_paths = [csv_paths] if isinstance(csv_paths, (str, Path)) else list(csv_paths)
    columns = pd.read_csv(csv_paths[0], nrows=0).columns
    if "table" in columns:
        return paper_table_html(csv_paths, title, absent)
    if len(csv_paths) != 1 or absent:
        raise ValueError("report-html: only the paper's tables combine several CSVs")
    return results_table_html(csv_paths[0], title)


# ---------------------------------------------------------------- config and provenance

VERSIONS = ("lmdlt", "snakemake", "torch", "numpy", "scikit-learn", "pandas", "h5py", "matplotlib")


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def _short(h) -> str:
    return str(h)[:12] if h else "–"


def provenance_rows(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """One record per (run, seed) from its metric file's provenance record: the recorded parents
    (whatever the evaluation recorded: hashes of the scored file, its config, the split, ...; a
    column each, the union over the files) and the code version."""
    out, parent_keys = [], {}
    for spec in rows:
        for seed, path in sorted(spec["files"].items(), key=lambda kv: int(kv[0])):
            prov = read_json(path).get("provenance") or {}
            parents = prov.get("parents") or {}
            parent_keys.update(dict.fromkeys(parents))
            out.append({"run": spec["row"], "seed": str(seed), "metric file": str(path),
                        **{k: _short(v) for k, v in parents.items()},
                        "code version": prov.get("code_version", "–"), "created": prov.get("created", "–")})
    columns = ["run", "seed", "metric file", *parent_keys, "code version", "created"]
    return columns, out


def provenance_html(config: dict, rows: list[dict], title: str = "Config and provenance") -> str:
    """The run's config (as validated, defaults filled) and the provenance of every metric file
    the tables are made from (the hashes it records of what it was computed from, its code
    version), with the versions of the software that made this page."""
    columns, prov = provenance_rows(rows)
    vhead = [[("Software", 1), ("Version", 1)]]
    vbody = [[_cell("lmdlt (source)", cls="text"), _cell(code_version(), cls="text")],
             [_cell("python", cls="text"), _cell(platform.python_version(), cls="text")]]
    vbody += [[_cell(p, cls="text"), _cell(_version(p), cls="text")] for p in VERSIONS]
    phead = [[(c, 1) for c in columns]]
    pbody = [[_cell(r.get(c, "–"), cls="text") for c in columns] for r in prov]
    parts = [
        "<h2>Software</h2>", html_table(vhead, vbody, "software"),
        "<h2>Provenance of the metric files</h2>",
        '<p class="note">Every table and figure is aggregated from these files. Each records the '
        "hashes of what it was computed from (its parents: the scored predictions or features file, "
        "their config, the stage-1 encoder's config, the split manifest) and the code version that "
        "wrote it; the first 12 hex digits are shown, the full record is each file's "
        "<code>provenance</code>.</p>",
        html_table(phead, pbody, "provenance"),
        "<h2>Config</h2>",
        '<p class="note">The experiment\'s config as the run used it (validated against '
        "workflow/schemas/config.schema.yaml, defaults filled).</p>",
        f'<pre id="config">{esc(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))}</pre>',
    ]
    return page(title, parts)


def write_page(text: str, out) -> None:
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_provenance(config: dict, rows: list[dict], out_html, out_yaml=None) -> None:
    write_page(provenance_html(config, rows), out_html)
    if out_yaml:
        with atomic_path(out_yaml) as tmp:
            tmp.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))

