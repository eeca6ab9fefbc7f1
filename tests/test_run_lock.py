"""One writer per experiment (lmdlt/run_lock.py): a run holds results/<experiment>/.lmdlt-run.lock
while it lives; a second run of the same experiment (another clone, another host) is refused
with a message naming the first; stale locks (process gone, heartbeat too old) are taken over;
dry runs take no lock."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lmdlt.cli import main
from lmdlt.run_lock import LOCK_NAME, RunLock, RunLockError, read_lock, unlock
from lmdlt.status import process_start


def a_lock(exp, **info):
    """A lock file as another run wrote it."""
    exp.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getppid(), "pid_start": process_start(os.getppid()),
              "started": time.time() - 3600, "clone": "/home/ann/lmdlt", "workdir": "/home/ann/lmdlt",
              "command": "snakemake --cores 8", "run_id": "other", **info}
    (exp / LOCK_NAME).write_text(json.dumps(record))
    return record


def gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_takes_the_lock_keeps_it_fresh_and_releases_it(tmp_path):
    exp = tmp_path / "results" / "exp"
    lock = RunLock(exp, clone="/clone/a", command="snakemake -c2", heartbeat_s=0.1).acquire()
    info, beat0 = read_lock(exp / LOCK_NAME)
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
    assert info["clone"] == os.path.realpath("/clone/a") and info["command"] == "snakemake -c2"
    assert abs(info["started"] - time.time()) < 5
    os.utime(exp / LOCK_NAME, (beat0 - 100, beat0 - 100))
    time.sleep(0.5)
    assert read_lock(exp / LOCK_NAME)[1] > beat0 - 1, "the heartbeat did not refresh the lock"
    assert lock.release() and not (exp / LOCK_NAME).exists()


def test_a_second_run_is_refused_with_a_message_naming_the_first(tmp_path):
    exp = tmp_path / "results" / "exp"
    first = a_lock(exp)  # this test's parent process: alive, on this host
    with pytest.raises(RunLockError) as e:
        RunLock(exp).acquire()
    msg = str(e.value)
    for part in (str(exp), f"host {first['host']}", f"pid {first['pid']}", "started ",
                 "clone /home/ann/lmdlt", "snakemake --cores 8", f"lmdlt unlock {exp}",
                 str(exp / LOCK_NAME)):
        assert part in msg, (part, msg)
    assert read_lock(exp / LOCK_NAME)[0]["run_id"] == "other"  # untouched


def test_a_lock_of_a_live_run_on_another_host_is_kept_until_its_heartbeat_is_old(tmp_path):
    exp = tmp_path / "results" / "exp"
    a_lock(exp, host="node-17", pid=4242)
    with pytest.raises(RunLockError, match="on node-17"):
        RunLock(exp).acquire()
    old = time.time() - 11 * 60  # heartbeat 11 minutes old: that run is gone
    os.utime(exp / LOCK_NAME, (old, old))
    lock = RunLock(exp).acquire()
    assert "took over" in lock.notice and "heartbeat is 11 min old" in lock.notice
    assert read_lock(exp / LOCK_NAME)[0]["run_id"] == lock.info["run_id"]
    lock.release()


def test_a_lock_whose_process_is_gone_on_this_host_is_taken_over(tmp_path):
    exp = tmp_path / "results" / "exp"
    pid = gone_pid()
    a_lock(exp, pid=pid, pid_start="-")
    lock = RunLock(exp).acquire()
    assert f"its process {pid} on {socket.gethostname()} is gone" in lock.notice
    lock.release()


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    if process_start(os.getppid()) == "-":
        pytest.skip("no /proc: a process's start time cannot be read here")
    exp = tmp_path / "results" / "exp"
    a_lock(exp, pid_start="1")  # the pid is alive, but it is another process than the lock's
    RunLock(exp).acquire().release()


def test_release_leaves_another_runs_lock_alone(tmp_path):
    exp = tmp_path / "results" / "exp"
    lock = RunLock(exp).acquire()
    a_lock(exp)  # replaced meanwhile (someone ran `lmdlt unlock --force` and a run took it)
    assert not lock.release()
    assert read_lock(exp / LOCK_NAME)[0]["run_id"] == "other"


def test_unlock_removes_a_stale_lock_and_keeps_a_live_one(tmp_path, capsys):
    exp = tmp_path / "results" / "exp"
    a_lock(exp)  # alive on this host
    assert main(["unlock", str(exp)]) == 1
    assert "alive on this host" in capsys.readouterr().err and (exp / LOCK_NAME).exists()
    assert main(["unlock", str(exp), "--force"]) == 0
    assert not (exp / LOCK_NAME).exists()
    a_lock(exp, host="node-17", pid=4242)
    assert "could not be asked" in unlock(exp) and not (exp / LOCK_NAME).exists()
    assert unlock(exp) == f"{exp}: no lock"


# -- two real Snakemake runs of one experiment ------------------------------------------------

def _snakemake(workdir, *args, **kw):
    from conftest import REPO, snakemake_bin

    cmd = [snakemake_bin(), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", "none", "--scheduler", "greedy", "--cores", "1", *args]
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    return cmd, env


@pytest.mark.slow
def test_two_clones_on_one_results_dir_one_writer_and_ctrl_c_leaves_no_job_running(tmp_path):
    """Clone A runs; clone B (same results_dir) is refused before its first job and its dry run
    still works; Ctrl-C of A (SIGINT to its process group, as a terminal sends it) releases the
    lock and leaves no job that `lmdlt status` shows running. On the way: A's local GPU limit."""
    from conftest import write_config

    from lmdlt.status import collect

    results = tmp_path / "shared" / "results"
    config = {"results_dir": str(results),
              "dataset": {"name": "digits-lt", "source": "digits", "image_size": 8},
              "split": {"protocol": "cui", "imbalance_ratio": 20, "val_per_class": 10,
                        "test_per_class": 20},
              "seeds": [0], "compute": {"threads": 1},
              # long enough to be caught running: Ctrl-C comes during its first epochs
              "stage1": {"ce": {"method": "ce", "label": "CE", "epochs": 400, "batch_size": 16}},
              "stage2": {}}
    clone_a, clone_b = tmp_path / "a", tmp_path / "b"
    for clone in (clone_a, clone_b):
        clone.mkdir()
        write_config(clone, config)
    exp = results / "digits-lt"
    cmd, env = _snakemake(clone_a)
    # A as on a host with one GPU (compute.device auto): its GPU jobs run one at a time, each in
    # its own process (not in the job server); here they still compute on the CPU
    run_a = subprocess.Popen(cmd, env={**env, "LMDLT_LOCAL_GPUS": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = exp / "logs" / "seed0" / "stage1_ce.log"

    def wait_for(done, what):
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run_a.poll() is None and not done():
            time.sleep(0.1)
        assert run_a.poll() is None and done(), f"{what}: {run_a.stdout.read()[-3000:]}"

    try:
        wait_for(lambda: read_lock(exp / LOCK_NAME), "run A took no lock")  # its onstart
        held = read_lock(exp / LOCK_NAME)[0]
        assert held["pid"] == run_a.pid and held["workdir"] == str(clone_a.resolve())
        # while A builds its image cache and split and trains: B, from the other clone
        cmd_b, _ = _snakemake(clone_b)
        dry = subprocess.run(cmd_b + ["-n"], env=env, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr[-3000:]  # a dry run takes no lock
        second = subprocess.run(cmd_b, env=env, capture_output=True, text=True)
        out = second.stdout + second.stderr
        assert second.returncode != 0
        assert "is being written by another run" in out, out[-3000:]
        assert f"pid {run_a.pid}" in out and str(clone_a.resolve()) in out
        assert "lmdlt unlock" in out
        assert read_lock(exp / LOCK_NAME)[0]["run_id"] == held["run_id"]

        wait_for(lambda: log.exists() and " epoch 1/400 " in log.read_text(errors="replace"),
                 "A's stage 1 did not start")
        os.killpg(run_a.pid, signal.SIGINT)  # Ctrl-C
        run_a.wait(timeout=120)
    finally:
        if run_a.poll() is None:
            os.killpg(run_a.pid, signal.SIGKILL)
            run_a.wait()
    assert run_a.returncode != 0
    assert not (exp / LOCK_NAME).exists(), "Ctrl-C left the lock behind"
    assert "lmdlt: local run: at most 1 GPU job(s) at once" in run_a.stdout.read()
    assert "job server: job process" not in log.read_text()  # a CUDA job: its own process
    jobs = collect(exp)
    assert not [j for j in jobs if j.state == "running"], jobs
    stage1 = next(j for j in jobs if j.stage == "stage1")
    assert stage1.state == "interrupted" and "SIGINT" in stage1.error
