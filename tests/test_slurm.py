"""The SLURM profile against a real SLURM scheduler (single node on 127.0.0.1, one GRES GPU).

Needs a running cluster: `.ci/run` starts one with tests/slurm/cluster.sh (Debian's slurm-wlm
and munge); elsewhere these tests skip. The cluster has no accounting, so the runs add the
plugin's overrides for that (no account, squeue for status), and the site values of the shipped
profile (CPUs, memory, run time) are scaled to the 2-CPU test node; everything else is the
shipped workflow/profiles/slurm/config.yaml. The shipped profile groups a (seed, encoder)'s
feature extraction with its calibrations (docs/cluster.md, "Grouped submissions"); one test
counts the `sbatch` submissions with and without that grouping.
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
CPU_RULES = {"image_cache", "split", "train_stage2"}
GROUPED_RULES = {"extract_features", "train_stage2"}  # one SLURM job per (seed, encoder)
GROUP = "stage2_seed{seed}_{s1}"
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


def test_profile_groups_each_seed_and_encoders_calibrations():
    """The light jobs of one (seed, encoder) share a group named after both wildcards; the
    heavy GPU jobs stay alone; group-components spans every stage-2 variant of a shipped
    experiment (an encoder's new calibrations, with its features already there, are one job)."""
    prof = shipped_profile()
    assert prof["groups"] == dict.fromkeys(GROUPED_RULES, GROUP)
    assert not {"train_stage1", "train_stage2_encoder"} & set(prof["groups"])
    most = max(len(yaml.safe_load(f.read_text()).get("stage2") or {})
               for f in (REPO / "workflow" / "experiments").glob("*.yaml"))
    assert prof["group-components"] == {GROUP: prof["group-components"][GROUP]}
    assert prof["group-components"][GROUP] >= most
    # the group job's memory, max(extraction, calibrations side by side): the extraction's
    per_rule = prof["set-resources"]
    assert most * per_rule["train_stage2"]["mem_mb"] <= per_rule["extract_features"]["mem_mb"]


REPORT_RULE_FILES = ("tables.smk", "figures.smk", "provenance.smk", "results_page.smk")


@pytest.mark.parametrize("name", REPORT_RULE_FILES)
def test_report_rules_are_local(name):
    """Every rule that makes a report output runs on the submitting host, never through sbatch."""
    text = (REPO / "workflow" / "rules" / name).read_text()
    blocks = re.split(r"^\s*rule ", text, flags=re.M)[1:]
    assert blocks, f"{name} defines no rules"
    not_local = [b.split(":")[0] for b in blocks if "localrule: True" not in b]
    assert not not_local, f"report rules submitted to the cluster: {not_local}"


def site_profile(tmp_path, epochs_gpu_runtime=10, grouped=True):
    """The shipped profile with its SITE values scaled to the 2-CPU test node (``grouped=False``:
    without its groups, every job its own submission)."""
    prof = shipped_profile()
    prof["default-resources"].update({"mem_mb": 1000, "runtime": 10})
    prof["set-threads"] = {rule: 1 for rule in prof["set-threads"]}
    for rule in GPU_RULES:
        prof["set-resources"][rule].update({"cpus_per_gpu": 1, "mem_mb": 2000, "runtime": epochs_gpu_runtime})
    prof["set-resources"]["train_stage2"].update({"mem_mb": 500, "runtime": 5})
    if not grouped:
        prof.pop("groups", None), prof.pop("group-components", None)
    d = tmp_path / ("profile" if grouped else "profile-ungrouped")
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump(prof))
    return d


def submitted(log_text: str) -> dict[str, list[int]]:
    """rule -> SLURM job ids of the jobs submitted one by one, from the Snakemake log."""
    jobs: dict[str, list[int]] = {}
    for m in re.finditer(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_([A-Za-z0-9_]+)/", log_text):
        jobs.setdefault(m.group(2), []).append(int(m.group(1)))
    return jobs


def submitted_groups(log_text: str) -> dict[str, list[int]]:
    """Group job name (group id + the rules it holds) -> SLURM job ids, from the Snakemake log."""
    jobs: dict[str, list[int]] = {}
    for m in re.finditer(r"submitted with SLURM jobid (\d+) \(log: \S*/group_([^/\s]+)/", log_text):
        jobs.setdefault(m.group(2), []).append(int(m.group(1)))
    return jobs


def sbatch_count(log_text: str) -> int:
    """The number of `sbatch` submissions of a run, counted by SLURM itself: the plugin names
    every job of a run after its run id, and MinJobAge keeps finished jobs in squeue. Checked
    against the Snakemake log's count of submissions (one line per sbatch)."""
    run_id = re.search(r"SLURM run ID: (\S+)", log_text).group(1)
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i", "--name", run_id],
                         capture_output=True, text=True, check=True).stdout
    ids = {line.split("_")[0] for line in out.split()}  # an array task is <jobid>_<task>
    logged = len(re.findall(r"submitted with SLURM jobid \d+|Submitted array job with", log_text))
    assert len(ids) == logged, (sorted(ids), logged)
    return len(ids)


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
    log = proc.stdout + proc.stderr
    jobs, groups = submitted(log), submitted_groups(log)
    # every non-local job went through sbatch, ICC's encoder fine-tuning included; the
    # extraction and cRT as one group job (the shipped profile's groups)
    assert set(jobs) == (GPU_RULES | CPU_RULES) - GROUPED_RULES, jobs
    assert set(groups) == {"stage2_seed0_ce_extract_features_train_stage2"}, groups
    assert not set(jobs) & LOCAL_RULES
    for rule, ids in [*jobs.items(), *groups.items()]:
        for jobid in ids:
            tres = tres_per_job(jobid)
            if rule in GPU_RULES or "extract_features" in rule:  # a group job holding a GPU rule
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


GROUP_CONFIG = {**CONFIG,
                "stage1": {"ce": CONFIG["stage1"]["ce"], "ce1": {**CONFIG["stage1"]["ce"], "label": "CE1", "epochs": 1}},
                "stage2": {"crt": CONFIG["stage2"]["crt"], "ncm": {"method": "ncm", "label": "NCM"}}}
MORE_VARIANTS = {"tau": {"method": "tau_norm", "label": "tau-norm"},
                 "lws": {"method": "lws", "label": "LWS", "params": {"epochs": 1}}}


def cluster_run(work, profile) -> str:
    proc = run_snakemake(work, "--workflow-profile", str(profile), *NO_ACCOUNTING)
    return proc.stdout + proc.stderr


def metric_files(work) -> dict[str, dict]:
    root = work / "results" / "digits-lt"
    return {str(f.relative_to(root)): read_json(f)["metrics"] for f in sorted(root.glob("seed*/stage*/**/metrics.json"))}


@needs_slurm
def test_grouping_submits_one_job_per_seed_and_encoder_for_its_calibrations(tmp_path):
    """The shipped profile's groups against the same profile without them, on a real SLURM:
    one seed, two encoders, two calibrations each; then two more calibrations with the features
    already there. Counts every sbatch (SLURM's own job list, checked against the log)."""
    pairs = [(0, "ce"), (0, "ce1")]
    logs, works = {}, {}
    profiles = {"ungrouped": site_profile(tmp_path, grouped=False), "grouped": site_profile(tmp_path)}
    for name, profile in profiles.items():
        work = tmp_path / name
        work.mkdir()
        write_config(work, GROUP_CONFIG)
        first = cluster_run(work, profile)
        write_config(work, {**GROUP_CONFIG, "stage2": {**GROUP_CONFIG["stage2"], **MORE_VARIANTS}})
        logs[name], works[name] = (first, cluster_run(work, profile)), work
    (u1, u2), (g1, g2) = logs["ungrouped"], logs["grouped"]

    # without groups: one sbatch per job
    assert not submitted_groups(u1) and not submitted_groups(u2)
    assert {r: len(ids) for r, ids in submitted(u1).items()} == {
        "image_cache": 1, "split": 1, "train_stage1": 2, "extract_features": 2, "train_stage2": 4}
    assert sbatch_count(u1) == 10
    assert {r: len(ids) for r, ids in submitted(u2).items()} == {"train_stage2": 4}
    assert sbatch_count(u2) == 4

    # grouped: a (seed, encoder)'s extraction and calibrations in one submission, holding the GPU
    fresh = {f"{GROUP.format(seed=s, s1=e)}_extract_features_train_stage2" for s, e in pairs}
    assert {r: len(ids) for r, ids in submitted(g1).items()} == {"image_cache": 1, "split": 1, "train_stage1": 2}
    assert {g: len(ids) for g, ids in submitted_groups(g1).items()} == dict.fromkeys(fresh, 1)
    assert sbatch_count(g1) == 6
    for g, (jobid,) in submitted_groups(g1).items():
        assert "gpu:1" in tres_per_job(jobid), g
    # features already there: the two new calibrations of an encoder, one submission, no GPU
    # (two disconnected jobs of one group: group-components joins them)
    added = {f"{GROUP.format(seed=s, s1=e)}_train_stage2" for s, e in pairs}
    assert not submitted(g2)
    assert {g: len(ids) for g, ids in submitted_groups(g2).items()} == dict.fromkeys(added, 1)
    assert sbatch_count(g2) == 2
    for g, (jobid,) in submitted_groups(g2).items():
        assert "gpu" not in tres_per_job(jobid), g

    # and the same results
    a, b = metric_files(works["ungrouped"]), metric_files(works["grouped"])
    assert len(a) == len(pairs) * (1 + 4) and a == b
    table = "results/digits-lt/tables/results.md"
    assert (works["ungrouped"] / table).read_text() == (works["grouped"] / table).read_text()


@needs_slurm
def test_stage1_trainings_as_one_job_array(tmp_path):
    """Plugin >= 2.8's --slurm-array-jobs (opt-in, docs/cluster.md): the two encoders' stage-1
    trainings go out as one sbatch --array, and both checkpoints are made."""
    work = tmp_path / "work"
    work.mkdir()
    write_config(work, {**GROUP_CONFIG, "stage2": {}})
    checkpoints = [f"results/digits-lt/seed0/stage1/{s1}/model.pt" for s1 in GROUP_CONFIG["stage1"]]
    proc = run_snakemake(work, "--workflow-profile", str(site_profile(tmp_path)), *NO_ACCOUNTING,
                         "--slurm-array-jobs", "train_stage1", *checkpoints)
    log = proc.stdout + proc.stderr
    assert {r: len(ids) for r, ids in submitted(log).items()} == {"image_cache": 1, "split": 1}
    arrays = re.findall(r"Submitted array job with Snakemake IDs (\S+) and SLURM job ID (\d+)", log)
    assert len(arrays) == 1 and len(arrays[0][0].split(",")) == 2, arrays
    assert sbatch_count(log) == 3
    assert all((work / c).exists() for c in checkpoints)
