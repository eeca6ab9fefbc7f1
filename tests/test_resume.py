"""Stage 1 resumes after a kill with the weights of an uninterrupted run; non-finite losses and
gradients stop it; the precision and memory-format options are honoured."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import lmdlt.stage1.trainer as trainer
from conftest import link_digits
from lmdlt.cli import main as cli_main
from lmdlt.config import validate_variant
from lmdlt.resume import resume_path
from lmdlt.stage1.ce import CrossEntropy
from lmdlt.stage1.trainer import train_stage1


# methods whose state lives partly outside the network: an EMA teacher and step counter (rrl),
# centroids and a paired class-aware sampler (iccl), running covariances (lcreg), cumulative
# class counts (seesaw), per-step noise from the global RNG (gcl), a paired balanced sampler
# (bal_mixup), a sampler re-weighted every epoch (progressive)
VARIANTS = {
    "ce": {"method": "ce"},
    # the slow augmentations off; grid dropout and flips still draw from the global RNG
    "rrl": {"method": "rrl", "params": {"consistency_start_epoch": 0, "ema_decay": 0.9, "blur_p": 0,
                                        "jitter_p": 0, "rotation_degrees": 0}},
    "iccl": {"method": "iccl", "params": {"warmup_epochs": 1, "dim": 8}},
    "lcreg": {"method": "lcreg", "params": {"num_latent": 4}},
    "seesaw": {"method": "seesaw"},
    "gcl": {"method": "gcl"},
    "bal_mixup": {"method": "bal_mixup", "params": {"alpha": 1.0}},
    "progressive": {"method": "ce", "sampler": "progressive"},
}


@pytest.fixture(scope="module")
def data(digits, tmp_path_factory):
    return link_digits(digits, tmp_path_factory.mktemp("resume_data"))


def variant(name, **over):
    return {"epochs": 2, "batch_size": 32, "lr": 0.05, "augment": {"crop_padding": 1},
            "model": {"width": 8}, **VARIANTS[name], **over}


def train(data, cfg, out, **kw):
    return train_stage1(data / "split.parquet", data / "images.h5", validate_variant("stage1", cfg), 0,
                        out, threads=1, device="cpu", **kw)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


def interrupt_after_epoch(monkeypatch, epochs_done):
    """Stop a run in-process once ``epochs_done`` epochs (and their resume state) are written."""
    def stop(sampler, epoch):
        if epoch == epochs_done:
            raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "set_sampler_epoch", stop)


def cli_args(data, cfg, out):
    return ["train-stage1", "--split", str(data / "split.parquet"), "--images", str(data / "images.h5"),
            "--params", json.dumps(cfg), "--seed", "0", "--threads", "1", "--device", "cpu",
            "--precision", "fp32", "--channels-last", "off", "--out", str(out)]


@pytest.mark.parametrize("name", ["ce", "rrl"])
def test_sigkilled_training_resumes_to_the_uninterrupted_weights(data, tmp_path, caplog, name):
    cfg = variant(name, epochs=3, select="last")  # last: the kept weights are the final ones
    ref = tmp_path / "ref" / "model.pt"
    train(data, cfg, ref)

    out = tmp_path / "run" / "model.pt"
    out.parent.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.log", "w") as log1:
        proc = subprocess.Popen([sys.executable, "-m", "lmdlt.cli", *cli_args(data, cfg, out)],
                                stdout=log1, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while not resume_path(out).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    assert not out.exists()
    done = torch.load(resume_path(out), weights_only=True)["state"]["epoch"]
    assert 1 <= done < cfg["epochs"]

    # the same command again, in this process (a second interpreter start costs ~10 s on a busy machine)
    with caplog.at_level(logging.INFO, logger="lmdlt.stage1"):
        assert cli_main(cli_args(data, cfg, out)) == 0
    assert f"resumed from epoch {done}/{cfg['epochs']}" in caplog.text
    assert f"epoch {done}/{cfg['epochs']} loss" not in caplog.text  # finished epochs are not re-run
    assert_bitwise_equal(weights(out), weights(ref))
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.pt"]  # no resume file, no temporaries


@pytest.mark.parametrize("name", ["iccl", "lcreg", "seesaw", "gcl", "bal_mixup", "progressive"])
def test_interrupted_training_resumes_exactly(data, tmp_path, monkeypatch, caplog, name):
    cfg = variant(name)
    ref = tmp_path / "ref.pt"
    meta_ref = train(data, cfg, ref)
    out = tmp_path / "model.pt"
    with monkeypatch.context() as m:
        interrupt_after_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(data, cfg, out)
    assert resume_path(out).exists() and not out.exists()
    with caplog.at_level(logging.INFO, logger="lmdlt.stage1"):
        meta = train(data, cfg, out)
    assert "resumed from epoch 1/2" in caplog.text
    assert_bitwise_equal(weights(out), weights(ref))
    assert meta["selected_epoch"] == meta_ref["selected_epoch"]
    assert [r["loss"] for r in meta["history"]] == [r["loss"] for r in meta_ref["history"]]
    assert not resume_path(out).exists()


def test_resume_state_of_another_run_is_ignored_and_deleted(data, tmp_path, monkeypatch, caplog):
    out = tmp_path / "model.pt"
    with monkeypatch.context() as m:
        interrupt_after_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(data, variant("ce", lr=0.01), out)
    assert resume_path(out).exists()
    with caplog.at_level(logging.INFO):
        train(data, variant("ce"), out)
    assert "ignoring resume state" in caplog.text and "another run" in caplog.text
    assert "resumed from" not in caplog.text
    train(data, variant("ce"), tmp_path / "fresh.pt")
    assert_bitwise_equal(weights(out), weights(tmp_path / "fresh.pt"))
    assert not resume_path(out).exists()


def nan_at(epoch, step, grad=False):
    """CrossEntropy.loss that turns its loss (or, with ``grad``, the classifier's gradient)
    non-finite at one (0-based epoch, 1-based step)."""
    original = CrossEntropy.loss
    calls = {}

    def loss(self, net, x, y, e):
        calls[e] = calls.get(e, 0) + 1
        terms = original(self, net, x, y, e)
        if (e, calls[e]) == (epoch, step):
            if grad:
                net.classifier.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
            else:
                terms["ce"] = terms["ce"] * float("nan")
        return terms
    return loss


def test_non_finite_loss_stops_training_naming_epoch_step_and_term(data, tmp_path, monkeypatch):
    monkeypatch.setattr(CrossEntropy, "loss", nan_at(1, 3))
    out = tmp_path / "model.pt"
    with pytest.raises(FloatingPointError, match=r"loss at epoch 2 step 3: term\(s\) ce=nan"):
        train(data, variant("ce"), out)
    assert not out.exists()
    assert not resume_path(out).exists()  # epoch 1's state went too: nothing claims progress


def test_non_finite_gradient_stops_training_naming_the_parameter(data, tmp_path, monkeypatch):
    monkeypatch.setattr(CrossEntropy, "loss", nan_at(0, 3, grad=True))
    out = tmp_path / "model.pt"
    with pytest.raises(FloatingPointError, match="gradient at epoch 1 step 3: parameter classifier.weight"):
        train(data, variant("ce"), out)
    assert not out.exists() and not resume_path(out).exists()


def first_step(monkeypatch):
    """Record the first loss and whether the forward pass ran under bf16 autocast."""
    original = CrossEntropy.loss
    seen = []

    def loss(self, net, x, y, e):
        terms = original(self, net, x, y, e)
        if not seen:
            seen.append((float(terms["ce"].detach()), torch.is_autocast_enabled("cpu")
                         and torch.get_autocast_dtype("cpu") == torch.bfloat16))
        return terms
    monkeypatch.setattr(CrossEntropy, "loss", loss)
    return seen


@pytest.mark.parametrize("channels_last", ["off", "on"])
def test_bf16_on_cpu_trains_close_to_fp32(data, tmp_path, monkeypatch, caplog, channels_last):
    cfg = variant("ce", epochs=1)
    fp32 = first_step(monkeypatch)
    train(data, cfg, tmp_path / "fp32.pt", precision="fp32")
    bf16 = first_step(monkeypatch)
    with caplog.at_level(logging.INFO, logger="lmdlt.stage1"):
        meta = train(data, cfg, tmp_path / "bf16.pt", precision="bf16", channels_last=channels_last)
    assert f"device cpu, precision bf16, channels-last {channels_last == 'on'}" in caplog.text
    assert meta["compute"] == {"device": "cpu", "precision": "bf16", "channels_last": channels_last == "on",
                               "augment": "loader"}
    (loss32, autocast32), (loss16, autocast16) = fp32[0], bf16[0]
    assert not autocast32 and autocast16
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert all(v.dtype != torch.bfloat16 for v in weights(tmp_path / "bf16.pt").values())
