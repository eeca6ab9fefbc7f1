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

from conftest import REPO, load_test_config, run_snakemake, write_config
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


#: tests/configs/digits.yaml with a second stage-2 row: three metric files to compare
TINY = load_test_config("digits")
TINY["stage2"]["ncm"] = {"method": "ncm", "label": "NCM"}


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


# -- as safe as plain processes: thread pools, a failed preload, changed sources, CUDA ----------

def _pool_sizes():
    from threadpoolctl import threadpool_info

    import torch

    return {"pools": sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()}),
            "torch": torch.get_num_threads()}


def test_a_job_sizes_its_thread_pools_to_the_rules_threads(socket_path, tmp_path):
    """Snakemake sets OMP/MKL/OPENBLAS_NUM_THREADS to the rule's threads in the job's
    environment; numpy, torch and scikit-learn read them when imported, in the server. The
    child must have the pools a fresh process with the job's environment would have."""
    import numpy  # noqa: F401 - loads OpenBLAS (and its pool) before the server forks
    import torch  # noqa: F401 - and its OpenMP pool

    def report_pools(argv):
        Path(argv[-1]).write_text(json.dumps(_pool_sizes()))
        return 0

    def target():
        from threadpoolctl import threadpool_limits

        import torch as t

        threadpool_limits(3)  # the server's pools: sized from its own environment
        t.set_num_threads(3)
        cli.main = report_pools
        job_server.serve(socket_path, preload=False)

    proc = multiprocessing.get_context("fork").Process(target=target, daemon=True)
    proc.start()
    wait_for(lambda: os.path.exists(socket_path), what="the server's socket")
    try:
        for threads in (1, 2):
            env = {v: str(threads) for v in ("OMP_NUM_THREADS", "GOTO_NUM_THREADS",
                                               "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
            out = tmp_path / f"pools{threads}.json"
            job = client(socket_path, "train-stage2", str(out), env=env)
            _, err = job.communicate(timeout=60)
            assert job.returncode == 0, err
            seen = json.loads(out.read_text())
            assert seen["torch"] == threads
            assert seen["pools"] and all(n == threads for _, n in seen["pools"]), seen
    finally:
        proc.terminate()


def test_a_failed_preload_runs_every_job_in_its_own_process_with_the_error_in_its_log(
        socket_path, tmp_path, monkeypatch):
    """A syntax error in one preloaded module (every method module is preloaded) must not fail
    every job: each job runs in its own process and its log says why."""
    broken = tmp_path / "mods"
    broken.mkdir()
    (broken / "lmdlt_broken_method.py").write_text("def f(:\n    pass\n")
    # a long import first (torch, in a run): the first job connects and waits meanwhile
    (broken / "lmdlt_slow_import.py").write_text("import time\ntime.sleep(1.5)\n")

    def target():
        sys.path.insert(0, str(broken))
        job_server.PRELOAD = ("json", "lmdlt_slow_import", "lmdlt_broken_method", "csv")
        job_server.serve(socket_path, preload=True)

    proc = multiprocessing.get_context("fork").Process(target=target, daemon=True)
    proc.start()
    wait_for(lambda: os.path.exists(socket_path), what="the server's socket")
    try:
        exp = tmp_path / "results" / "exp"
        (exp / "logs").mkdir(parents=True)
        log = tmp_path / "job.log"
        for _ in range(2):  # every job, not just the first
            with open(log, "w") as f:
                env = {**os.environ, job_server.ENV_SOCKET: socket_path}
                job = subprocess.run([sys.executable, "-m", "lmdlt", "status", str(exp)],
                                     cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=f,
                                     text=True, timeout=60)
            text = log.read_text()
            assert job.returncode == 0, text  # it ran, in its own process
            assert "no job has started" in job.stdout
            assert "refused the job (its preload of lmdlt_broken_method failed: SyntaxError" in text
            assert "lmdlt_broken_method.py, line 1" in text
            assert "closed the connection" not in text and "job server: job process" not in text
    finally:
        proc.terminate()


def test_a_changed_lmdlt_source_makes_jobs_run_fresh(socket_path, tmp_path, monkeypatch):
    """A preloaded lmdlt module edited since the server imported it: the job runs in its own
    process (which imports the file as it is now), not in a fork holding the old code."""
    import types

    source = tmp_path / "probe.py"
    source.write_text("X = 1\n")
    probe = types.ModuleType("lmdlt._probe_for_tests")
    probe.__file__ = str(source)
    monkeypatch.setitem(sys.modules, "lmdlt._probe_for_tests", probe)  # as if preloaded
    server = fake_main_server(socket_path, lambda argv: 7)
    try:
        monkeypatch.setenv(job_server.ENV_SOCKET, socket_path)
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        assert job_server.run_in_server(["evaluate"]) == 7  # unchanged: served
        later = source.stat().st_mtime + 5
        os.utime(source, (later, later))
        assert job_server.run_in_server(["evaluate"]) is None
    finally:
        server.terminate()


def test_a_server_with_cuda_initialised_forks_no_job(socket_path, monkeypatch, capfd):
    import torch

    def target():
        torch.cuda.is_initialized = lambda: True  # a preloaded module initialised CUDA
        job_server.serve(socket_path, preload=False)

    proc = multiprocessing.get_context("fork").Process(target=target, daemon=True)
    proc.start()
    wait_for(lambda: os.path.exists(socket_path), what="the server's socket")
    try:
        monkeypatch.setenv(job_server.ENV_SOCKET, socket_path)
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        assert job_server.run_in_server(["evaluate"]) is None
        assert "CUDA was initialised in the job server" in capfd.readouterr().err
    finally:
        proc.terminate()


@pytest.mark.slow  # imports every method module in a fresh interpreter: ~30-50 s
def test_the_preload_never_asks_cuda_anything():
    """torch.cuda.is_available() calls cuInit (unless PYTORCH_NVML_BASED_CUDA_CHECK=1): no
    preloaded module may call it, nor anything else that initialises CUDA, at import."""
    code = """
import os, sys
import torch
calls = []
def spy(name, real):
    def f(*a, **k):
        calls.append(name)
        return real(*a, **k)
    return f
for name in ("is_available", "device_count", "_lazy_init", "init", "current_device"):
    setattr(torch.cuda, name, spy(name, getattr(torch.cuda, name)))
torch._C._cuda_getDeviceCount = spy("_cuda_getDeviceCount", torch._C._cuda_getDeviceCount)
from lmdlt import job_server
job_server.preload_modules()
print(calls, torch.cuda.is_initialized())
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-2] == "[] False", out.stdout


# -- CUDA jobs and torchrun ranks: their own processes; local GPU jobs: no more than GPUs -------

@pytest.mark.parametrize("argv, gpus, served", [
    (["train-stage1", "--device", "cuda"], "0", False),
    (["extract", "--device=cuda:1"], "0", False),
    (["train-stage2-encoder", "--device", "auto"], "1", False),  # auto on a host with a GPU
    (["train-stage1"], "2", False),                                # --device defaults to auto
    (["train-stage1", "--device", "auto"], "0", True),             # auto without a GPU: the CPU
    (["train-stage1", "--device", "cpu"], "1", True),
    (["train-stage2", "--threads", "1"], "1", True),               # no device: features only
])
def test_a_cuda_job_runs_in_its_own_process(socket_path, monkeypatch, argv, gpus, served):
    server = fake_main_server(socket_path, lambda argv: 7)
    try:
        monkeypatch.setenv(job_server.ENV_SOCKET, socket_path)
        monkeypatch.setenv(job_server.ENV_LOCAL_GPUS, gpus)
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        assert job_server.run_in_server(argv) == (7 if served else None)
        # nothing the job starts (a subprocess, torchrun) finds the server's address
        assert (job_server.ENV_SOCKET in os.environ) is served
    finally:
        server.terminate()


def test_a_torchrun_rank_runs_in_its_own_process(socket_path, monkeypatch):
    server = fake_main_server(socket_path, lambda argv: 7)
    try:
        monkeypatch.setenv(job_server.ENV_SOCKET, socket_path)
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        monkeypatch.setenv(job_server.ENV_LOCAL_GPUS, "0")
        for var in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK"):
            monkeypatch.delenv(var, raising=False)
        assert job_server.run_in_server(["train-stage1", "--device", "cpu"]) == 7
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
        monkeypatch.setenv("LOCAL_RANK", "1")
        assert job_server.run_in_server(["train-stage1", "--device", "cpu"]) is None
        assert job_server.ENV_SOCKET not in os.environ
    finally:
        server.terminate()


def test_the_local_gpu_count_reads_the_driver_and_cuda_visible_devices(tmp_path):
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    for bus in ("0000:01:00.0", "0000:41:00.0", "0000:81:00.0"):
        (gpus / bus).mkdir()
    count = lambda env: job_server.local_gpu_count(env, driver_dir=str(gpus))  # noqa: E731
    assert count({}) == 3
    assert count({"CUDA_VISIBLE_DEVICES": "0,2"}) == 2
    assert count({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert count({"CUDA_VISIBLE_DEVICES": "-1"}) == 0
    assert count({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == 1  # CUDA stops at the first invalid one
    assert count({"CUDA_VISIBLE_DEVICES": "0,1,2,3,4"}) == 3
    assert count({job_server.ENV_LOCAL_GPUS: "1"}) == 1
    assert job_server.local_gpu_count({}, driver_dir=str(tmp_path / "none")) == 0


class _Rule:
    def __init__(self, **resources):
        self.rule = type("R", (), {"resources": dict(resources)})()


def test_local_gpu_jobs_ask_for_a_gpu_and_the_run_has_as_many_as_there_are():
    rules = type("Rules", (), {"train_stage1": _Rule(gpu=4), "extract_features": _Rule(),
                               "train_stage2_encoder": _Rule(_cores=1)})()
    assert job_server.request_gpus(rules, "cpu", 2) == []
    assert job_server.request_gpus(rules, "auto", 0) == []  # no GPU here: CPU jobs, no limit
    assert job_server.request_gpus(rules, "auto", 2) == ["extract_features", "train_stage2_encoder"]
    assert rules.train_stage1.rule.resources["gpu"] == 4  # torchrun's N (or a profile's) kept
    assert rules.extract_features.rule.resources["gpu"] == 1

    class Scheduler:
        def __init__(self, **given):
            self.global_resources = {"_cores": 8, **given}
            self.resources = dict(self.global_resources)

    workflow = type("W", (), {"scheduler": Scheduler()})()
    assert job_server.limit_gpu_jobs(workflow, 2)
    assert workflow.scheduler.global_resources["gpu"] == workflow.scheduler.resources["gpu"] == 2
    mine = type("W", (), {"scheduler": Scheduler(gpu=1)})()  # --resources gpu=1 of the user
    assert not job_server.limit_gpu_jobs(mine, 2) and mine.scheduler.global_resources["gpu"] == 1
    assert not job_server.limit_gpu_jobs(type("W", (), {"scheduler": Scheduler()})(), 0)
