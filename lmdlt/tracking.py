"""Opt-in experiment tracking: each run's parameters, its per-epoch (per ICC iteration) curves
and its final metrics, written to MLflow and/or TensorBoard file stores under the experiment's
results folder (no server).

Config (off by default)::

    tracking: {mlflow: true, tensorboard: true}

* MLflow: ``<results_dir>/<name>/tracking/mlruns`` (file store; experiment = the dataset
  name, run name = ``seed0/stage1/ce``, ``seed0/stage2/rrl/icc``, tag ``lmdlt.run``). MLflow
  3 keeps its file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE``
  is set; this module sets it for its own store. A per-run folder is safe under concurrent
  jobs, where one SQLite database would lock (and mlflow-skinny ships no SQLite migrations).
* TensorBoard: ``<results_dir>/<name>/tracking/tensorboard/<run name>/`` event files
  (``torch.utils.tensorboard``), one folder per run.

The training loops see one small callback interface, ``Tracker``: ``log_params``,
``log_step(step, values)`` (an epoch, an ICC iteration), ``log_final(values)``, ``close``.
Off, they get ``NO_TRACKING``, whose methods do nothing, and this module imports neither
library (``tests/test_tracking.py`` checks it). Which runs: stage-1 training (curves: loss and
its terms, validation BACC, learning rate, seconds; final: the kept epoch and its validation
BACC), feature extraction (the stage-1 run's test metrics, logged into the training job's run),
and every stage-2 job (ICC's per-iteration curves; final: the test metrics and the method's
summary). Tracking observes the jobs that run: switching it on re-runs nothing
(``TrackingParam``); ``snakemake --forcerun`` re-runs what should be tracked.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

TRACKING_FOLDER = "tracking"


class Tracker:
    """The callback interface the training loops call. This base does nothing: tracking off."""

    enabled = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's settings (nested dicts are flattened to dotted keys)."""

    def log_step(self, step: int, values: Mapping[str, Any]) -> None:
        """One point of every curve: an epoch, an ICC iteration (non-numbers are skipped)."""

    def log_final(self, values: Mapping[str, Any]) -> None:
        """The run's final metrics."""

    def close(self, failed: bool = False) -> None:
        """End the run (``failed``: it raised)."""

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


NO_TRACKING = Tracker()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"params": {"lambda_1": 1.0}} -> {"params.lambda_1": 1.0}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite real numbers of ``values`` (numpy and 0-d torch scalars included), as floats."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or isinstance(v, (str, bytes, list, tuple, dict)) or v is None:
            continue
        try:
            x = float(v)
        except (TypeError, ValueError, RuntimeError):  # arrays, tensors with several values
            continue
        if math.isfinite(x):
            out[k] = x
    return out


class TrackingParam:
    """A rule's ``tracking`` param: the config's ``tracking`` section plus where and under
    which run name to log, formatted into the shell command as JSON.

    Not a plain value on purpose: Snakemake records only plain params (str, numbers, dicts...)
    for its params rerun trigger and skips other objects, and the params stamps
    (``lmdlt.stamps``) leave it out, so switching tracking on or off re-runs no job. Tracking
    changes no output; it observes the jobs that run."""

    def __init__(self, section: Mapping[str, Any] | None, root: str, run: str) -> None:
        section = dict(section or {})
        self.spec = {"mlflow": bool(section.get("mlflow")), "tensorboard": bool(section.get("tensorboard"))}
        if self.spec["mlflow"] or self.spec["tensorboard"]:
            self.spec.update({"dir": f"{root}/{TRACKING_FOLDER}", "experiment": Path(root).name, "run": run})

    def __str__(self) -> str:
        return json.dumps(self.spec, sort_keys=True)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __repr__(self) -> str:
        return f"TrackingParam({self})"


def open_tracker(spec: Mapping[str, Any] | None, params: Mapping[str, Any] | None = None,
                 attach: bool = False) -> Tracker:
    """A ``Tracker`` for ``spec`` (``TrackingParam``'s JSON: mlflow, tensorboard, dir,
    experiment, run); ``NO_TRACKING`` when both are off or ``spec`` is None. ``params`` are
    logged at once. ``attach``: log into the newest run of that name (feature extraction adds
    the test metrics to its training job's run), a new one when there is none."""
    if not spec or not (spec.get("mlflow") or spec.get("tensorboard")):
        return NO_TRACKING
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 tracks the run
        return NO_TRACKING
    missing = [k for k in ("dir", "experiment", "run") if not spec.get(k)]
    if missing:
        raise ValueError(f"tracking: {', '.join(missing)} missing from {dict(spec)} "
                         "(the rules pass them; by hand give dir, experiment and run)")
    backends: list[Tracker] = []
    try:
        if spec.get("mlflow"):
            backends.append(MLflowTracker(spec["dir"], spec["experiment"], spec["run"], attach))
        if spec.get("tensorboard"):
            backends.append(TensorBoardTracker(spec["dir"], spec["run"], attach))
    except BaseException:
        for b in backends:
            b.close(failed=True)
        raise
    tracker = _Fanout(backends)
    if params:
        tracker.log_params(params)
    return tracker


class _Fanout(Tracker):
    enabled = True

    def __init__(self, backends: list[Tracker]) -> None:
        self.backends = backends

    def log_params(self, params):
        for b in self.backends:
            b.log_params(params)

    def log_step(self, step, values):
        for b in self.backends:
            b.log_step(step, values)

    def log_final(self, values):
        for b in self.backends:
            b.log_final(values)

    def close(self, failed=False):
        for b in self.backends:
            b.close(failed)


def mlflow_uri(tracking_dir) -> str:
    """The MLflow tracking URI of a tracking folder (``file://.../mlruns``)."""
    return (Path(tracking_dir) / "mlruns").resolve().as_uri()


def mlflow_client(tracking_dir):
    """An ``MlflowClient`` on the file store of a tracking folder (reading it back)."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: module docstring
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_uri(tracking_dir))


class MLflowTracker(Tracker):
    """One MLflow run in the file store ``<dir>/mlruns`` (the client API only: no global active
    run, so forked jobs of the job server share nothing)."""

    enabled = True
    MAX_PARAM = 6000  # MLflow's limit on a param value's length

    def __init__(self, tracking_dir, experiment: str, run: str, attach: bool = False) -> None:
        from mlflow.exceptions import MlflowException

        self.client = mlflow_client(tracking_dir)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                eid = self.client.create_experiment(experiment)
            except MlflowException:  # a concurrent job created it first
                eid = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            eid = exp.experiment_id
        self.run_id = None
        if attach:
            found = self.client.search_runs([eid], filter_string=f"tags.`lmdlt.run` = '{run}'",
                                            order_by=["attributes.start_time DESC"], max_results=1)
            self.run_id = found[0].info.run_id if found else None
        if self.run_id is None:
            self.run_id = self.client.create_run(eid, run_name=run, tags={"lmdlt.run": run}).info.run_id
        self.step = 0

    def log_params(self, params):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:self.MAX_PARAM]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit on params
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _metrics(self, step: int, values):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in numbers(values).items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_step(self, step, values):
        self.step = max(self.step, int(step))
        self._metrics(int(step), values)

    def log_final(self, values):
        self._metrics(self.step, values)

    def close(self, failed=False):
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
            self.run_id = None


class TensorBoardTracker(Tracker):
    """One TensorBoard run: the event files in ``<dir>/tensorboard/<run>/``. A new run (not
    ``attach``) removes that folder's earlier event files: a re-run replaces the curves, as it
    replaces the checkpoint."""

    enabled = True

    def __init__(self, tracking_dir, run: str, attach: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(tracking_dir) / "tensorboard" / run
        if not attach and self.logdir.is_dir():
            for old in self.logdir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.step = 0

    def log_params(self, params):
        flat = flatten(params)
        rows = "\n".join(f"| {k} | {json.dumps(v, default=str)} |" for k, v in flat.items())
        self.writer.add_text("params", "| setting | value |\n|---|---|\n" + rows, 0)

    def log_step(self, step, values):
        self.step = max(self.step, int(step))
        for k, v in numbers(values).items():
            self.writer.add_scalar(k, v, int(step))

    def log_final(self, values):
        for k, v in numbers(values).items():
            self.writer.add_scalar(k, v, self.step)

    def close(self, failed=False):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
