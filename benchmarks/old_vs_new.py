"""Per-job overhead of one commit against another (``--old`` / ``--new``; written to measure the job server and scoring in
the producers): the default run from a fresh directory
(wall time, job count), adding one feature-only stage-2 variant to the finished run (wall time
from `snakemake` start until its row is in the results table), and the default's dry-run time.

Each side is a checkout of one commit (``git worktree``), installed editable into the running
interpreter's environment for its turn (``pip install --no-deps -e``: the same interpreter and
libraries run both; an editable install's finder wins over ``PYTHONPATH``); the repository is
re-installed at the end. The two sides run one after the other in the same session, each alone
on the machine (nothing else may import lmdlt from this environment meanwhile).

    python benchmarks/old_vs_new.py --old d2be77d --new HEAD --out /tmp/old_vs_new.md
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, loadavg, machine, markdown, median  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
VARIANT = "\n  crt_sqrt: {method: crt, label: cRT (sqrt sampler), stage1: [ce], params: {sampler: sqrt}}\n"


def checkout(commit: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), commit],
                   check=True, capture_output=True)
    return where


def install(src: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(src)],
                   check=True, capture_output=True)


def snakemake(src: Path, work: Path, *args: str, env_extra: dict | None = None,
              watch: tuple[Path, str] | None = None) -> tuple[float, str, float | None]:
    """Run snakemake; its wall time, output, and (``watch``: a file and a text) the seconds from
    the start until the file holds the text (polled every 20 ms)."""
    # the jobs call `lmdlt`: this interpreter's environment first on PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           **(env_extra or {})}
    out_file = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen([SNAKEMAKE, "-s", str(src / "Snakefile"), "--directory", str(work),
                             "--workflow-profile", "none", *args],
                            env=env, stdout=out_file, stderr=subprocess.STDOUT)
    seen = None
    while proc.poll() is None:
        if watch and seen is None and watch[0].is_file() and watch[1] in watch[0].read_text():
            seen = time.perf_counter() - t0
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if watch and seen is None and watch[1] in watch[0].read_text():
        seen = wall
    out_file.seek(0)
    text = out_file.read().decode(errors="replace")
    if proc.returncode:
        raise RuntimeError(f"snakemake {' '.join(args)} in {work} failed:\n{text[-3000:]}")
    return wall, text, seen


def jobs_done(text: str) -> int:
    m = re.findall(r"(\d+) of (\d+) steps \(100%\) done", text)
    return int(m[-1][1]) if m else 0


def side(name: str, src: Path, reps: int, env_extra: dict | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"lmdlt-{name}-"))
    shutil.copy(src / "config.yaml", work / "config.yaml")
    dry = [snakemake(src, work, "-n", "--cores", "2", env_extra=env_extra)[0] for _ in range(reps)]
    wall, out, _ = snakemake(src, work, "--cores", "2", env_extra=env_extra)
    n_jobs = jobs_done(out)
    cfg = (work / "config.yaml").read_text()
    (work / "config.yaml").write_text(cfg.replace("\nstage2:\n", "\nstage2:" + VARIANT, 1))
    table = work / "results" / "digits-lt" / "tables" / "results.md"
    add_wall, add_out, add_row = snakemake(src, work, "--cores", "2", env_extra=env_extra,
                                           watch=(table, "cRT (sqrt sampler)"))
    assert add_row is not None, "the new row is not in the table"
    return {"side": name, "commit": subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                                                   capture_output=True, text=True).stdout.strip(),
            "jobs": n_jobs, "wall_s": wall, "dry_run_s": median(dry), "add_variant_s": add_wall,
            "add_variant_row_s": add_row, "add_variant_jobs": jobs_done(add_out), "work": str(work)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--reps", type=int, default=3, help="dry-run repetitions (median)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--ablation", action="append", default=[], metavar="NAME=VAR=VALUE",
                    help="also run the new commit with an environment variable set (e.g. "
                         "no-server=LMDLT_NO_JOB_SERVER=1), as a third column")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lmdlt-old-vs-new-"))
    rows = []
    sides = [("old", a.old, None), ("new", a.new, None)]
    for spec in a.ablation:
        label, var, value = spec.split("=", 2)
        sides.append((f"new, {label}", a.new, {var: value}))
    try:
        for name, commit, env_extra in sides:
            where = root / name.split(",")[0]
            src = where if where.exists() else checkout(commit, where)
            install(src)
            print(f"{name} ({commit}): load {loadavg()}", flush=True)
            rows.append(side(name.replace(", ", "-"), src, a.reps, env_extra))
            rows[-1]["side"] = name
            print(rows[-1], flush=True)
    finally:
        install(REPO)
        for name in {n.split(",")[0] for n, _, _ in sides}:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root / name)],
                           capture_output=True)
    old = rows[0]
    header = [""] + [r["side"] for r in rows] + [f"{r['side']} / old" for r in rows[1:]]

    def line(label, key, fmt, extra=None):
        cells = [fmt.format(r[key]) + (f" ({r[extra]})" if extra else "") for r in rows]
        return [label, *cells, *(f"{r[key] / old[key]:.2f}" for r in rows[1:])]

    lines = [f"Machine: {machine()}", "",
             markdown(header, [
                 ["commit", *(r["commit"] for r in rows), *([""] * (len(rows) - 1))],
                 line("default run: jobs", "jobs", "{}"),
                 line("default run: wall s", "wall_s", "{:.0f}"),
                 line("add one stage-2 variant: s until its row is in the table", "add_variant_row_s", "{:.1f}"),
                 line("add one stage-2 variant: wall s of the run (jobs)", "add_variant_s", "{:.1f}",
                      "add_variant_jobs"),
                 line(f"dry-run of the default: wall s (median of {a.reps})", "dry_run_s", "{:.1f}"),
             ])]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
