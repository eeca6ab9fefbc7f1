"""The job server (lmdlt/job_server.py): a local run's `lmdlt` calls run in forks of one process
that imported torch once. A job run there must be the job a plain process would be: the same
streams, working directory, environment, exit status and outputs; a killed job must die; the
server must not outlive its run; SLURM jobs and opted-out runs must not use it."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, run_snakemake, write_config
from lmdlt import cli, job_server
from lmdlt.io import read_json


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def socket_path():
    folder = tempfile.mkdtemp(prefix="lmdlt-test-")  # short: a Unix socket path has ~100 bytes
    yield os.path.join(folder, "socket")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def real_server(socket_path):
    """`lmdlt job-server` as the workflow starts it (a new process; no preload, for speed)."""
    proc = subprocess.Popen([sys.executable, "-m", "lmdlt", "job-server", "--socket", socket_path,
                             "--no-preload"], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: os.path.exists(socket_path), what="the server's socket")
    yield socket_path
    proc.terminate()
    proc.wait(timeout=10)
    assert not os.path.exists(socket_path), "the server left its socket behind"


def fake_main_server(socket_path, fake_main, owner_pid=None, idle_timeout=None):
    """A server forked from this test process whose children run ``fake_main`` instead of the
    CLI (no torch is used in those children)."""

    def target():
        cli.main = fake_main
        job_server.serve(socket_path, owner_pid=owner_pid, idle_timeout=idle_timeout, preload=False)

    proc = multiprocessing.get_context("fork").Process(target=target, daemon=True)
    proc.start()
    wait_for(lambda: os.path.exists(socket_path), what="the server's socket")
    return proc


def client(socket_path, *argv, env=None, cwd=None, **kw):
    """The `lmdlt` command as a job runs it (a new process, LMDLT_JOB_SERVER set)."""
    env = {**os.environ, job_server.ENV_SOCKET: socket_path, **(env or {})}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen([sys.executable, "-m", "lmdlt", *argv], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


CONFIG = ("dataset: {name: digits-lt, source: digits, image_size: 8}\n"
          "split: {protocol: cui, imbalance_ratio: 10}\nseeds: [0]\n"
          "stage1: {ce: {method: ce}}\nstage2: {}\n")


def test_a_job_in_the_server_prints_what_the_plain_process_prints(real_server, tmp_path):
    (tmp_path / "exp.yaml").write_text(CONFIG)
    served = client(real_server, "validate-config", "exp.yaml", cwd=tmp_path)  # a relative path
    out, err = served.communicate(timeout=60)
    assert served.returncode == 0, err
    assert "lmdlt job server: job process" in err  # it ran in the server
    plain = subprocess.run([sys.executable, "-m", "lmdlt", "validate-config", "exp.yaml"],
                           cwd=tmp_path, capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != job_server.ENV_SOCKET})
    assert plain.returncode == 0 and "job server" not in plain.stderr
    assert out == plain.stdout and "imbalance_ratio: 10" in out


def test_exit_status_and_error_message_come_back(real_server, tmp_path):
    missing = client(real_server, "show-split", str(tmp_path / "nope.parquet"))
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 1
    assert "lmdlt show-split: error:" in err and "nope.parquet" in err
    usage = client(real_server, "no-such-command")
    _, err = usage.communicate(timeout=60)
    assert usage.returncode == 2 and "invalid choice: 'no-such-command'" in err


def test_the_job_gets_the_clients_environment_and_directory(socket_path, tmp_path):
    def fake_main(argv):
        Path("seen.json").write_text(json.dumps({"argv": argv, "env": os.environ.get("MY_SETTING"),
                                                 "cwd": os.getcwd(), "pid": os.getpid()}))
        print("to stdout")
        print("to stderr", file=sys.stderr)
        return 3

    server = fake_main_server(socket_path, fake_main)
    try:
        job = client(socket_path, "train-stage2", "--x", "1", env={"MY_SETTING": "abc"}, cwd=tmp_path)
        out, err = job.communicate(timeout=30)
        seen = json.loads((tmp_path / "seen.json").read_text())
        assert job.returncode == 3
        assert out == "to stdout\n" and err.startswith("to stderr\n")
        assert seen["argv"] == ["train-stage2", "--x", "1"] and seen["env"] == "abc"
        assert seen["cwd"] == str(tmp_path) and seen["pid"] not in (job.pid, server.pid)
    finally:
        server.terminate()


def sleeping_main(argv):
    Path(argv[-1]).write_text(str(os.getpid()))
    time.sleep(120)
    return 0


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone too (the server's children are reaped by the kernel)
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z"


@pytest.mark.parametrize("how", ["SIGTERM to the client", "SIGKILL to the client"])
def test_a_killed_job_stops_in_the_server_too(socket_path, tmp_path, how):
    server = fake_main_server(socket_path, sleeping_main)
    try:
        pid_file = tmp_path / "pid"
        job = client(socket_path, "train-stage1", str(pid_file))
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="the job to start")
        child = int(pid_file.read_text())
        job.send_signal(signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGKILL)
        job.communicate(timeout=30)
        assert job.returncode != 0
        wait_for(lambda: _gone(child), timeout=10, what=f"job process {child} to stop")
    finally:
        server.terminate()


def test_the_server_stops_when_its_owner_is_gone_and_removes_its_socket(socket_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    server = fake_main_server(socket_path, sleeping_main, owner_pid=owner.pid)
    owner.kill()
    owner.wait()
    server.join(timeout=10)
    assert server.exitcode is not None, "the server outlived its owner"
    assert not os.path.exists(socket_path)


def test_without_a_server_the_command_runs_in_its_own_process(tmp_path, monkeypatch, capfd):
    (tmp_path / "exp.yaml").write_text(CONFIG)
    monkeypatch.setenv(job_server.ENV_SOCKET, str(tmp_path / "no-server"))
    assert job_server.run_in_server(["validate-config", "exp.yaml"]) is None
    assert "does not answer" in capfd.readouterr().err
    env = {**os.environ, job_server.ENV_SOCKET: str(tmp_path / "no-server")}
    proc = subprocess.run([sys.executable, "-m", "lmdlt", "validate-config", "exp.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "imbalance_ratio: 10" in proc.stdout


@pytest.mark.parametrize("env", [{"SLURM_JOB_ID": "42"}, {job_server.ENV_DISABLE: "1"}])
def test_slurm_jobs_and_opted_out_runs_do_not_use_a_server(socket_path, tmp_path, monkeypatch, env):
    server = fake_main_server(socket_path, lambda argv: 7)
    try:
        monkeypatch.setenv(job_server.ENV_SOCKET, socket_path)
        assert job_server.run_in_server(["validate-config", "x.yaml"]) == 7  # served
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert job_server.run_in_server(["validate-config", "x.yaml"]) is None
        assert job_server.WorkflowServer().start(tmp_path / "log") is None  # nor starts one
    finally:
        server.terminate()


def test_the_client_imports_no_torch():
    code = ("import sys; import lmdlt.cli, lmdlt.job_server; "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_command_named_in_needs_exists_and_waits_for_a_preloaded_module():
    commands = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert set(job_server.NEEDS) <= commands, set(job_server.NEEDS) - commands
    names = list(job_server.preload_names())
    assert set(job_server.NEEDS.values()) <= set(names)
    # the data jobs go before torch is in; training waits for its stage's methods
    assert names.index(job_server.NEEDS["split"]) < names.index("torch")
    assert names.index("lmdlt.stage1.ce") < names.index(job_server.NEEDS["train-stage1"])
    assert names.index("lmdlt.stage2.crt") < names.index(job_server.NEEDS["train-stage2"])
    assert job_server.command_of(["--quiet", "train-stage2", "--x"]) == "train-stage2"


def test_the_workflow_server_starts_serves_and_stops(tmp_path, monkeypatch):
    monkeypatch.delenv(job_server.ENV_DISABLE, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    (tmp_path / "exp.yaml").write_text(CONFIG)
    ws = job_server.WorkflowServer()
    path = ws.start(tmp_path / "server.log")
    try:
        assert path and os.environ[job_server.ENV_SOCKET] == path
        job = client(path, "validate-config", "exp.yaml", cwd=tmp_path)
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0 and "job server: job process" in err
    finally:
        ws.stop()
    assert job_server.ENV_SOCKET not in os.environ and not os.path.exists(path)


TINY = {
    "dataset": {"name": "digits-lt", "source": "digits", "image_size": 8},
    "split": {"protocol": "cui", "imbalance_ratio": 20, "val_per_class": 10, "test_per_class": 20},
    "seeds": [0],
    "compute": {"threads": 1},
    "stage1": {"ce": {"method": "ce", "label": "CE", "epochs": 2, "batch_size": 64}},
    "stage2": {"crt": {"method": "crt", "label": "cRT", "params": {"epochs": 2}},
               "ncm": {"method": "ncm", "label": "NCM"}},
}


def metric_values(work: Path) -> dict:
    out = {}
    for f in sorted((work / "results").rglob("metrics.json")):
        m = read_json(f)
        out[str(f.relative_to(work))] = {k: v for k, v in m.items() if k != "provenance"}
    return out


@pytest.mark.slow
def test_a_run_through_the_server_gives_the_numbers_of_plain_processes(tmp_path):
    served, plain = tmp_path / "served", tmp_path / "plain"
    for work in (served, plain):
        work.mkdir()
        write_config(work, TINY)
    sockets = lambda: set(Path(tempfile.gettempdir()).glob("lmdlt-jobs-*/socket"))  # noqa: E731
    before = sockets()
    run_snakemake(served, "--cores", "2")
    assert not sockets() - before  # the run's server stopped and removed its socket
    os.environ[job_server.ENV_DISABLE] = "1"
    try:
        run_snakemake(plain, "--cores", "2")
    finally:
        del os.environ[job_server.ENV_DISABLE]
    log = "results/digits-lt/logs/seed0/stage1_ce.log"
    assert "lmdlt job server: job process" in (served / log).read_text()
    assert "job server" not in (plain / log).read_text()
    a, b = metric_values(served), metric_values(plain)
    assert len(a) == 3 and a == b  # CE, CE + cRT, CE + NCM: the same numbers
    table = "results/digits-lt/tables/results.csv"
    assert (served / table).read_text() == (plain / table).read_text()


@pytest.mark.parametrize("argv, runs", [
    (["snakemake", "--cores", "2"], True),
    (["snakemake", "-c2", "--configfile", "x.yaml"], True),
    (["snakemake", "-n"], False), (["snakemake", "-np", "--cores", "2"], False),
    (["snakemake", "--dry-run"], False), (["snakemake", "--report", "r.html"], False),
    (["snakemake", "--report=r.html"], False), (["snakemake", "--unlock"], False),
    (["snakemake", "--list-rules"], False), (["snakemake", "--touch"], False),
    (["python", "-m", "snakemake", "--mode", "subprocess", "--cores", "1"], False),
])
def test_the_server_is_launched_early_only_for_commands_that_may_run_jobs(argv, runs):
    assert job_server.may_run_jobs(argv) is runs


def test_a_launched_server_whose_snakemake_runs_no_job_stops_with_it(tmp_path):
    """A dry run parses the Snakefile (which launches the server) but never reaches onstart."""
    code = ("import sys, time; from lmdlt.job_server import WorkflowServer; "
            f"ws = WorkflowServer(); ws.launch({str(tmp_path / 'log')!r}); "
            "print(ws.process.pid, ws.path, flush=True); time.sleep(1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pid, path = out.stdout.split()
    wait_for(lambda: _gone(int(pid)), timeout=30, what="the orphaned server to stop")
    assert not os.path.exists(os.path.dirname(path))  # its socket and folder are gone


def test_a_client_of_another_installation_is_refused_and_runs_itself(socket_path, monkeypatch, capfd):
    server = fake_main_server(socket_path, lambda argv: 7)
    try:
        monkeypatch.setenv(job_server.ENV_SOCKET, socket_path)
        assert job_server.run_in_server(["status"]) == 7
        other = {**job_server.installation(), "prefix": "/some/other/venv"}
        monkeypatch.setattr(job_server, "installation", lambda: other)
        assert job_server.run_in_server(["status"]) is None
        assert "refused the job" in capfd.readouterr().err
    finally:
        server.terminate()


def test_the_workflow_server_imports_the_installed_lmdlt_not_a_folder_in_the_cwd(tmp_path, monkeypatch):
    fake = tmp_path / "lmdlt"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise SystemExit('the wrong lmdlt was imported')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(job_server.ENV_DISABLE, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    ws = job_server.WorkflowServer()
    try:
        assert ws.start(tmp_path / "server.log") is not None, (tmp_path / "server.log").read_text()
    finally:
        ws.stop()


def test_a_job_the_client_cannot_hand_over_runs_in_the_client(socket_path, monkeypatch, capfd):
    server = fake_main_server(socket_path, lambda argv: 7)
    try:
        monkeypatch.setenv(job_server.ENV_SOCKET, socket_path)
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)

        def bad_fd(*args):
            raise OSError(9, "Bad file descriptor")

        monkeypatch.setattr(job_server.socket, "send_fds", bad_fd)
        assert job_server.run_in_server(["status"]) is None
        assert "could not hand the job" in capfd.readouterr().err
    finally:
        server.terminate()
