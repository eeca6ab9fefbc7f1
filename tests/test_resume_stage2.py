"""Stage 2 resumes after a kill: the resumed predictions are bit-identical (CPU) to an
uninterrupted run's, a foreign or unreadable resume state is ignored with a warning, and the
resume state is gone once the predictions exist."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from lmdlt.config import validate_variant
from lmdlt.io import h5_write_provenance, provenance
from lmdlt.resume import ResumeState, resume_path, run_identity
from lmdlt.stage2.runner import run_stage2

K, C = 4, 16
TRAIN_COUNTS = (120, 40, 12, 5)


def write_features(path, seed=0):
    """A features file in extraction's layout: Gaussian classes, a long-tailed training split."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(K, C))
    w = rng.normal(size=(K, C)).astype(np.float32)
    b = rng.normal(size=K).astype(np.float32)
    with h5py.File(path, "w") as f:
        for split, counts in (("train", TRAIN_COUNTS), ("val", (10,) * K), ("test", (15,) * K)):
            labels = np.repeat(np.arange(K), counts)
            feats = (means[labels] + rng.normal(size=(len(labels), C))).astype(np.float32)
            g = f.create_group(split)
            g["features"] = feats
            g["logits"] = feats @ w.T + b
            g["labels"] = labels.astype(np.int64)
            g.create_dataset("ids", data=np.array([f"{split}{i}" for i in range(len(labels))], dtype=object),
                             dtype=h5py.string_dtype())
        f["classifier/weight"] = w
        f["classifier/bias"] = b
        f.attrs["checkpoint_sha256"] = "c" * 64
        f.attrs["split_hash"] = "s" * 64
        f.attrs["class_names"] = [f"class{k}" for k in range(K)]
        h5_write_provenance(f, provenance("features", {}, {"checkpoint": "c" * 64, "split": "s" * 64}, 0))


def read_predictions(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_identical(a, b):
    pa, pb = read_predictions(a), read_predictions(b)
    assert sorted(pa) == sorted(pb)
    for name in pa:
        if name.startswith("state/history/") and "seconds" in name:
            continue  # wall-clock timings
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


class Killed(BaseException):
    """Stands for a SIGKILL right after a resume state was saved (no cleanup runs)."""


@pytest.fixture
def kill_after_save(monkeypatch):
    """Make ResumeState.save raise Killed after its n-th call."""
    def arm(n):
        original = ResumeState.save
        calls = {"n": 0}

        def save(self, state):
            original(self, state)
            calls["n"] += 1
            if calls["n"] == n:
                raise Killed()
        monkeypatch.setattr(ResumeState, "save", save)
        return lambda: monkeypatch.setattr(ResumeState, "save", original)
    return arm


LOOP_VARIANTS = {
    "crt": {"epochs": 6, "batch_size": 16, "lr": 0.05},
    "lws": {"epochs": 5, "batch_size": 16, "lr": 0.05},
    "kd_rebalance": {"epochs": 5, "batch_size": 16, "lr": 0.01},
    "cb_wd_max": {"epochs": 5, "batch_size": 16, "sampler": "progressive"},
    "vfc": {"virtual_per_class": 60, "m_epochs": 5, "m_batch_size": 32, "m_lr": 0.05, "cov_reg": 0.0},
}


@pytest.mark.parametrize("method", sorted(LOOP_VARIANTS))
def test_interrupted_stage2_resumes_bit_identical(tmp_path, method, kill_after_save, caplog):
    feats = tmp_path / "features.h5"
    write_features(feats)
    cfg = validate_variant("stage2", {"method": method, "params": dict(LOOP_VARIANTS[method])})
    run_stage2(feats, cfg, 3, tmp_path / "reference.h5", threads=1)
    assert not resume_path(tmp_path / "reference.h5").exists()

    out = tmp_path / "resumed.h5"
    disarm = kill_after_save(2)
    with pytest.raises(Killed):
        run_stage2(feats, cfg, 3, out, threads=1)
    disarm()
    assert resume_path(out).exists() and not out.exists()
    with caplog.at_level(logging.INFO, logger="lmdlt"):
        run_stage2(feats, cfg, 3, out, threads=1)
    assert f"resumed from {resume_path(out)}" in caplog.text
    epochs = cfg["params"]["m_epochs" if method == "vfc" else "epochs"]
    assert f"after {'M-step ' if method == 'vfc' else ''}epoch 2/{epochs}" in caplog.text
    assert_identical(out, tmp_path / "reference.h5")
    assert not resume_path(out).exists()  # removed once the predictions exist


def test_foreign_resume_state_is_ignored_with_a_warning(tmp_path, kill_after_save, caplog):
    feats = tmp_path / "features.h5"
    write_features(feats)
    old = validate_variant("stage2", {"method": "crt", "params": dict(LOOP_VARIANTS["crt"])})
    new = validate_variant("stage2", {"method": "crt", "params": {**LOOP_VARIANTS["crt"], "lr": 0.02}})
    out = tmp_path / "p.h5"
    disarm = kill_after_save(3)
    with pytest.raises(Killed):
        run_stage2(feats, old, 0, out, threads=1)  # killed with the old learning rate
    disarm()
    with caplog.at_level(logging.INFO, logger="lmdlt"):
        run_stage2(feats, new, 0, out, threads=1)
    assert f"ignoring resume state {resume_path(out)}: written by another run" in caplog.text
    assert "config_hash" in caplog.text and "resumed from" not in caplog.text
    run_stage2(feats, new, 0, tmp_path / "reference.h5", threads=1)
    assert_identical(out, tmp_path / "reference.h5")
    # another seed is another run too
    ident = run_identity("stage2", new, {"features": "f"}, 0)
    assert ResumeState(out, ident).key != ResumeState(out, {**ident, "seed": 1}).key


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("content", ["garbage", "pickle"])
def test_unreadable_or_unsafe_resume_state_is_ignored(tmp_path, content, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    feats = tmp_path / "features.h5"
    write_features(feats)
    cfg = validate_variant("stage2", {"method": "crt", "params": dict(LOOP_VARIANTS["crt"])})
    out = tmp_path / "p.h5"
    if content == "garbage":
        resume_path(out).write_bytes(b"\x00not a torch file")
    else:
        torch.save({"key": "x", "state": Payload()}, resume_path(out))
    with caplog.at_level(logging.WARNING, logger="lmdlt"):
        run_stage2(feats, cfg, 0, out, threads=1)
    assert f"ignoring resume state {resume_path(out)}: unreadable" in caplog.text
    assert not (tmp_path / "pwned").exists()  # weights_only: the pickled call never ran
    run_stage2(feats, cfg, 0, tmp_path / "reference.h5", threads=1)
    assert_identical(out, tmp_path / "reference.h5")


def _cli(*args):
    return [sys.executable, "-m", "lmdlt.cli", *args]


def _kill_when_logged(cmd, log_path, marker, timeout=300):
    """Run ``cmd`` with stderr to ``log_path``; SIGKILL it once ``marker`` is logged."""
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if marker in open(log_path).read():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, open(log_path).read()[-3000:]


def test_sigkilled_train_stage2_crt_resumes_identically(tmp_path):
    feats = tmp_path / "features.h5"
    write_features(feats)
    params = json.dumps({"method": "crt", "params": {"epochs": 15, "batch_size": 4, "lr": 0.05}})
    common = ["train-stage2", "--features", str(feats), "--params", params, "--seed", "1", "--threads", "1"]
    out = tmp_path / "p.h5"
    _kill_when_logged(_cli(*common, "--out", str(out)), tmp_path / "killed.log", "epoch 3/15")
    assert resume_path(out).exists() and not out.exists()
    rerun = subprocess.run(_cli(*common, "--out", str(out)), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {resume_path(out)}: crt after epoch" in rerun.stderr
    epoch = int(rerun.stderr.split("crt after epoch ")[1].split("/")[0])
    assert 3 <= epoch < 15
    ref = subprocess.run(_cli(*common, "--out", str(tmp_path / "reference.h5")), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert_identical(out, tmp_path / "reference.h5")
    assert not resume_path(out).exists()


ICC = {"iterations": 4, "virtual_per_class": 100, "m_epochs": 1, "m_batch_size": 64, "m_lr": 0.05,
       "e_lr": 0.001, "e_batch_size": 32, "lambda_e": 1e-4, "lr_milestones": [3]}


def _encoder_cmd(stage1, params, out):
    return _cli("train-stage2-encoder", "--checkpoint", str(stage1 / "model.pt"),
                "--split", str(stage1 / "split.parquet"), "--images", str(stage1 / "images.h5"),
                "--params", json.dumps({"method": "icc", "params": params}), "--seed", "2",
                "--threads", "1", "--device", "cpu", "--out", str(out))


def test_sigkilled_icc_resumes_identically(stage1, tmp_path):
    out = tmp_path / "p.h5"
    _kill_when_logged(_encoder_cmd(stage1, ICC, out), tmp_path / "killed.log", "ICC iteration 2/4")
    assert resume_path(out).exists() and not out.exists()
    rerun = subprocess.run(_encoder_cmd(stage1, ICC, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {resume_path(out)}: ICC after iteration" in rerun.stderr
    done = int(rerun.stderr.split("ICC after iteration ")[1].split("/")[0])
    assert 1 <= done < 4
    ref = subprocess.run(_encoder_cmd(stage1, ICC, tmp_path / "reference.h5"), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert_identical(out, tmp_path / "reference.h5")
    assert not resume_path(out).exists()


def test_interrupted_icc_with_a_persistent_classifier_resumes_identically(stage1, tmp_path, kill_after_save):
    """classifier_init once: the classifier and its optimiser state carry over the restart."""
    from lmdlt.stage2.runner import run_stage2_encoder

    cfg = validate_variant("stage2", {"method": "icc", "params": {
        **ICC, "iterations": 3, "classifier_init": "once", "select": "best_val", "e_label_loss": "gce"}})
    args = (stage1 / "model.pt", stage1 / "split.parquet", stage1 / "images.h5", cfg, 5)
    run_stage2_encoder(*args, tmp_path / "reference.h5", threads=1, device="cpu")
    disarm = kill_after_save(2)
    with pytest.raises(Killed):
        run_stage2_encoder(*args, tmp_path / "p.h5", threads=1, device="cpu")
    disarm()
    run_stage2_encoder(*args, tmp_path / "p.h5", threads=1, device="cpu")
    assert_identical(tmp_path / "p.h5", tmp_path / "reference.h5")
