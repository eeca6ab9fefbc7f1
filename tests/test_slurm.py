"""The SLURM profile against a real SLURM scheduler (single node on 127.0.0.1, one GRES GPU).

Needs a running cluster: `.ci/run` starts one with tests/slurm/cluster.sh (Debian's slurm-wlm
and munge); elsewhere these tests skip. The cluster has no accounting, so the runs add the
plugin's overrides for that (no account, squeue for status), and the site values of the shipped
profile (CPUs, memory, run time) are scaled to the 2-CPU test node; everything else is the
shipped workflow/profiles/slurm/config.yaml.
"""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, run_snakemake, snakemake_bin, write_config
from lmdlt.io import read_json

pytestmark = pytest.mark.slow

GPU_RULES = {"train_stage1", "extract_features", "train_stage2_encoder"}
CPU_RULES = {"image_cache", "split", "evaluate_stage1", "train_stage2", "evaluate_stage2"}
LOCAL_RULES = {"results_table", "per_class_recall_figure", "all"}
NO_ACCOUNTING = ["--slurm-no-account", "--slurm-status-command", "squeue",
                 "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2"]

CONFIG = {
    "dataset": {"name": "digits-lt", "source": "digits", "image_size": 8},
    "split": {"protocol": "cui", "imbalance_ratio": 50, "val_per_class": 15, "test_per_class": 30},
    "seeds": [0],
    "groups": {"rule": "rank", "sizes": [3, 4, 3]},
    "compute": {"threads": 1},
    "stage1": {"ce": {"method": "ce", "label": "CE", "epochs": 2, "batch_size": 64}},
    "stage2": {"crt": {"method": "crt", "label": "cRT", "params": {"epochs": 2}},
               # LMD's ICC fine-tunes the encoder: its rule is a GPU rule too
               "icc": {"method": "icc", "label": "ICC",
                       "params": {"iterations": 1, "virtual_per_class": 20, "m_epochs": 1,
                                  "m_batch_size": 64, "e_batch_size": 64, "e_lr": 1.0e-3,
                                  "lr_milestones": [1]}}},
}


def _cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and re.search(r"idle|mixed|allocated", proc.stdout) is not None


needs_slurm = pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster running here "
                                 "(start one with: tests/slurm/cluster.sh install && tests/slurm/cluster.sh start)")


def shipped_profile() -> dict:
    return yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())


def test_profile_requests_gpus_for_gpu_rules_only():
    prof = shipped_profile()
    assert prof["executor"] == "slurm" and prof["retries"] >= 1
    per_rule = prof["set-resources"]
    assert {r for r, res in per_rule.items() if res.get("gpu")} == GPU_RULES
    assert "gpu" not in prof["default-resources"] and "gres" not in prof["default-resources"]
    for rule in GPU_RULES:
        assert per_rule[rule]["cpus_per_gpu"] == prof["set-threads"][rule]


def test_report_rules_are_local():
    """Every rule of report.smk runs on the submitting host, never through sbatch."""
    text = (REPO / "workflow" / "rules" / "report.smk").read_text()
    blocks = re.split(r"^rule ", text, flags=re.M)[1:]
    assert blocks, "report.smk defines no rules"
    not_local = [b.split(":")[0] for b in blocks if "localrule: True" not in b]
    assert not not_local, f"report rules submitted to the cluster: {not_local}"


def site_profile(tmp_path, epochs_gpu_runtime=10):
    """The shipped profile with its SITE values scaled to the 2-CPU test node."""
    prof = shipped_profile()
    prof["default-resources"].update({"mem_mb": 1000, "runtime": 10})
    prof["set-threads"] = {rule: 1 for rule in prof["set-threads"]}
    for rule in GPU_RULES:
        prof["set-resources"][rule].update({"cpus_per_gpu": 1, "mem_mb": 2000, "runtime": epochs_gpu_runtime})
    d = tmp_path / "profile"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump(prof))
    return d


def submitted(log_text: str) -> dict[str, list[int]]:
    """rule -> SLURM job ids, from the Snakemake log."""
    jobs: dict[str, list[int]] = {}
    for m in re.finditer(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_([A-Za-z0-9_]+)/", log_text):
        jobs.setdefault(m.group(2), []).append(int(m.group(1)))
    return jobs


def tres_per_job(jobid: int) -> str:
    out = subprocess.run(["scontrol", "show", "job", str(jobid)], capture_output=True, text=True).stdout
    m = re.search(r"TresPerJob=(\S+)", out)
    return m.group(1) if m else ""


@needs_slurm
def test_pipeline_through_slurm_matches_a_local_run(tmp_path):
    cluster, local = tmp_path / "cluster", tmp_path / "local"
    cluster.mkdir(), local.mkdir()
    write_config(cluster, CONFIG)
    write_config(local, CONFIG)
    proc = run_snakemake(cluster, "--workflow-profile", str(site_profile(tmp_path)), *NO_ACCOUNTING)
    jobs = submitted(proc.stdout + proc.stderr)
    # every non-local job went through sbatch, ICC's encoder fine-tuning included
    assert set(jobs) == GPU_RULES | CPU_RULES, jobs
    assert not set(jobs) & LOCAL_RULES
    for rule, ids in jobs.items():
        for jobid in ids:
            tres = tres_per_job(jobid)
            if rule in GPU_RULES:
                assert "gpu:1" in tres, (rule, jobid, tres)
            else:
                assert "gpu" not in tres, (rule, jobid, tres)
    run_snakemake(local, "--cores", "2")
    for rel in ["seed0/stage1/ce/metrics.json", "seed0/stage2/ce/crt/metrics.json",
                "seed0/stage2/ce/icc/metrics.json"]:
        a = read_json(cluster / "results" / "digits-lt" / rel)["metrics"]
        b = read_json(local / "results" / "digits-lt" / rel)["metrics"]
        assert a == b
    assert (cluster / "results/digits-lt/tables/results.md").read_text() == \
        (local / "results/digits-lt/tables/results.md").read_text()


@needs_slurm
def test_a_cancelled_training_job_is_retried_and_the_workflow_completes(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    cfg = {**CONFIG, "stage2": {}}
    cfg["stage1"] = {"ce": {**CONFIG["stage1"]["ce"], "epochs": 60}}
    write_config(work, cfg)
    checkpoint = "results/digits-lt/seed0/stage1/ce/model.pt"  # only the chain up to training
    cmd = [snakemake_bin(), "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--workflow-profile", str(site_profile(tmp_path)), *NO_ACCOUNTING, checkpoint]
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    train_log = work / "results" / "digits-lt" / "logs" / "seed0" / "stage1_ce.log"
    cancelled = None
    deadline = time.time() + 300
    while cancelled is None and time.time() < deadline and proc.poll() is None:
        if train_log.exists() and "epoch 3/60" in train_log.read_text():
            q = subprocess.run(["squeue", "-h", "-o", "%i %k %T"], capture_output=True, text=True).stdout
            for line in q.splitlines():
                jobid, comment, state = line.split()
                if comment.startswith("rule_train_stage1") and state == "RUNNING":
                    subprocess.run(["scancel", jobid], check=True)
                    cancelled = int(jobid)
        time.sleep(0.5)
    out, _ = proc.communicate(timeout=600)
    assert cancelled is not None, "never saw the training job running:\n" + out[-3000:]
    assert proc.returncode == 0, out[-5000:]
    ids = submitted(out)["train_stage1"]
    assert ids[0] == cancelled and len(ids) >= 2  # resubmitted after the kill
    assert (work / checkpoint).exists()
    text = train_log.read_text()  # the retry's log: it continued from the cancelled job's epochs
    assert re.search(r"resumed from epoch [1-9]\d*/60", text), text[:2000]
    assert "kept epoch" in text
