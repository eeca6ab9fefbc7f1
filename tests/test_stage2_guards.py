"""lmdlt.stage2.guards and the stage-2 runner's input checks: a non-finite loss or gradient stops
stage 2 naming the epoch, step and term; singular covariances are regularised and logged (VFC,
ICC); features of another checkpoint or split are refused."""
import logging

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmdlt.config import validate_variant
from lmdlt.data.splits import content_hash
from lmdlt.resume import resume_path
from lmdlt.stage2.guards import NonFiniteError
from lmdlt.stage2.linear import train_linear
from lmdlt.stage2.runner import run_stage2, run_stage2_encoder
from test_metrics import make_manifest, rows
from test_resume_stage2 import ICC, write_features


def _poison(path, split="train", row=7, value=np.nan):
    with h5py.File(path, "a") as f:
        x = f[f"{split}/features"][:]
        x[row, 3] = value
        f[f"{split}/features"][...] = x


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_loss_stops_stage2_with_epoch_step_and_term(tmp_path, value):
    write_features(tmp_path / "f.h5")
    _poison(tmp_path / "f.h5", value=value)
    cfg = validate_variant("stage2", {"method": "crt", "params": {"epochs": 2, "batch_size": 500, "sampler": "instance"}})
    with pytest.raises(NonFiniteError, match=r"crt: epoch 1, step 1: non-finite loss term 'loss'"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)
    assert not (tmp_path / "p.h5").exists()


def test_non_finite_gradient_names_the_parameter():
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    y = np.arange(40) % 2
    # finite loss, infinite gradient: d sqrt(u)/du at u = 0
    loss_fn = lambda logits, yb, idx: F.cross_entropy(logits, yb) + torch.sqrt((logits * 0).sum())  # noqa: E731
    with pytest.raises(NonFiniteError, match=r"test loop: epoch 1, step 1: non-finite gradient of "
                                             r"parameter 'weight'"):
        train_linear(x, y, 2, epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.0,
                     sampler="instance", generator=torch.Generator().manual_seed(0), loss_fn=loss_fn,
                     name="test loop")


def test_vfc_diverging_stops_naming_the_m_step(tmp_path):
    write_features(tmp_path / "f.h5")
    cfg = validate_variant("stage2", {"method": "vfc", "params": {
        "virtual_per_class": 50, "m_batch_size": 50, "m_lr": 1e30, "m_schedule": "constant"}})
    with pytest.raises(NonFiniteError, match=r"M-step 1: epoch 1, step \d+: non-finite"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)
    assert not (tmp_path / "p.h5").exists()


def test_vfc_on_non_finite_features_is_a_clear_error(tmp_path):
    write_features(tmp_path / "f.h5")
    _poison(tmp_path / "f.h5")
    cfg = validate_variant("stage2", {"method": "vfc", "params": {"virtual_per_class": 20}})
    with pytest.raises(ValueError, match=r"1 training features are non-finite .* row 7"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)


def _few_shot_features(path, tail_count, rank_deficient=False):
    write_features(path)
    with h5py.File(path, "a") as f:
        x, y, ids = f["train/features"][:], f["train/labels"][:], f["train/ids"][:]
        keep = np.concatenate([np.flatnonzero(y != 3), np.flatnonzero(y == 3)[:tail_count]])
        x, y, ids = x[keep], y[keep], ids[keep]
        if rank_deficient:
            x[:, 8:] = 0.0  # dead feature dimensions: every covariance singular
        for name, arr in (("features", x), ("labels", y), ("ids", ids)):
            del f[f"train/{name}"]
            f[f"train/{name}"] = arr


@pytest.mark.parametrize("tail_count,rank_deficient", [(1, False), (2, False), (5, True)])
def test_singular_covariance_is_regularised_and_logged_not_a_nan_classifier(tmp_path, caplog,
                                                                            tail_count, rank_deficient):
    _few_shot_features(tmp_path / "f.h5", tail_count, rank_deficient)
    cfg = validate_variant("stage2", {"method": "vfc", "params": {
        "virtual_per_class": 100, "m_batch_size": 50, "m_lr": 0.05, "cov_reg": 0.0,
        "m_sampler": "instance"}})
    with caplog.at_level(logging.WARNING, logger="lmdlt"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)
    assert "covariance of class 3 is singular" in caplog.text
    if tail_count == 1:
        assert "class 3 has 1 training feature(s) drawn" in caplog.text
    if rank_deficient:
        assert all(f"covariance of class {k} is singular" in caplog.text for k in range(4))
    with h5py.File(tmp_path / "p.h5") as f:
        for name in ("state/weight", "state/bias", "test/logits"):
            assert np.isfinite(f[name][:]).all(), name


def test_icc_with_singular_covariances_runs_and_logs(stage1, tmp_path, caplog):
    """Digits features (C = 64) from ~12 tail images with cov_reg 0: rank-deficient covariances;
    the Mahalanobis terms of the E-step use the jittered factors. The encoder stays put (e_lr 0):
    with inverse covariances this small FDC is of the order of -1e3 and any encoder step runs
    off, which the divergence guard stops (tests/test_divergence.py); here the factors are tested."""
    cfg = validate_variant("stage2", {"method": "icc", "params": {**ICC, "iterations": 2, "cov_reg": 0.0,
                                                                  "e_lr": 0.0}})
    with caplog.at_level(logging.WARNING, logger="lmdlt"):
        run_stage2_encoder(stage1 / "model.pt", stage1 / "split.parquet", stage1 / "images.h5", cfg, 0,
                           tmp_path / "p.h5", threads=1, device="cpu")
    assert "is singular (not positive definite): regularised" in caplog.text
    with h5py.File(tmp_path / "p.h5") as f:
        assert np.isfinite(f["test/logits"][:]).all()


def test_icc_non_finite_fdc_term_is_named(stage1, tmp_path, monkeypatch):
    import lmdlt.stage2.icc as icc

    monkeypatch.setattr(icc, "fdc_loss", lambda z, *a: z.sum() * float("nan"))
    cfg = validate_variant("stage2", {"method": "icc", "params": {**ICC, "iterations": 1}})
    with pytest.raises(NonFiniteError, match=r"ICC iteration 1 E-step: epoch 1, step 1: non-finite "
                                             r"loss term 'fdc'"):
        run_stage2_encoder(stage1 / "model.pt", stage1 / "split.parquet", stage1 / "images.h5", cfg, 0,
                           tmp_path / "p.h5", threads=1, device="cpu")
    assert not (tmp_path / "p.h5").exists() and not resume_path(tmp_path / "p.h5").exists()


def test_stage2_refuses_features_of_another_checkpoint_or_split(tmp_path):
    write_features(tmp_path / "f.h5")  # records checkpoint c..c and split s..s
    cfg = validate_variant("stage2", {"method": "crt", "params": {"epochs": 1}})
    (tmp_path / "model.pt").write_bytes(b"another checkpoint")
    with pytest.raises(ValueError, match=r"f\.h5 was extracted with checkpoint c{64}, not with "
                                         r".*model\.pt \([0-9a-f]{64}\); re-run feature extraction"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1, checkpoint_path=tmp_path / "model.pt")
    table = make_manifest(tmp_path / "m.parquet", rows())
    with pytest.raises(ValueError, match=rf"f\.h5 was extracted on split s{{64}}, not on .*m\.parquet "
                                         rf"\({content_hash(table)}\)"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1, manifest_path=tmp_path / "m.parquet")
    # the same refusal through the CLI flags the train_stage2 rule passes
    from lmdlt.cli import main
    assert main(["train-stage2", "--features", str(tmp_path / "f.h5"), "--split", str(tmp_path / "m.parquet"),
                 "--params", '{"method": "crt", "params": {"epochs": 1}}', "--seed", "0",
                 "--out", str(tmp_path / "p.h5")]) != 0
    with h5py.File(tmp_path / "f.h5", "a") as f:  # attributes edited after writing
        f.attrs["split_hash"] = "e" * 64
    with pytest.raises(ValueError, match=r"inconsistent provenance, split hash e{64} in its attributes "
                                         r"but s{64} in its provenance record"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1)
    assert not (tmp_path / "p.h5").exists()


def test_stage2_refuses_features_of_another_stage1_config(tmp_path):
    """The features record their encoder's stage-1 config hash; a stage-2 run made for another
    stage-1 variant is refused naming both, and runs for the recorded one."""
    from lmdlt.io import ProvenanceError, h5_read_provenance, h5_write_provenance, sha256_json

    write_features(tmp_path / "f.h5")
    s1 = {"method": "ce", "epochs": 3}
    with h5py.File(tmp_path / "f.h5", "a") as f:
        prov = h5_read_provenance(f)
        prov["parents"]["stage1_config"] = sha256_json(s1)
        h5_write_provenance(f, prov)
    cfg = validate_variant("stage2", {"method": "ncm"})
    with pytest.raises(ProvenanceError, match=rf"f\.h5 was made for another stage-1 config \(config_hash "
                                              rf"{sha256_json(s1)}\)"):
        run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1, stage1_params={**s1, "epochs": 4})
    assert not (tmp_path / "p.h5").exists()
    run_stage2(tmp_path / "f.h5", cfg, 0, tmp_path / "p.h5", threads=1, stage1_params=s1)
    assert (tmp_path / "p.h5").exists()
