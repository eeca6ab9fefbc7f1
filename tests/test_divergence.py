"""Divergence stops the job that diverged (lmdlt.divergence): the rule by hand, every training
loop (stage 1, cRT / LWS / kd_rebalance / cb_wd_max / GCL through train_linear, VFC's sampled
and implicit M-step, ICC's M- and E-steps), the CLI's one-line message naming the stage, the
variant, the epoch and the learning rate, and nothing left behind."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from lmdlt.cli import main
from lmdlt.config import validate_variant
from lmdlt.divergence import FLOOR, GROWTH, DivergenceError, DivergenceGuard, limit, run_context
from lmdlt.resume import ResumeState, resume_path
from lmdlt.stage2.runner import run_stage2, run_stage2_encoder
from test_resume_stage2 import ICC, write_features


# ---- the rule, with hand-computed limits --------------------------------------------------

def test_the_limit_is_1000_x_the_first_step_and_at_least_100():
    assert (GROWTH, FLOOR) == (1e3, 1e2)
    assert limit(2.0) == 2000.0
    assert limit(-3.0) == 3000.0     # magnitude: a loss running off below zero too
    assert limit(1e-3) == 100.0      # a near-zero start (a classifier from stage 1): the floor
    assert limit(None) == 100.0 and limit(float("nan")) == 100.0


def test_an_epoch_above_the_limit_or_non_finite_stops_with_epoch_and_rate():
    g = DivergenceGuard("loop")
    g.check(1999.0, 1, 3, first_step=2.0)   # sets the reference: 2.0, limit 2000
    g.check(5.0, 2, 3, first_step=1e6)      # the reference is taken once
    assert g.reference == 2.0
    with pytest.raises(DivergenceError, match=r"^loop diverged at epoch 3/3 \(learning rate 0\.5\): "
                                              r"mean loss 2001 exceeds 1000 x the first step's loss "
                                              r"\(2\) and 100; lower the learning rate$"):
        g.check(2001.0, 3, 3, lr=0.5)
    with pytest.raises(DivergenceError, match="mean loss -2001 exceeds"):
        g.check(-2001.0, 3, 3)
    with pytest.raises(DivergenceError, match=r"mean loss nan is not finite"):
        g.check(float("nan"), 3, 3)
    with pytest.raises(DivergenceError, match=r"mean loss inf is not finite"):
        g.check(math.inf, 3, 3)
    small = DivergenceGuard("loop")
    small.check(99.0, 1, first_step=1e-3)   # 99 000 x its start but below the floor
    with pytest.raises(DivergenceError, match="exceeds 1000 x the first step's loss \\(0.001\\) and 100"):
        small.check(101.0, 2)


def test_the_guard_accumulates_a_sample_weighted_mean_per_epoch():
    g = DivergenceGuard("loop")
    g.add(torch.tensor(1.0), 3)
    g.add(torch.tensor(3.0), 1)
    assert g.end_epoch(1) == (1.5, 4)       # (3 x 1 + 1 x 3) / 4
    assert g.reference == 1.0               # the first step
    g.add(torch.tensor(2.0), 2)
    assert g.end_epoch(2) == (2.0, 2)       # a new epoch: the sums start again
    g.add(torch.tensor(1e4), 1)
    with pytest.raises(DivergenceError, match="epoch 3"):
        g.end_epoch(3)
    restored = DivergenceGuard("loop")
    restored.load_state_dict(g.state_dict())
    assert restored.reference == 1.0
    restored.load_state_dict(None)          # a resume state from before the guard
    assert restored.reference == 1.0


def test_the_message_names_the_run_inside_its_context():
    with run_context("stage 2", "crt", "/r/exp/seed0/stage2/ce/crt/predictions.h5", {"lr": 1e6}):
        with pytest.raises(DivergenceError, match=r"^stage 2, variant 'ce/crt' \(method crt, lr 1e\+06\): "
                                                  r"crt diverged at epoch 2"):
            DivergenceGuard("crt").check(1e9, 2, first_step=1.0)
    with run_context("stage 1", "ce", "/tmp/model.pt", {"lr": 100}):  # not a pipeline path
        with pytest.raises(DivergenceError, match=r"^stage 1 \(method ce, lr 100\): training diverged"):
            DivergenceGuard("training").check(1e9, 1, first_step=1.0)


# ---- the table rows: through the command ------------------------------------------------

def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"lmdlt {command}: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_stage2_crt_at_lr_1e6_stops_with_one_line_and_writes_nothing(tmp_path, capsys):
    """Before: cRT's loss went 1.4 -> 6.6e9, exit 0, and a chance-level row reached the table."""
    seed_dir = tmp_path / "exp" / "seed0"
    features = seed_dir / "stage1" / "ce" / "features.h5"
    features.parent.mkdir(parents=True)
    write_features(features)
    out = seed_dir / "stage2" / "ce" / "crt" / "predictions.h5"
    metrics = out.with_name("metrics.json")
    rc = main(["train-stage2", "--features", str(features), "--params",
               json.dumps({"method": "crt", "params": {"lr": 1.0e6, "epochs": 3}}),
               "--seed", "0", "--threads", "1", "--out", str(out), "--metrics-out", str(metrics)])
    line = _one_error_line(capsys, "train-stage2")
    assert rc == 1
    assert re.match(r"lmdlt train-stage2: error: stage 2, variant 'ce/crt' \(method crt, lr 1e\+06\): "
                    r"crt diverged at epoch 2/3: mean loss [0-9.e+]+ exceeds 1000 x the first step's "
                    r"loss \([0-9.]+\) and 100; lower the learning rate$", line), line
    assert not out.exists() and not metrics.exists() and not resume_path(out).exists()
    assert not list(out.parent.glob(".*tmp-*"))


@pytest.mark.parametrize("lr,message", [
    # finite but running off: loss 2.1 at the first step, 3.3e5 over epoch 1 (before: exit 0,
    # "kept epoch 1", and feature extraction failing later on "non-finite logits")
    (100.0, r"stage 1, variant 'ce' \(method ce, lr 100\): training diverged at epoch 1/2: "
            r"mean loss [0-9.e+]+ exceeds 1000 x the first step's loss \(2\.\d+\) and 100"),
    # NaN within epoch 1 (before: a FloatingPointError traceback)
    (1.0e6, r"stage 1, variant 'ce' \(method ce, lr 1e\+06\): non-finite stage-1 \w+ at epoch 1 step \d+"),
])
def test_stage1_at_a_diverging_lr_stops_and_keeps_no_epoch(digits, tmp_path, capsys, lr, message):
    out = tmp_path / "exp" / "seed0" / "stage1" / "ce" / "model.pt"
    rc = main(["train-stage1", "--split", str(digits / "split.parquet"), "--images", str(digits / "images.h5"),
               "--params", json.dumps({"method": "ce", "epochs": 2, "batch_size": 64, "lr": lr}),
               "--seed", "0", "--threads", "1", "--device", "cpu", "--out", str(out)])
    line = _one_error_line(capsys, "train-stage1")
    assert rc == 1 and re.match(f"lmdlt train-stage1: error: {message}", line), line
    assert not out.exists() and not resume_path(out).exists()
    assert not list(out.parent.glob(".*tmp-*"))


# ---- every stage-2 loop -------------------------------------------------------------------

@pytest.mark.parametrize("method,params,loop", [
    ("crt", {"lr": 1e6, "epochs": 3}, "crt diverged at epoch 2/3"),
    ("lws", {"lr": 1e6, "epochs": 3}, "lws diverged at epoch 1/3"),
    ("kd_rebalance", {"lr": 1e6, "epochs": 3}, "kd_rebalance diverged at epoch 1/3"),
    ("cb_wd_max", {"lr": 1e6, "epochs": 3, "loss": "cb_ce"}, "cb_wd_max diverged at epoch 1/3"),
    ("vfc", {"m_lr": 1e6, "virtual_per_class": 200, "m_epochs": 2}, "M-step 1 diverged at epoch 1/2"),
])
def test_every_feature_loop_stops_when_its_loss_runs_off(tmp_path, method, params, loop):
    write_features(tmp_path / "f.h5")
    cfg = validate_variant("stage2", {"method": method, "params": params})
    with pytest.raises(DivergenceError, match=f"^stage 2 \\(method {method}, \\w*lr 1e\\+06\\): {loop}: mean loss"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)
    assert not (tmp_path / "p.h5").exists() and not resume_path(tmp_path / "p.h5").exists()


def _running_off(fn, factor=1e5):
    """``fn`` whose loss is multiplied by ``factor`` from its second call on: finite, far above
    the first step's."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        out = fn(*args, **kwargs)
        return out if calls["n"] == 1 else out * factor
    return wrapped


def test_gcl_stops_when_its_loss_runs_off(tmp_path, monkeypatch):
    """GCL's cosine loss is bounded, so no learning rate makes it run off: a loss 1e5 x its
    first step's stands in for one."""
    import lmdlt.stage2.gcl as gcl

    monkeypatch.setattr(gcl, "gcl_loss", _running_off(gcl.gcl_loss))
    write_features(tmp_path / "f.h5")
    cfg = validate_variant("stage2", {"method": "gcl", "params": {"epochs": 2}})
    with pytest.raises(DivergenceError, match=r"^stage 2 \(method gcl, lr 0.002\): gcl diverged at epoch 1/2"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)


def test_the_implicit_m_step_stops_when_its_loss_runs_off(tmp_path, monkeypatch):
    import lmdlt.stage2.vfc as vfc

    monkeypatch.setattr(vfc, "isda_logits", _running_off(vfc.isda_logits))
    write_features(tmp_path / "f.h5")
    cfg = validate_variant("stage2", {"method": "vfc", "params": {"mode": "implicit", "implicit_steps": 12}})
    with pytest.raises(DivergenceError, match=r"M-step 1 \(implicit\) diverged at epoch 1/1"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)


def _icc(stage1, tmp_path, **params):
    cfg = validate_variant("stage2", {"method": "icc", "params": {**ICC, "iterations": 2, **params}})
    run_stage2_encoder(stage1 / "model.pt", stage1 / "split.parquet", stage1 / "images.h5", cfg, 0,
                       tmp_path / "p.h5", threads=1, device="cpu")


def test_icc_m_step_stops_when_its_loss_runs_off(stage1, tmp_path):
    with pytest.raises(DivergenceError, match=r"^stage 2 \(method icc, m_lr 1e\+06, e_lr 0.001\): "
                                              r"M-step 1 diverged at epoch 1/1"):
        _icc(stage1, tmp_path, m_lr=1e6)
    assert not (tmp_path / "p.h5").exists() and not resume_path(tmp_path / "p.h5").exists()


def test_icc_e_step_stops_when_its_loss_runs_off(stage1, tmp_path, monkeypatch):
    import lmdlt.stage2.icc as icc

    original = icc.e_step_terms
    calls = {"n": 0}

    def terms(*args):
        calls["n"] += 1
        return {k: v * (1.0 if calls["n"] == 1 else 1e5) for k, v in original(*args).items()}
    monkeypatch.setattr(icc, "e_step_terms", terms)
    with pytest.raises(DivergenceError, match=r"ICC iteration 1 E-step diverged at epoch 1/1 "
                                              r"\(learning rate 0.001\)"):
        _icc(stage1, tmp_path)
    assert not (tmp_path / "p.h5").exists() and not resume_path(tmp_path / "p.h5").exists()


def test_icc_whose_e_step_blows_the_features_up_is_stopped(stage1, tmp_path):
    """cov_reg 0 on digits: the E-step's FDC term runs off to about -1.6e5 with the inverse of a
    jittered singular covariance, the encoder's features grow to a variance of 2e9, and the
    next M-step's loss reaches 2e11 (before: the run ended at chance level, val BACC 0.10)."""
    with pytest.raises(DivergenceError, match=r"M-step 2 diverged at epoch 1/1"):
        _icc(stage1, tmp_path, cov_reg=0.0)


def test_a_resumed_fit_keeps_its_first_steps_reference(tmp_path, monkeypatch):
    """cRT at lr 1e6 passes epoch 1 (mean 1.4) and runs off in epoch 2. Killed after epoch 1,
    the resumed fit must judge epoch 2 against the first step of epoch 1 (saved in the resume
    state), not against the first step after the resume, which has already run off."""
    write_features(tmp_path / "f.h5")
    cfg = validate_variant("stage2", {"method": "crt", "params": {"lr": 1e6, "epochs": 3}})
    with pytest.raises(DivergenceError) as uninterrupted:
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "a.h5", threads=1)

    class Killed(BaseException):
        pass

    def save_then_die(self, state):
        original(self, state)
        raise Killed()
    original = ResumeState.save
    monkeypatch.setattr(ResumeState, "save", save_then_die)
    with pytest.raises(Killed):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "b.h5", threads=1)
    monkeypatch.setattr(ResumeState, "save", original)
    assert resume_path(tmp_path / "b.h5").exists()
    with pytest.raises(DivergenceError) as resumed:
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "b.h5", threads=1)
    assert str(resumed.value) == str(uninterrupted.value)
    assert "epoch 2/3" in str(resumed.value)


def test_healthy_training_is_not_stopped(tmp_path):
    """The default learning rates pass: the guard fires on running off, not on training."""
    write_features(tmp_path / "f.h5")
    for method in ("crt", "lws", "kd_rebalance", "cb_wd_max", "gcl"):
        cfg = validate_variant("stage2", {"method": method, "params": {"epochs": 3}})
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / f"{method}.h5", threads=1)
        assert (tmp_path / f"{method}.h5").exists()
