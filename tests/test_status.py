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


# -- interrupted and killed jobs: no job is shown running whose process is gone ---------------

def _job_log(root):
    log = root / "logs" / "seed0" / "stage1_ce.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return log


def _wait_for_job_record(log, proc, timeout=3.0):
    """Until the job's first line is in its log (at most ``timeout`` s: on a version without
    job records the test goes on, and shows what a user would see)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if "lmdlt job: host" in log.read_text(errors="replace"):
            return
        time.sleep(0.01)


STAGE1_ARGV = ["train-stage1", "--split", "split.parquet", "--images", "images.h5", "--params",
               '{"method": "ce"}', "--seed", "0", "--threads", "1", "--device", "cpu", "--out",
               "results/exp/seed0/stage1/ce/model.pt"]


def _sleeping_train_stage1(_args):
    time.sleep(120)  # a training that runs until it is killed


def _stage1_job(tmp_path, log_file, env=None):
    """`lmdlt train-stage1` as a Snakemake job runs it (the `lmdlt` command, its stderr the log),
    whose training is a sleep: a job that runs until it is killed."""
    import subprocess
    import sys

    code = ("import sys, time; import lmdlt.cli as cli; "
            "cli.cmd_train_stage1 = lambda a: time.sleep(120); "
            f"sys.argv = ['lmdlt', *{STAGE1_ARGV!r}]; sys.exit(cli.main())")
    return subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=log_file,
                            stderr=log_file, env=env)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_killed_or_interrupted_job_is_not_shown_running(tmp_path, how):
    """SIGINT: what Ctrl-C of Snakemake sends every job of its terminal; SIGTERM: a kill, or
    Snakemake cancelling; SIGKILL: nothing can be written, the process is just gone."""
    import signal

    root = tmp_path / "results" / "exp"
    log = _job_log(root)
    with open(log, "wb") as f:
        proc = _stage1_job(tmp_path, f)
    _wait_for_job_record(log, proc)
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=30)
    job = collect(root)[0]
    assert (job.stage, job.variant) == ("stage1", "ce")
    assert job.state == "interrupted", log.read_text()
    assert (f"interrupted by {how}" if how != "SIGKILL" else f"process {proc.pid} ended") in job.error
    assert job.eta_s is None
    text = status_text(root)
    assert text.splitlines()[0] == f"{root}: 1 interrupted"
    assert f"interrupted: stage1 ce seed 0: " in text


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_job_of_the_job_server_killed_through_its_client_is_not_shown_running(tmp_path, how):
    """In a local run the job's process is a fork of the job server; its client is what
    Snakemake (and Ctrl-C) signals."""
    import multiprocessing
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile

    from lmdlt import cli, job_server

    folder = tempfile.mkdtemp(prefix="lmdlt-test-")
    sock = os.path.join(folder, "socket")

    def serve():
        cli.cmd_train_stage1 = _sleeping_train_stage1
        job_server.serve(sock, preload=False)

    server = multiprocessing.get_context("fork").Process(target=serve, daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        root = tmp_path / "results" / "exp"
        log = _job_log(root)
        env = {**os.environ, job_server.ENV_SOCKET: sock}
        env.pop("SLURM_JOB_ID", None)
        with open(log, "wb") as f:
            client = subprocess.Popen([sys.executable, "-m", "lmdlt", *STAGE1_ARGV], cwd=tmp_path,
                                      stdout=f, stderr=f, env=env)
        _wait_for_job_record(log, client)
        client.send_signal(getattr(signal, how))
        client.wait(timeout=30)
        deadline = time.monotonic() + 30  # the job's process ends just after its client (slower under load)
        while collect(root)[0].state == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        job = collect(root)[0]
        assert job.state == "interrupted", log.read_text()
        assert "interrupted by SIG" in job.error
    finally:
        server.terminate()
        server.join(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _record(host, pid, start="-", heartbeat=60, t=None):
    t = time.time() - 100 if t is None else t
    return f"{ts(t)} lmdlt job: host {host} pid {pid} start {start} heartbeat {heartbeat}s"


def test_a_job_on_another_host_is_gone_when_its_heartbeat_stopped(tmp_path):
    now = time.time()
    root = tmp_path / "r"
    log = write(_job_log(root), [_record("other-node", 4242, t=now - 90)] + epoch_lines(now - 90, 2, 10, per=20),
                mtime=now - 30)
    assert collect(root, now=now)[0].state == "running"  # touched 30 s ago: alive
    os.utime(log, (now - 400, now - 400))  # 5 heartbeats of 60 s missed
    job = collect(root, now=now)[0]
    assert job.state == "interrupted?" and "no heartbeat from process 4242 on other-node" in job.error
    # a job whose heartbeat is fresh but whose log has had no line for an hour: a hang
    write(log, [_record("other-node", 4242, t=now - 4000)] + epoch_lines(now - 4000, 2, 20, per=60),
          mtime=now - 5)
    assert collect(root, now=now)[0].state == "stalled?"


def test_a_reused_pid_is_not_taken_for_the_job(tmp_path):
    from lmdlt.status import process_start

    root = tmp_path / "r"
    here = __import__("socket").gethostname()
    pid = os.getpid()  # alive, but it started at another time than the recorded one
    write(_job_log(root), [_record(here, pid, start=process_start(pid))])
    assert collect(root)[0].state == "running"
    if process_start(pid) == "-":
        pytest.skip("no /proc: a process's start time cannot be read here")
    write(_job_log(root), [_record(here, pid, start="1")])
    assert collect(root)[0].state == "interrupted"


def test_a_job_touches_its_log_while_it_lives(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "job.log"
    code = ("import time; from lmdlt.status import job_started; "
            "assert job_started('train-stage1', heartbeat_s=0.2); time.sleep(3)")
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=f)
    try:
        deadline = time.monotonic() + 10
        while "lmdlt job:" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        first = log.stat().st_mtime_ns
        time.sleep(1.0)
        assert log.stat().st_mtime_ns > first, "no heartbeat"
        assert log.read_text().count("\n") == 1  # touched, not written to
    finally:
        proc.kill()
        proc.wait()


def test_no_job_record_where_stderr_is_not_a_log(tmp_path):
    from lmdlt.status import job_started

    assert not job_started("status")  # not a job
    # pytest's capture of fd 2 is a file: a job command is recorded only when asked for; the
    # CLI asks only in the `lmdlt` process itself (main() without argv), never in-process


def test_a_code_bug_shows_the_cli_summary_not_the_traceback_header(tmp_path):
    """A bug prints its traceback, then the CLI's one summary line: status shows the summary."""
    lines = [f"{ts(1_000_000.0)} lmdlt.stage1 INFO epoch 1/10 loss 1 (ce 1) val_bacc 0.5000 lr 0.1 3.0s",
             "Traceback (most recent call last):",
             '  File "x.py", line 1, in <module>',
             "KeyError: 'missing'",
             "lmdlt train-stage1: error: KeyError: 'missing' (a bug; the full traceback is above)"]
    assert parse_log(lines)["error"].startswith("lmdlt train-stage1: error: KeyError")
    # a traceback alone (no summary line: the process died mid-report) still marks a failure
    assert parse_log(lines[:4])["error"].startswith("Traceback")
