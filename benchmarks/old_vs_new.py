"""Per-job overhead, old main versus new (issue 16): the default run from a fresh directory
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


def snakemake(src: Path, work: Path, *args: str) -> tuple[float, str]:
    # the jobs call `lmdlt`: this interpreter's environment first on PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.run([SNAKEMAKE, "-s", str(src / "Snakefile"), "--directory", str(work),
                           "--workflow-profile", "none", *args],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"snakemake {' '.join(args)} in {work} failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def jobs_done(text: str) -> int:
    m = re.findall(r"(\d+) of (\d+) steps \(100%\) done", text)
    return int(m[-1][1]) if m else 0


def side(name: str, src: Path, reps: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"lmdlt-{name}-"))
    shutil.copy(src / "config.yaml", work / "config.yaml")
    dry = [snakemake(src, work, "-n", "--cores", "2")[0] for _ in range(reps)]
    wall, out = snakemake(src, work, "--cores", "2")
    n_jobs = jobs_done(out)
    cfg = (work / "config.yaml").read_text()
    (work / "config.yaml").write_text(cfg.replace("\nstage2:\n", "\nstage2:" + VARIANT, 1))
    add_wall, add_out = snakemake(src, work, "--cores", "2")
    table = (work / "results" / "digits-lt" / "tables" / "results.md").read_text()
    assert "cRT (sqrt sampler)" in table, "the new row is not in the table"
    return {"side": name, "commit": subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                                                   capture_output=True, text=True).stdout.strip(),
            "jobs": n_jobs, "wall_s": wall, "dry_run_s": median(dry), "add_variant_s": add_wall,
            "add_variant_jobs": jobs_done(add_out), "work": str(work)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--reps", type=int, default=3, help="dry-run repetitions (median)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lmdlt-old-vs-new-"))
    rows = []
    try:
        for name, commit in (("old", a.old), ("new", a.new)):
            src = checkout(commit, root / name)
            install(src)
            print(f"{name} ({commit}): load {loadavg()}", flush=True)
            rows.append(side(name, src, a.reps))
            print(rows[-1], flush=True)
    finally:
        install(REPO)
        for name in ("old", "new"):
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root / name)],
                           capture_output=True)
    old, new = rows
    lines = [f"Machine: {machine()}", "",
             markdown(["", "old", "new", "new / old"], [
                 ["commit", old["commit"], new["commit"], ""],
                 ["default run: jobs", old["jobs"], new["jobs"], f"{new['jobs'] / old['jobs']:.2f}"],
                 ["default run: wall s", f"{old['wall_s']:.0f}", f"{new['wall_s']:.0f}",
                  f"{new['wall_s'] / old['wall_s']:.2f}"],
                 ["add one stage-2 variant: wall s (jobs)", f"{old['add_variant_s']:.1f} ({old['add_variant_jobs']})",
                  f"{new['add_variant_s']:.1f} ({new['add_variant_jobs']})",
                  f"{new['add_variant_s'] / old['add_variant_s']:.2f}"],
                 [f"dry-run of the default: wall s (median of {a.reps})", f"{old['dry_run_s']:.1f}",
                  f"{new['dry_run_s']:.1f}", f"{new['dry_run_s'] / old['dry_run_s']:.2f}"],
             ])]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
