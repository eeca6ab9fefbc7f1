"""Workflow overhead: DAG construction (dry-run) time of the paper's configuration set, and the
start-up cost of one job.

1. ``snakemake -n`` (nothing built yet: the whole DAG is scheduled) of every documented
   invocation (experiment configs + overlays, data roots on the command line), in a fresh
   directory each; wall time and CPU time (user + sys of the child, from ``getrusage``, which
   the machine's load inflates less). Baseline: ``snakemake --version`` (interpreter + Snakemake
   start-up, no workflow). Target: under 10 s per invocation.
2. Per-job start-up: ``lmdlt <stage> --help`` (argument parsing only: the stage's modules are
   imported inside the command) versus importing what the stage's command imports (as a real
   job does before its first line of work), versus ``import torch`` alone; plus the five
   slowest imports of each (``python -X importtime``).

    python benchmarks/workflow_overhead.py
    python benchmarks/workflow_overhead.py --reps 5
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (INVOCATIONS, REPO, config_args, data_overrides, loadavg, machine,  # noqa: E402
                     markdown, median)

PY = sys.executable
SNAKEMAKE = str(Path(PY).with_name("snakemake"))
LMDLT = str(Path(PY).with_name("lmdlt"))

# what each job's command imports before working (lmdlt/cli.py: cmd_*)
STAGES = {
    "extract": "lmdlt.features",
    "train-stage1": "lmdlt.stage1.trainer",
    "train-stage2": "lmdlt.stage2.runner",
    "evaluate": "lmdlt.metrics",
    "cache": "lmdlt.data.image_cache",
}


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall s, child CPU s) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = {**os.environ, "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


HEAVY = ("torch", "torchvision", "torch._dynamo", "sympy", "sklearn", "scipy", "pandas", "pyarrow",
         "h5py", "matplotlib", "PIL", "numpy", "jsonschema", "yaml")


def slowest_imports(module: str, n: int = 5) -> str:
    """Cumulative import time of the heavy third-party packages the module pulls in."""
    proc = subprocess.run([PY, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True)
    seen = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if m and m.group(3) in HEAVY:
            seen[m.group(3)] = max(seen.get(m.group(3), 0), int(m.group(2)))
    rows = sorted(((us, name) for name, us in seen.items()), reverse=True)
    return ", ".join(f"{name} {us / 1e6:.2f}" for us, name in rows[:n])


def dry_runs(tmp: Path, reps: int) -> list[list]:
    rows = []
    base_w, base_c = [], []
    results = {name: ([], [], 0) for name in INVOCATIONS}
    for r in range(reps):
        w, c = timed([SNAKEMAKE, "--version"])
        base_w.append(w)
        base_c.append(c)
        for name, files in INVOCATIONS.items():
            over = data_overrides(files, tmp)
            work = tmp / f"w{r}-{re.sub(r'[^A-Za-z0-9]+', '_', name)}"
            work.mkdir()
            cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(work),
                   "--workflow-profile", "none", "-n", "--quiet", "rules", *config_args(files, over)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
            m = re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
            results[name][0].append(wall)
            results[name][1].append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
            results[name] = (results[name][0], results[name][1], int(m.group(1)) if m else 0)
        print(f"  dry-run repetition {r + 1}/{reps} done (load {loadavg()})", flush=True)
    bw, bc = median(base_w), median(base_c)
    rows.append(["`snakemake --version` (baseline: start-up only)", "", f"{bw:.2f}", f"{bc:.2f}", "1.0"])
    tw = tc = 0.0
    for name, (walls, cpus, jobs) in results.items():
        w, c = median(walls), median(cpus)
        tw, tc = tw + w, tc + c
        rows.append([name, jobs, f"{w:.2f}", f"{c:.2f}", f"{c / bc:.1f}"])
    rows.append(["all 10 invocations", "", f"{tw:.1f}", f"{tc:.1f}", ""])
    return rows


def job_startup(reps: int) -> list[list]:
    cases = [("python -c pass", [PY, "-c", "pass"]), ("import torch", [PY, "-c", "import torch"])]
    for stage, module in STAGES.items():
        cases.append((f"lmdlt {stage} --help", [LMDLT, stage, "--help"]))
        cases.append((f"lmdlt {stage}: import {module}", [PY, "-c", f"import lmdlt.cli, {module}"]))
    times = {name: ([], []) for name, _ in cases}
    for _ in range(reps):
        for name, cmd in cases:
            w, c = timed(cmd)
            times[name][0].append(w)
            times[name][1].append(c)
    torch_c = median(times["import torch"][1])
    rows = []
    for name, _ in cases:
        w, c = median(times[name][0]), median(times[name][1])
        detail = slowest_imports(name.split("import ")[-1]) if ": import " in name else ""
        rows.append([name, f"{w:.2f}", f"{c:.2f}", f"{c / torch_c:.2f}", detail])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--startup-only", action="store_true", help="skip the dry-runs")
    a = ap.parse_args()
    print(f"machine: {machine()}\n")
    load0 = loadavg()
    if not a.startup_only:
        with tempfile.TemporaryDirectory() as t:
            rows = dry_runs(Path(t), a.reps)
        print(f"\nload average {load0} -> {loadavg()}; medians of {a.reps} interleaved repetitions\n")
        print(markdown(["dry-run (`snakemake -n`, empty results)", "jobs", "wall s", "CPU s",
                        "CPU ratio to start-up"], rows))
    load0 = loadavg()
    rows = job_startup(a.reps)
    print(f"\nload average {load0} -> {loadavg()}; medians of {a.reps} interleaved repetitions\n")
    print(markdown(["per-job start-up", "wall s", "CPU s", "CPU ratio to `import torch`",
                    "slowest third-party imports (s, cumulative, one run)"], rows))


if __name__ == "__main__":
    main()
