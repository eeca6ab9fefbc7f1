"""The job server: one process imports torch and the stage modules once, and runs every ``lmdlt``
command of a local Snakemake run in a forked child of itself.

Why: a feature-only stage-2 job or a report job does well under a second of work at the default
scale, but a new Python process pays about 3-6 s to import torch, scikit-learn and pandas
(docs/benchmarks.md, sections 7-8). A fork of a process that has imported them starts in
milliseconds. The workflow's ``onstart`` handler (``workflow/rules/common.smk``) starts a server
for the run and puts its socket in ``LMDLT_JOB_SERVER``; the jobs' ``lmdlt`` command sees the
variable and becomes a client: it sends its argv, working directory and environment and passes
its stdin / stdout / stderr (the job's log file) over the socket, the server forks, the child
runs the command exactly as the CLI would and sends back the exit status. The rule, its log and
its outputs are the same as with a plain process (tested: ``tests/test_job_server.py``).

When the server is not used, the command runs in its own process:

* no ``LMDLT_JOB_SERVER`` (a hand-run ``lmdlt``, the tests' in-process calls);
* ``LMDLT_NO_JOB_SERVER=1`` (opt out; the workflow then starts no server);
* inside a SLURM job (``SLURM_JOB_ID``): the job's resources are the allocation's, never a
  server's on the submitting host; the workflow starts no server for a non-local executor;
* the socket does not answer (a warning, then the command runs in its own process);
* a CUDA job: a command whose ``--device`` is ``cuda...``, or ``auto`` on a host with a visible
  NVIDIA GPU (:func:`wants_cuda`, decided from the argv and ``/proc``, without torch). Such a
  job runs for minutes, so 3-6 s of imports are nothing to it, and a CUDA context must never
  be created in a process that forks;
* a torchrun rank (``TORCHELASTIC_RUN_ID`` / ``LOCAL_RANK`` set): every rank is its own process;
* the server refuses the job (the command then runs in its own process, and the reason is the
  first line of the job's log): its preload failed (a syntax error in one module must not fail
  every job), a preloaded ``lmdlt`` source file changed since it was imported (the job must run
  the code on disk), CUDA was initialised in the server (:func:`cuda_initialised`), or the
  client belongs to another installation.

Safety of fork: the server imports modules but runs no torch operation and starts no thread, so
a child inherits no CUDA context (CUDA is initialised lazily, in the child, on first use; the
server sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so that even a ``torch.cuda.is_available()``
in a preloaded module asks NVML instead of calling ``cuInit``, and it refuses every job if
``torch.cuda.is_initialized()`` is ever true). Thread pools: numpy's BLAS, OpenMP and torch
size their pools from ``OMP_NUM_THREADS`` & co. when they are loaded, in the server, from the
server's environment; Snakemake sets those variables per rule (its ``threads``) in the job's
environment, so the child re-sizes every loaded pool from the job's environment
(:func:`size_thread_pools`: threadpoolctl and ``torch.set_num_threads``), as a fresh process
would have sized them. Python's ``random`` reseeds after a fork, every command seeds its own
generators, ``tempfile`` names are per process. A child whose client goes away (the job was
killed) kills itself; the client forwards SIGINT / SIGTERM / SIGHUP to the child. The server
exits when its owner (the Snakemake process) is gone, when told to, or after ``idle_timeout``
seconds without a job.

This module imports no torch: the client side must stay as cheap as ``import socket``.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

ENV_SOCKET = "LMDLT_JOB_SERVER"
ENV_DISABLE = "LMDLT_NO_JOB_SERVER"
#: the number of GPUs local jobs may use, instead of the count found (:func:`local_gpu_count`)
ENV_LOCAL_GPUS = "LMDLT_LOCAL_GPUS"
_HEADER = struct.Struct("!I")  # length of the JSON request that follows

# imported once by the server, in the order a run needs them: data jobs first, then torch and
# the training stages, scoring, the report. The server accepts jobs at once; a job is forked as
# soon as the modules its command needs (NEEDS) are in (always between two imports, never during
# one), so the split jobs run while torch loads and no job imports torch a second time.
PRELOAD = (
    "numpy", "pandas", "pyarrow.parquet", "h5py", "lmdlt.io", "lmdlt.config", "lmdlt.data.splits",
    "lmdlt.data.image_cache",
    "torch", "torch.nn", "torch.optim", "torch._dynamo", "lmdlt.runtime", "sklearn.metrics",
    "lmdlt.metrics", "lmdlt.stage2.runner", "lmdlt.stage2.icc",
    "torchvision.transforms.v2", "lmdlt.features", "lmdlt.stage1.trainer",
    "lmdlt.report.tables", "lmdlt.report.paper_tables", "matplotlib.pyplot", "lmdlt.report.figures",
)
# and every method module, after its stage's trainer (small; a registry would import them on
# first use in every child)
PRELOAD_PACKAGES = {"lmdlt.stage1.trainer": "lmdlt.stage1", "lmdlt.stage2.icc": "lmdlt.stage2"}
# the last preloaded module a command needs; a command not named here waits for all of them
_DATA = "lmdlt.data.image_cache"
NEEDS = {
    "cache": _DATA, "split": _DATA, "show-split": _DATA, "split-summary": _DATA,
    "validate-config": _DATA, "status": _DATA, "init": _DATA,
    "train-stage1": "lmdlt.stage1",
    "train-stage2": "lmdlt.stage2", "evaluate": "lmdlt.stage2",
    "extract": "lmdlt.stage1", "train-stage2-encoder": "lmdlt.stage1",  # encoders: torchvision
}


def preload_names():
    """The modules to import, in order; a package name (``lmdlt.stage1``) marks its method
    modules, imported just before the marker."""
    import pkgutil

    for name in PRELOAD:
        yield name
        package = PRELOAD_PACKAGES.get(name)
        if package:
            pkg = importlib.import_module(package)
            for info in pkgutil.iter_modules(pkg.__path__):
                yield f"{package}.{info.name}"
            yield package


def preload_modules() -> None:
    for name in preload_names():
        importlib.import_module(name)


def command_of(argv: list[str]) -> str | None:
    """The subcommand of an ``lmdlt`` argv (the first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def installation() -> dict:
    """What a client and its server must share: the lmdlt package they import and the Python
    environment (a job's `lmdlt` on PATH may belong to another environment than Snakemake's)."""
    return {"lmdlt": os.path.realpath(os.path.dirname(__file__)),
            "prefix": os.path.realpath(sys.prefix)}


def disabled() -> bool:
    return os.environ.get(ENV_DISABLE, "").strip().lower() not in ("", "0", "false", "no")


def in_slurm_job() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


def in_torchrun_rank(env=None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("TORCHELASTIC_RUN_ID") or env.get("LOCAL_RANK"))


def local_gpu_count(env=None, driver_dir: str = "/proc/driver/nvidia/gpus") -> int:
    """NVIDIA GPUs this host's jobs can see, without torch and without initialising CUDA:
    the driver's per-GPU folders (``/proc/driver/nvidia/gpus``, Linux), narrowed by
    ``CUDA_VISIBLE_DEVICES`` (``""`` or ``-1``: none). ``LMDLT_LOCAL_GPUS=N`` overrides the
    count (e.g. to keep a GPU free, or where the driver has no ``/proc`` entry)."""
    env = os.environ if env is None else env
    forced = env.get(ENV_LOCAL_GPUS, "").strip()
    if forced:
        return max(0, int(forced))
    try:
        physical = len(os.listdir(driver_dir))
    except OSError:
        physical = 0
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None or physical == 0:
        return physical
    # CUDA takes the entries up to the first invalid one (e.g. -1)
    count = 0
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry.startswith("-"):
            break
        count += 1
    return min(count, physical)


#: the commands that take ``--device`` (their default is ``auto``)
DEVICE_COMMANDS = frozenset({"train-stage1", "extract", "train-stage2-encoder"})


def wants_cuda(argv: list[str], env=None) -> bool:
    """Whether ``lmdlt <argv>`` will use CUDA: ``--device cuda[:N]``, or ``auto`` (the default)
    on a host with a visible GPU. Read from the argv alone: no torch, no CUDA call."""
    if command_of(argv) not in DEVICE_COMMANDS:
        return False
    device = "auto"
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            device = argv[i + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    device = device.strip().lower()
    if device.startswith("cuda"):
        return True
    return device == "auto" and local_gpu_count(env) > 0


# -- client -----------------------------------------------------------------------------------

def _read_line(conn: socket.socket, buf: bytearray) -> dict | None:
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


def run_in_server(argv: list[str]) -> int | None:
    """Run ``lmdlt <argv>`` in the job server named by ``LMDLT_JOB_SERVER``; its exit status, or
    None when no server is to be used (the caller then runs the command itself)."""
    path = os.environ.get(ENV_SOCKET)
    if not path or disabled() or in_slurm_job() or (argv[:1] == ["job-server"]):
        return None
    if in_torchrun_rank() or wants_cuda(argv):
        # its own process, and nothing it starts (a torchrun, a subprocess) goes to the server
        os.environ.pop(ENV_SOCKET, None)
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError as e:
        conn.close()
        print(f"lmdlt: the job server at {path} does not answer ({e}); running in this process",
              file=sys.stderr)
        return None
    with conn:
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                              "installation": installation()}).encode()
        try:
            socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
            conn.sendall(request)
        except OSError as e:  # e.g. a closed standard stream: nothing was started
            print(f"lmdlt: could not hand the job to the job server at {path} ({e}); running "
                  f"in this process", file=sys.stderr)
            return None
        buf = bytearray()
        hello = _read_line(conn, buf)
        if hello is not None and "refused" in hello:
            print(f"lmdlt: the job server at {path} refused the job ({hello['refused']}); "
                  f"running in this process", file=sys.stderr)
            return None
        if hello is None:
            print(f"lmdlt: the job server at {path} closed the connection before starting the "
                  f"job", file=sys.stderr)
            return 1
        child = int(hello["pid"])

        def forward(signum, _frame):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, forward)
        done = _read_line(conn, buf)
    if done is None:
        print(f"lmdlt: the job (process {child} of the job server at {path}) ended without an "
              f"exit status (killed or crashed)", file=sys.stderr)
        return 1
    return int(done["exit"])


# -- server -----------------------------------------------------------------------------------

def _env_int(env, *names: str) -> int | None:
    for name in names:
        try:
            value = int(str(env.get(name, "")).strip())
        except ValueError:
            continue
        if value > 0:
            return value
    return None


def size_thread_pools(env) -> dict:
    """Size the thread pools this (forked) process inherited to what ``env`` asks for, as a
    process started with ``env`` would have sized them when its libraries loaded: OpenMP from
    ``OMP_NUM_THREADS``, OpenBLAS from ``OPENBLAS_NUM_THREADS`` (then ``GOTO_``, ``OMP_``), MKL
    from ``MKL_NUM_THREADS`` (then ``OMP_``), BLIS from ``BLIS_NUM_THREADS`` (then ``OMP_``),
    torch's intra-op pool from ``OMP_NUM_THREADS``. Snakemake sets all of them to the rule's
    ``threads``. A variable that is not set leaves its pool as it is (the server's size is
    then what a fresh process gets too: the server was started with the same environment).
    Returns the limits applied, by library."""
    limits = {}
    for api, names in (("openmp", ("OMP_NUM_THREADS",)),
                       ("openblas", ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")),
                       ("mkl", ("MKL_NUM_THREADS", "OMP_NUM_THREADS")),
                       ("blis", ("BLIS_NUM_THREADS", "OMP_NUM_THREADS"))):
        n = _env_int(env, *names)
        if n is not None:
            limits[api] = n
    if limits and any(m in sys.modules for m in ("numpy", "torch", "sklearn", "scipy")):
        from threadpoolctl import ThreadpoolController

        controller = ThreadpoolController()  # the libraries loaded in this process
        for api, n in limits.items():  # kept: the job's process lives as long as the job
            selected = controller.select(internal_api=api)
            if selected.lib_controllers:
                selected.limit(limits=n)
    torch = sys.modules.get("torch")
    if torch is not None and "openmp" in limits:
        torch.set_num_threads(limits["openmp"])
        limits["torch"] = limits["openmp"]
    return limits


def cuda_initialised() -> bool:
    """Whether this process has a CUDA context (asked without creating one)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a torch without CUDA support
        return False


def lmdlt_sources() -> dict[str, float]:
    """The source file and its mtime of every ``lmdlt`` module imported in this process."""
    out = {}
    for name, module in list(sys.modules.items()):
        if name != "lmdlt" and not name.startswith("lmdlt."):
            continue
        path = getattr(module, "__file__", None)
        if path:
            try:
                out[path] = os.stat(path).st_mtime_ns
            except OSError:
                pass
    return out


def changed_sources(loaded: dict[str, float]) -> list[str]:
    """The files of ``loaded`` (:func:`lmdlt_sources` at import time) changed or gone since."""
    changed = []
    for path, mtime in loaded.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                changed.append(path)
        except OSError:
            changed.append(path)
    return changed


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection mid-request")
        data.extend(chunk)
    return bytes(data)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """A client's request (argv, cwd, env) and its three standard streams."""
    msg, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
    if len(msg) < _HEADER.size:
        msg += _recv_exactly(conn, _HEADER.size - len(msg))
    (n,) = _HEADER.unpack(msg)
    request = json.loads(_recv_exactly(conn, n))
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ConnectionError(f"expected the client's 3 standard streams, got {len(fds)}")
    return request, fds


def _run_child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the client's job, run it, report its exit status, exit."""
    code = 1
    started = time.monotonic()
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        # fresh stream objects on the job's descriptors, buffered as a new process's would be
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - line-buffered on a terminal
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(ENV_SOCKET, None)  # nothing the job starts goes back to the server
        sys.argv = ["lmdlt", *request["argv"]]
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        size_thread_pools(request["env"])  # the rule's threads, not the server's pools
        from .status import job_started

        job_started(command_of(request["argv"]))  # host, pid, heartbeat: lmdlt status

        def watch_client():  # the job was killed (its client is gone): stop too
            try:
                while conn.recv(1):
                    pass
            except OSError:
                pass
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch_client, daemon=True).start()
        import logging

        logging.root.handlers.clear()  # cli.main configures logging on the job's stderr
        from .cli import main

        try:
            code = main(request["argv"])
        except SystemExit as e:  # argparse errors and --help
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except KeyboardInterrupt:
            code = 130
        except BaseException:  # noqa: BLE001 - a traceback in the job's log, as a process would
            import traceback

            traceback.print_exc()
            code = 1
    except BaseException:  # noqa: BLE001 - setting up the job failed
        import traceback

        traceback.print_exc()
    finally:
        try:  # a Snakemake benchmark file's CPU and memory columns measure the client, not this
            import resource

            use = resource.getrusage(resource.RUSAGE_SELF)
            print(f"lmdlt job server: job process {os.getpid()}: exit {code}, "
                  f"{time.monotonic() - started:.1f} s, {use.ru_utime + use.ru_stime:.1f} s CPU, "
                  f"peak resident memory {use.ru_maxrss / 1024:.0f} MB (pages shared with the "
                  f"server included)", file=sys.stderr)
        except Exception:  # noqa: BLE001
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        try:
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        except OSError:
            pass
        os._exit(code)


def _alive(pid: int | None) -> bool:
    """The owner (Snakemake) lives; no owner given: the server runs until stopped."""
    from .status import process_alive

    return pid is None or process_alive(pid)


def serve(path: str, owner_pid: int | None = None, idle_timeout: float | None = None,
          preload: bool = True) -> None:
    """Listen on the Unix socket ``path`` and fork one child per request until the owner process
    is gone, SIGTERM arrives, or no request came for ``idle_timeout`` seconds."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    listener.listen(128)
    os.replace(staging, path)  # the socket appears only once it accepts (queued until preloaded)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    # a torch.cuda.is_available() in a preloaded module must not call cuInit in this process
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    last = [time.monotonic()]
    loaded: set[str] = set()
    waiting: list[tuple[socket.socket, dict, list[int]]] = []
    sources = lmdlt_sources()  # what a child would run, as imported: compared before each fork
    broken: list[str] = []  # why the preload failed

    def refusal() -> str | None:
        """Why no job may be forked now (it then runs in its own process), or None."""
        if broken:
            return broken[0]
        changed = changed_sources(sources)
        if changed:
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            return (f"lmdlt source changed since the server imported it: {changed[0]}{more}; "
                    f"the job runs the code on disk")
        if cuda_initialised():  # a fork would share the context: never
            return "CUDA was initialised in the job server: a forked job would share its context"
        return None

    def refuse(conn: socket.socket, fds: list[int], reason: str) -> None:
        try:
            conn.sendall(json.dumps({"refused": reason}).encode() + b"\n")
        except OSError:
            pass
        conn.close()
        for fd in fds:
            os.close(fd)

    def ready(request: dict) -> bool:
        if preloaded or broken:
            return True
        need = NEEDS.get(command_of(request["argv"]) or "")
        return need is not None and need in loaded

    def fork(conn: socket.socket, request: dict, fds: list[int]) -> None:
        reason = refusal()
        if reason is not None:
            refuse(conn, fds, reason)
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            for other, _, other_fds in waiting:
                other.close()
                for fd in other_fds:
                    os.close(fd)
            _run_child(conn, request, fds)  # never returns
        conn.close()
        for fd in fds:
            os.close(fd)

    def serve_waiting(timeout: float) -> None:
        """Take every request that has arrived (waiting up to ``timeout`` s for the first) and
        fork a child for each one whose command's modules are loaded."""
        for item in [w for w in waiting if ready(w[1])]:
            waiting.remove(item)
            fork(*item)
        listener.settimeout(timeout)
        while True:
            try:
                conn, _ = listener.accept()
            except (socket.timeout, BlockingIOError, InterruptedError):
                return
            listener.settimeout(0)
            last[0] = time.monotonic()
            try:
                conn.settimeout(10)
                request, fds = _receive(conn)
                conn.settimeout(None)
            except (OSError, ValueError, ConnectionError) as e:
                print(f"lmdlt job server: a request failed: {e}", file=sys.stderr)
                conn.close()
                continue
            mine = installation()
            if request.get("installation") != mine:
                refuse(conn, fds, f"the client's lmdlt is {request.get('installation')}, the "
                                  f"server's {mine}")
                continue
            if ready(request):
                fork(conn, request, fds)
            else:
                waiting.append((conn, request, fds))

    preloaded = not preload
    try:
        if preload:
            names = preload_names()
            while True:
                serve_waiting(0)
                if stop.is_set() or not _alive(owner_pid):
                    return
                name = "the list of method modules"
                try:
                    name = next(names, None)
                    if name is None:
                        break
                    importlib.import_module(name)
                except BaseException as e:  # noqa: BLE001 - e.g. a syntax error in one module
                    import traceback

                    traceback.print_exc()  # the server's log
                    where = getattr(e, "filename", None)
                    line = getattr(e, "lineno", None)
                    at = f" ({where}, line {line})" if where and line else ""
                    broken.append(f"its preload of {name} failed: {type(e).__name__}: "
                                  f"{getattr(e, 'msg', None) or e}{at}; every job runs in its "
                                  f"own process")
                    print(f"lmdlt job server: {broken[0]}", file=sys.stderr, flush=True)
                    break
                loaded.add(name)
                sources.update({p: m for p, m in lmdlt_sources().items() if p not in sources})
            preloaded = not broken
        while not stop.is_set() and _alive(owner_pid):
            if idle_timeout is not None and time.monotonic() - last[0] > idle_timeout:
                break
            serve_waiting(1.0)
    finally:
        listener.close()
        for conn, _, fds in waiting:
            conn.close()
            for fd in fds:
                os.close(fd)
        try:
            os.unlink(path)
            folder = os.path.dirname(path)
            if os.path.basename(folder).startswith("lmdlt-jobs-"):  # WorkflowServer's own
                os.rmdir(folder)
        except OSError:
            pass


# -- the workflow's side ----------------------------------------------------------------------

# Snakemake invocations that run no job: no server is started while the Snakefile is parsed
_NO_JOBS_FLAGS = {
    "--dry-run", "--dryrun", "--report", "--lint", "--list-rules", "--list", "--list-target-rules",
    "--summary", "--detailed-summary", "--dag", "--rulegraph", "--filegraph", "--d3dag",
    "--list-changes", "--lc", "--list-code-changes", "--list-params-changes",
    "--list-input-changes", "--containerize", "--print-compilation", "--unlock",
    "--cleanup-metadata", "--cleanup-shadow", "--delete-all-output", "--delete-temp-output",
    "--touch", "--archive", "--generate-unit-tests", "--export-cwl", "--version", "--help",
}
_NO_JOBS_SHORT = set("nlSDth")


def may_run_jobs(argv: list[str]) -> bool:
    """Whether a Snakemake command line may run jobs (False for a dry run, a report, a listing,
    an unlock...). Only decides whether to start the server early; ``onstart`` decides for real."""
    if "--mode" in argv:  # a job spawned by Snakemake itself (subprocess / remote mode)
        return False
    for arg in argv[1:]:
        if arg in _NO_JOBS_FLAGS or arg.split("=", 1)[0] in _NO_JOBS_FLAGS:
            return False
        if arg.startswith("-") and not arg.startswith("--") and arg[1:].isalpha() \
                and _NO_JOBS_SHORT & set(arg[1:]):
            return False
    return True


# the server's entry point: the installed lmdlt, never a folder named lmdlt in the working
# directory (which `python -m lmdlt` would import first)
SERVER_MAIN = ("import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
               "from lmdlt.cli import main; sys.exit(main())")


class WorkflowServer:
    """The server of one Snakemake run. ``launch`` starts it while the Snakefile is parsed, so
    that its imports overlap Snakemake's DAG building; ``start`` (``onstart``: jobs are about to
    run, locally) waits for its socket and hands it to the jobs; ``stop`` (``onsuccess`` /
    ``onerror``, or ``onstart`` of a cluster run) ends it. A server whose Snakemake is gone
    without either (a dry run, a kill) stops by itself (``serve``'s owner check)."""

    def __init__(self):
        self.process = None
        self.folder = None
        self.path = None
        self.log_path = None

    def launch(self, log_path: str | os.PathLike) -> bool:
        if self.process is not None:
            return True
        if disabled() or in_slurm_job():
            return False
        import subprocess

        # a short folder: a Unix socket's path has a limit of about 100 bytes
        self.folder = tempfile.mkdtemp(prefix="lmdlt-jobs-")
        self.path = os.path.join(self.folder, "socket")
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", SERVER_MAIN, "job-server", "--socket", self.path,
                 "--owner-pid", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        return True

    def start(self, log_path: str | os.PathLike) -> str | None:
        if not self.launch(log_path):
            return None
        deadline = time.monotonic() + 60
        while not os.path.exists(self.path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                print(f"lmdlt: the job server did not start (see {self.log_path}); every job "
                      f"runs in its own process", file=sys.stderr)
                self.stop()
                return None
            time.sleep(0.02)
        os.environ[ENV_SOCKET] = self.path
        return self.path

    def stop(self) -> None:
        os.environ.pop(ENV_SOCKET, None)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except Exception:  # noqa: BLE001
                self.process.kill()
        self.process = None
        if self.folder is not None:
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def drop_local_rate_limiter(workflow) -> bool:
    """Remove Snakemake's job-submission rate limiter from a local run's scheduler.

    Why: with a limiter (the CLI default ``--max-jobs-per-timespan 100/1s``), Snakemake 9.27's
    scheduler arms a new 1-s re-evaluation timer after every scheduling round, and each timer's
    round arms another, so the chains add up with every finished job; each round re-reads the
    size of every ready job's inputs. On the default run that was 26,576 rounds and 2.8 million
    ``stat`` calls for 198 jobs (cProfile, docs/benchmarks.md section 9). A local run's
    parallelism is bounded by ``--cores``, which is what the limiter exists to protect on a
    cluster; a cluster run keeps it (this is called for local runs only). Returns whether a
    limiter was removed; does nothing on a Snakemake without the attribute."""
    scheduler = getattr(workflow, "scheduler", None)
    if scheduler is None or getattr(scheduler, "job_rate_limiter", None) is None:
        return False
    scheduler.job_rate_limiter = None
    return True


#: the rules whose jobs run on the GPU when the config's device resolves to CUDA
GPU_RULES = ("train_stage1", "extract_features", "train_stage2_encoder")


def uses_cuda(device: str, gpus: int) -> bool:
    """Whether ``compute.device`` runs on CUDA on a host with ``gpus`` visible GPUs."""
    device = str(device).strip().lower()
    return device.startswith("cuda") or (device == "auto" and gpus > 0)


def request_gpus(rules, device: str, gpus: int, names=GPU_RULES) -> list[str]:
    """Parse time: every GPU rule asks for one ``gpu`` resource when its jobs will use CUDA on
    this host (``gpus`` > 0), unless it asks for some already (torchrun's N, a profile's
    ``set-resources``). Returns the rules changed. With :func:`limit_gpu_jobs` at ``onstart``,
    a local run then runs no more GPU jobs at once than there are GPUs."""
    if gpus <= 0 or not uses_cuda(device, gpus):
        return []
    changed = []
    for name in names:
        resources = getattr(rules, name).rule.resources
        if "gpu" not in resources:
            resources.update({"gpu": 1})
            changed.append(name)
    return changed


def limit_gpu_jobs(workflow, gpus: int) -> bool:
    """``onstart`` of a local run: the scheduler's ``gpu`` resource is ``gpus``, as if the run
    were given ``--resources gpu=<gpus>`` (a ``--resources gpu=N`` of the user's wins; no limit
    where no GPU is visible, where no rule asks for one). Snakemake builds its scheduler's
    resource table before ``onstart``, so both of its tables are set. Returns whether a limit
    was set; does nothing on a Snakemake without those attributes."""
    scheduler = getattr(workflow, "scheduler", None)
    if gpus <= 0 or scheduler is None:
        return False
    table, free = getattr(scheduler, "global_resources", None), getattr(scheduler, "resources", None)
    if not isinstance(table, dict) or not isinstance(free, dict) or "gpu" in table:
        return False
    table["gpu"] = free["gpu"] = gpus
    return True
