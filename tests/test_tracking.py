"""Opt-in experiment tracking, read back with each library's own reader: a stage-1 curve, ICC's
per-iteration curve and the final test metrics in MLflow's file store and in TensorBoard's
event files; off by default, and off imports neither library."""
import json
import subprocess
import sys

import h5py
import pytest
import torch

from conftest import dry_run_jobs, run_snakemake, write_config
from lmdlt.config import validate_config
from lmdlt.io import read_json
from lmdlt.tracking import NO_TRACKING, TrackingParam, mlflow_client, open_tracker


def _history(tiny_experiment, seed):
    ckpt = torch.load(tiny_experiment / f"seed{seed}/stage1/ce/model.pt", weights_only=True)
    return ckpt["meta"]["history"]


def _mlflow_run(client, name, experiment="tiny"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`lmdlt.run` = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_mlflow_holds_the_stage1_curve_and_the_final_test_metrics(tiny_experiment):
    client = mlflow_client(tiny_experiment / "tracking")  # MLflow's own client on the file store
    run = _mlflow_run(client, "seed1/stage1/ce")
    history = _history(tiny_experiment, 1)
    curve = client.get_metric_history(run.info.run_id, "val_bacc")
    assert [(m.step, m.value) for m in curve] == [(r["epoch"], r["val_bacc"]) for r in history]
    lr = client.get_metric_history(run.info.run_id, "lr")
    assert [m.value for m in lr] == pytest.approx([r["lr"] for r in history])
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [m.value for m in loss] == pytest.approx([r["loss"] for r in history])
    # the extraction job's test metrics joined the training job's run
    metrics = read_json(tiny_experiment / "seed1/stage1/ce/metrics.json")["metrics"]
    assert run.data.metrics["test/bacc"] == metrics["bacc"]
    assert run.data.metrics["selected_val_bacc"] == max(r["val_bacc"] for r in history)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.params["seed"] == "1"
    assert run.data.params["model.arch"] == "small_resnet"


def test_mlflow_holds_icc_per_iteration_and_its_test_metrics(tiny_experiment):
    client = mlflow_client(tiny_experiment / "tracking")
    run = _mlflow_run(client, "seed0/stage2/ce/icc")
    with h5py.File(tiny_experiment / "seed0/stage2/ce/icc/predictions.h5") as f:
        val = f["state/history/val_bacc"][:].tolist()
    curve = client.get_metric_history(run.info.run_id, "val_bacc")
    assert [(m.step, m.value) for m in curve] == [(j + 1, v) for j, v in enumerate(val)]
    assert {"m_loss", "e_label", "m_lr", "e_lr"} <= set(run.data.metrics)
    metrics = read_json(tiny_experiment / "seed0/stage2/ce/icc/metrics.json")["metrics"]
    assert run.data.metrics["test/bacc"] == metrics["bacc"]
    assert run.data.metrics["kept_iteration"] in (1, 2)
    assert run.data.params["params.iterations"] == "2"


def test_tensorboard_holds_the_same_curve_and_metric(tiny_experiment):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_experiment / "tracking/tensorboard/seed0/stage1/ce"))
    events.Reload()
    history = _history(tiny_experiment, 0)
    curve = events.Scalars("val_bacc")
    assert [e.step for e in curve] == [r["epoch"] for r in history]
    assert [e.value for e in curve] == pytest.approx([r["val_bacc"] for r in history], abs=1e-6)
    metrics = read_json(tiny_experiment / "seed0/stage1/ce/metrics.json")["metrics"]
    assert events.Scalars("test/bacc")[-1].value == pytest.approx(metrics["bacc"], abs=1e-6)
    assert "params/text_summary" in events.Tags()["tensors"]  # the settings, as text


def test_off_by_default_and_off_imports_neither_library(tiny_experiment, tmp_path):
    config = validate_config({"dataset": {"name": "x", "source": "digits"}, "split": {"protocol": "cui"},
                              "seeds": [0], "stage1": {"ce": {"method": "ce"}}})
    assert config["tracking"] == {"mlflow": False, "tensorboard": False}
    param = TrackingParam(config["tracking"], "results/x", "seed0/stage1/ce")
    assert json.loads(f"{param}") == {"mlflow": False, "tensorboard": False}
    assert open_tracker(json.loads(str(param))) is NO_TRACKING
    # a whole training job with tracking off, as the rule calls it: neither library imported
    d = tiny_experiment / "seed0"
    images = next((tiny_experiment.parent / "image_cache").glob("*/images_8px.h5"))
    code = (
        "import json, sys\n"
        "from lmdlt.cli import main\n"
        f"assert main(['train-stage1', '--split', {str(d / 'split.parquet')!r}, '--images', {str(images)!r},"
        " '--params', json.dumps({'method': 'ce', 'epochs': 1, 'batch_size': 64}), '--seed', '0',"
        f" '--device', 'cpu', '--threads', '1', '--tracking', {str(param)!r},"
        f" '--out', {str(tmp_path / 'model.pt')!r}]) == 0\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard')"
        " or m.startswith('torch.utils.tensorboard'))\n"
        "assert not loaded, loaded\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "model.pt").is_file()


def test_the_rules_pass_the_tracking_section_and_the_run_name(tmp_path):
    config = {"dataset": {"name": "digits-lt", "source": "digits", "image_size": 8},
              "split": {"protocol": "cui", "imbalance_ratio": 50, "val_per_class": 15, "test_per_class": 30},
              "seeds": [0], "tracking": {"mlflow": True},
              "stage1": {"ce": {"method": "ce", "epochs": 1}},
              "stage2": {"crt": {"method": "crt"}}}
    write_config(tmp_path, config)
    out = run_snakemake(tmp_path, "--dry-run", "--printshellcmds").stdout
    spec = {"dir": "results/digits-lt/tracking", "experiment": "digits-lt", "mlflow": True,
            "tensorboard": False}
    for rule, run in (("train-stage1", "seed0/stage1/ce"), ("extract", "seed0/stage1/ce"),
                      ("train-stage2", "seed0/stage2/ce/crt")):
        line = next(line for line in out.splitlines() if f"lmdlt {rule} " in line)
        assert f"--tracking '{json.dumps({**spec, 'run': run}, sort_keys=True)}'" in line


@pytest.mark.slow
def test_a_tracked_pipeline_run_and_switching_tracking_off_reruns_nothing(tmp_path):
    config = {"dataset": {"name": "digits-lt", "source": "digits", "image_size": 8},
              "split": {"protocol": "cui", "imbalance_ratio": 50, "val_per_class": 15, "test_per_class": 30},
              "seeds": [0], "stage1": {"ce": {"method": "ce", "epochs": 2}},
              "tracking": {"mlflow": True}}
    write_config(tmp_path, config)
    run_snakemake(tmp_path, "--cores", "2")  # jobs run in the job server's forks
    client = mlflow_client(tmp_path / "results/digits-lt/tracking")
    run = _mlflow_run(client, "seed0/stage1/ce", "digits-lt")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_bacc")] == [1, 2]
    assert "test/bacc" in run.data.metrics  # from the extraction job
    write_config(tmp_path, {**config, "tracking": {"mlflow": False}})
    # no job re-runs; only the provenance page, which shows the whole config, is re-made
    assert set(dry_run_jobs(tmp_path)) <= {"report_provenance", "all"}
