"""`lmdlt status` on synthetic logs: done, running (with a half-written line), failed, stalled."""
from __future__ import annotations

import os
import time
from datetime import datetime

import pytest

from lmdlt.cli import main
from lmdlt.status import collect, fmt_duration, parse_log, status_text


def ts(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") + f",{int(t % 1 * 1000):03d}"


def write(path, lines, tail="", mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines) + tail)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def touch(path, mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def epoch_lines(t0, k, n, per=10.0, bacc=0.5):
    out = [f"{ts(t0)} lmdlt.stage1 INFO device cpu, precision fp32, channels-last False, threads 1; "
           "train 100 images (per class [50, 30, 20]), val 30"]
    for e in range(1, k + 1):
        out.append(f"{ts(t0 + e * per)} lmdlt.stage1 INFO epoch {e}/{n} loss 1.0000 (ce 1.0000) "
                   f"val_bacc {bacc + e / 100:.4f} lr 0.1 {per:.1f}s")
    return out


@pytest.fixture
def experiment(tmp_path):
    now = time.time()
    root = tmp_path / "results" / "mine"
    logs, sd = root / "logs" / "seed0", root / "seed0"
    # done: stage-1 CE, 20 epochs, its checkpoint exists
    write(logs / "stage1_ce.log", epoch_lines(now - 500, 20, 20, per=10) +
          [f"{ts(now - 299)} lmdlt.stage1 INFO kept epoch 18 (select=best_val, val_bacc 0.6800)"])
    touch(sd / "stage1" / "ce" / "model.pt", now - 298)
    # running: RRL at epoch 3 of 10, 20 s per epoch, a half-written line at the end
    write(logs / "stage1_rrl.log", epoch_lines(now - 62, 3, 10, per=20, bacc=0.40),
          tail=f"{ts(now - 1)} lmdlt.stage1 INFO epoch 4/10 loss 0.9", mtime=now - 1)
    (sd / "stage1" / "rrl").mkdir(parents=True)
    # running: an ICC ablation whose name holds '_' (rrl / icc_nofdc), iteration 2 of 5
    write(logs / "stage2_rrl_icc_nofdc.log", [
        f"{ts(now - 40)} lmdlt.stage2 INFO icc on x (device cpu): train 100 images, val 30",
        f"{ts(now - 25)} lmdlt.stage2 INFO ICC iteration 1/5: M loss 0.5000, E on, val_bacc 0.6100; "
        "15.00s (M 5.00s, E 10.00s)",
        f"{ts(now - 10)} lmdlt.stage2 INFO ICC iteration 2/5: M loss 0.4000, E on, val_bacc 0.6300; "
        "15.00s (M 5.00s, E 10.00s)"], mtime=now - 10)
    (sd / "stage2" / "rrl" / "icc_nofdc").mkdir(parents=True)
    # failed: CE + cRT, the CLI's one error line, no output
    write(logs / "stage2_ce_crt.log", [
        f"{ts(now - 100)} lmdlt.stage2 INFO crt on x: train 100 features",
        "lmdlt train-stage2: error: features x were extracted from another checkpoint"], mtime=now - 99)
    (sd / "stage2" / "ce" / "crt").mkdir(parents=True)
    # stalled: seed 1's CE, silent for an hour at 1 min per epoch
    write(root / "logs" / "seed1" / "stage1_ce.log", epoch_lines(now - 4000, 2, 20, per=60),
          mtime=now - 3800)
    # a finished split and evaluation (the evaluation is bookkeeping: shown with --all)
    write(logs / "split.log", [f"{ts(now - 600)} lmdlt.splits INFO split"])
    touch(sd / "split.parquet", now - 599)
    write(logs / "evaluate_ce.log", [f"{ts(now - 290)} lmdlt.metrics INFO bacc"])
    touch(sd / "stage1" / "ce" / "metrics.json", now - 289)
    return root, now


def _by(jobs):
    return {(j.stage, j.variant, j.seed): j for j in jobs}


def test_states_progress_bacc_elapsed_and_eta(experiment):
    root, now = experiment
    jobs = _by(collect(root, now=now))
    done = jobs[("stage1", "ce", 0)]
    assert done.state == "done" and done.progress == "epoch 20/20"
    assert done.val_bacc == pytest.approx(0.70)
    assert done.elapsed_s == pytest.approx(202, abs=1.5)  # first stamp to the checkpoint's mtime
    assert done.eta_s is None

    rrl = jobs[("stage1", "rrl", 0)]
    assert rrl.state == "running" and rrl.progress == "epoch 3/10"  # the half line is not epoch 4
    assert rrl.val_bacc == pytest.approx(0.43)
    assert rrl.elapsed_s == pytest.approx(62, abs=1.5)
    assert rrl.eta_s == pytest.approx(20 * 7 - 2, abs=1.5)  # pace 20 s, 7 left, 2 s into epoch 4

    icc = jobs[("stage2", "rrl/icc_nofdc", 0)]
    assert icc.state == "running" and icc.progress == "iter 2/5"
    assert icc.val_bacc == pytest.approx(0.63)
    assert icc.eta_s == pytest.approx(15 * 3 - 10, abs=1.5)

    crt = jobs[("stage2", "ce/crt", 0)]
    assert crt.state == "failed" and "another checkpoint" in crt.error

    assert jobs[("stage1", "ce", 1)].state == "stalled?"
    assert jobs[("split", "", 0)].state == "done"
    assert ("evaluate", "ce", 0) not in jobs  # done bookkeeping hidden by default
    assert _by(collect(root, now=now, include_all=True))[("evaluate", "ce", 0)].state == "done"


def test_resumed_epochs_do_not_count_in_the_pace(tmp_path):
    t0 = 1_000_000.0
    lines = [f"{ts(t0)} lmdlt.stage1 INFO resumed from epoch 8/10 (x.resume.pt)",
             f"{ts(t0 + 30)} lmdlt.stage1 INFO epoch 9/10 loss 1 (ce 1) val_bacc 0.5000 lr 0.1 30.0s"]
    facts = parse_log(lines)
    assert (facts["k0"], facts["k"], facts["n"]) == (8, 9, 10)
    root = tmp_path / "r"
    write(root / "logs" / "seed0" / "stage1_ce.log", lines, mtime=t0 + 30)
    job = collect(root, now=t0 + 40)[0]
    assert job.eta_s == pytest.approx(20, abs=1.5)  # 30 s per epoch, not 30 / 9


def test_cli_prints_the_table_and_the_failure(experiment, capsys):
    root, _ = experiment
    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"{root}: 2 running")
    header = next(line for line in out.splitlines() if line.startswith("stage"))
    assert header.split() == ["stage", "variant", "seed", "state", "progress", "val_bacc",
                              "elapsed", "ETA"]
    assert any(line.split()[:6] == ["stage1", "rrl", "0", "running", "epoch", "3/10"]
               for line in out.splitlines())
    assert "failed: stage2 ce/crt seed 0: lmdlt train-stage2: error:" in out
    # the results folder itself: every experiment under it
    assert str(root) in status_text(root.parent)


def test_no_logs_yet_is_one_clear_error(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 1
    assert "no experiment logs" in capsys.readouterr().err


def test_fmt_duration():
    assert [fmt_duration(s) for s in (None, 5, 65, 3725)] == ["-", "5s", "1m05s", "1h02m"]


def test_every_report_job_is_done_once_its_output_exists(tmp_path):
    """The report rules' logs map to their outputs (an HTML page or provenance page logs
    nothing on success: done only because its output exists)."""
    from lmdlt.status import classify

    root = tmp_path / "results" / "exp"
    cases = {"results_table_html": root / "tables" / "results.html",
             "report_provenance": root / "report" / "provenance.html",
             "paper_table_html_table2": root / "tables" / "table2.html",
             "paper_table_table2": root / "tables" / "table2.md",
             "combined_table_table3": tmp_path / "results" / "combined" / "table3.md",
             "combined_table_html_table3": tmp_path / "results" / "combined" / "table3.html"}
    for stem, out in cases.items():
        log = root / "logs" / f"{stem}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        assert classify(log, root) == ("report", stem, None, out)
