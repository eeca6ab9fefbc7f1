"""``lmdlt status``: what every job of an experiment is doing, from its logs.

Read-only and safe while Snakemake (locally or through SLURM, on a shared file system) runs:
every rule writes its log to ``results/<dataset>/logs/seed<N>/<job>.log`` (the shell redirect
truncates it when a job starts, so a log holds one attempt), and a job is

* ``done`` when its output file exists (Snakemake removes a job's outputs before it runs it and
  after it fails, and the pipeline writes outputs atomically);
* ``failed`` when its output is absent and the log holds the CLI's error line
  (``lmdlt <command>: error: ...``), a Python traceback or a kill message;
* ``interrupted`` when its output is absent and its process is gone without an error: the job
  wrote ``lmdlt <command>: interrupted by SIGINT`` (Ctrl-C of Snakemake reaches every job of
  its terminal) or ``SIGTERM`` / ``SIGHUP``, or its process is no longer there (SIGKILL, a
  crash);
* ``interrupted?`` when its process runs on another host whose heartbeat stopped (a lost SLURM
  node, a killed job there: check ``squeue`` / the Snakemake log);
* ``stalled?`` when its process is alive (or cannot be checked) and the log has had no line for
  much longer than the job's own pace (a hang);
* ``running`` otherwise.

How a job's process is known: every ``lmdlt`` command run as a job (its stderr a regular file,
the rule's log) starts its log with ``lmdlt job: host H pid P start S heartbeat 60s``
(:func:`job_started`; ``S`` is the process's start time from ``/proc``, so a reused pid is not
taken for the job) and touches its log every 60 s while it lives. ``lmdlt status`` on the same
host asks the kernel whether that process still exists; on another host it takes a log
untouched for 5 heartbeats as a process that is gone. Logs without that line (a hand-run
command, older logs) get the silent-log rule only.

Progress comes from the log lines the stages write (``lmdlt.stage1.trainer``:
``epoch k/N loss ... val_bacc ...``; ``lmdlt.stage2.icc``: ``ICC iteration k/N: ... val_bacc
...``; linear stage-2 methods: ``epoch k/N loss ...``; a ``resumed from ... k/N`` line), each
starting with its time stamp. Elapsed is from the log's first time stamp to the output's mtime
(done) or now (running); ETA is the pace since the start (per epoch or iteration, excluding
epochs resumed from a checkpoint) times the steps left. A half-written last line (the job is
writing it) is ignored.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import stat
import threading
import time
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,(\d{3}))?")
EPOCH = re.compile(r"\bepoch (\d+)/(\d+)\b(?:.*?\bval_bacc ([0-9.]+|nan))?")
ICC = re.compile(r"\bICC iteration (\d+)/(\d+)\b(?:.*?\bval_bacc ([0-9.]+|nan))?")
RESUMED = re.compile(r"\bresumed from .*?(\d+)/(\d+)")
FAILED = re.compile(r"^lmdlt [\w-]+: error: |^Traceback \(most recent call last\)|"
                    r"\b(Killed|CANCELLED|DUE TO TIME LIMIT|Out of memory|oom-kill)\b", re.M)
CLI_ERROR = re.compile(r"^lmdlt [\w-]+: error: ")
#: a running job whose log is silent this much longer than its pace is reported ``stalled?``
STALL_FACTOR, STALL_MIN_S = 5.0, 600.0
#: the job's record (first line of its log) and its end by a signal (:func:`job_started`)
JOB = re.compile(r"\blmdlt job: host (\S+) pid (\d+) start (\S+) heartbeat (\d+)s\b")
INTERRUPTED = re.compile(r"\blmdlt [\w-]+: interrupted by (SIG[A-Z]+)")
#: the job server's last line of a job (lmdlt/job_server.py): its exit status
SERVED_EXIT = re.compile(r"\blmdlt job server: job process \d+: exit (-?\d+)")
#: a job touches its log this often; on another host, a log untouched for
#: ``HEARTBEAT_MISSED`` heartbeats belongs to a process that is gone
HEARTBEAT_S, HEARTBEAT_MISSED = 60, 5
#: commands that are not pipeline jobs (read-only, or the server itself): no job record
NOT_JOBS = frozenset({"status", "job-server", "unlock", "validate-config", "show-split",
                      "split-summary", "init", "bundle", "verify", "runs"})


@dataclasses.dataclass
class Job:
    stage: str                 # split, stage1, features, stage2, evaluate, report
    variant: str               # "ce", "rrl/icc", ...
    seed: int | None
    state: str                 # done, running, failed, stalled?
    unit: str = ""             # epoch, iter
    k: int | None = None
    n: int | None = None
    val_bacc: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    log: str = ""
    error: str = ""

    @property
    def progress(self) -> str:
        return f"{self.unit} {self.k}/{self.n}" if self.k is not None else ""


def _stamp(line: str) -> float | None:
    m = STAMP.match(line)
    if not m:
        return None
    try:
        t = time.mktime(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timetuple())
    except ValueError:
        return None
    return t + (int(m.group(2)) / 1000 if m.group(2) else 0.0)


def read_lines(path: Path) -> list[str]:
    """The log's complete lines (a last line without its newline is being written: dropped)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    return lines[:-1]  # complete lines only (the remainder is "" or a half-written line)


def parse_log(lines: list[str]) -> dict:
    """Progress facts from a log's lines."""
    out: dict = {"start": None, "last": None, "k": None, "n": None, "unit": "", "val_bacc": None,
                 "k0": 0, "t_progress": None, "error": "", "processes": [], "interrupted": "",
                 "exit": None}
    for line in lines:
        t = _stamp(line)
        if t is not None:
            out["start"] = t if out["start"] is None else out["start"]
            out["last"] = t
        m = JOB.search(line)
        if m:  # one per process (torchrun: one per rank)
            out["processes"].append((m.group(1), int(m.group(2)), m.group(3), int(m.group(4))))
            continue
        m = INTERRUPTED.search(line)
        if m:
            out["interrupted"] = out["interrupted"] or m.group(1)
            continue
        m = SERVED_EXIT.search(line)
        if m:
            out["exit"] = int(m.group(1))
            continue
        m = RESUMED.search(line)
        if m:  # steps done before this attempt: not in its pace
            out["k0"] = out["k"] = int(m.group(1))
            out["n"] = int(m.group(2))
            out["unit"] = "iter" if "ICC" in line else "epoch"
            continue
        m = ICC.search(line) or EPOCH.search(line)
        if m:
            out["k"], out["n"] = int(m.group(1)), int(m.group(2))
            out["unit"] = "iter" if m.re is ICC else "epoch"
            out["t_progress"] = t if t is not None else out["last"]
            if m.group(3) is not None:
                try:
                    out["val_bacc"] = float(m.group(3))
                except ValueError:
                    pass
            continue
        e = FAILED.search(line)
        # the CLI's own line (after a bug's traceback, its summary) says more than the traceback header
        if e and (not out["error"] or (CLI_ERROR.match(line) and not CLI_ERROR.match(out["error"]))):
            out["error"] = line.strip()[:200]
    return out


def _split_pair(name: str, seed_dir: Path) -> tuple[str, str]:
    """'rrl_icc_nofdc' -> ('rrl', 'icc_nofdc'): the split whose folders exist (names may hold '_')."""
    cuts = [i for i, ch in enumerate(name) if ch == "_"]
    best = None
    for i in cuts:
        s1, s2 = name[:i], name[i + 1:]
        if (seed_dir / "stage2" / s1 / s2).is_dir():
            return s1, s2
        if best is None and (seed_dir / "stage1" / s1).is_dir():
            best = (s1, s2)
    if best:
        return best
    return (name[:cuts[0]], name[cuts[0] + 1:]) if cuts else (name, "")


def classify(log: Path, root: Path) -> tuple[str, str, int | None, Path | None]:
    """(stage, variant, seed, output file) of a log under ``root/logs``."""
    rel = log.relative_to(root / "logs")
    seed = None
    m = re.fullmatch(r"seed(\d+)", rel.parts[0]) if len(rel.parts) > 1 else None
    stem = log.stem
    if m is None:
        out = {"results_table": root / "tables" / "results.md",
               "results_table_html": root / "tables" / "results.html",
               "report_provenance": root / "report" / "provenance.html",
               "per_class_recall_figure": root / "figures" / "per_class_recall.png"}.get(stem)
        if stem.startswith("paper_table_html_"):
            out = root / "tables" / f"{stem[len('paper_table_html_'):]}.html"
        elif stem.startswith("combined_table_html_"):  # results/combined/, beside the experiments
            out = root.parent / "combined" / f"{stem[len('combined_table_html_'):]}.html"
        elif stem.startswith("combined_table_"):
            out = root.parent / "combined" / f"{stem[len('combined_table_'):]}.md"
        elif stem.startswith("paper_table_"):
            out = root / "tables" / f"{stem[len('paper_table_'):]}.md"
        elif stem.startswith("figure_") and stem != "figure_tsne":
            out = root / "figures" / f"{stem[len('figure_'):]}.png"
        elif stem == "figure_tsne":
            out = root / "figures" / "fig4.png"
        return "report", stem, None, out
    seed = int(m.group(1))
    sd = root / f"seed{seed}"
    if stem == "split":
        return "split", "", seed, sd / "split.parquet"
    if stem.startswith("stage1_"):
        s1 = stem[len("stage1_"):]
        return "stage1", s1, seed, sd / "stage1" / s1 / "model.pt"
    if stem.startswith("features_"):
        s1 = stem[len("features_"):]
        return "features", s1, seed, sd / "stage1" / s1 / "features.h5"
    if stem.startswith("stage2_"):
        s1, s2 = _split_pair(stem[len("stage2_"):], sd)
        return "stage2", f"{s1}/{s2}", seed, sd / "stage2" / s1 / s2 / "predictions.h5"
    if stem.startswith("evaluate_"):
        name = stem[len("evaluate_"):]
        if (sd / "stage1" / name).is_dir():
            return "evaluate", name, seed, sd / "stage1" / name / "metrics.json"
        s1, s2 = _split_pair(name, sd)
        return "evaluate", f"{s1}/{s2}", seed, sd / "stage2" / s1 / s2 / "metrics.json"
    return "other", stem, seed, None


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat``, field 22), or
    ``-`` where there is no ``/proc``: with the pid, it names one process (pids are reused)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return "-"
    return fields[19].decode() if len(fields) > 19 else "-"


def process_alive(pid: int, start: str = "-") -> bool:
    """Whether process ``pid`` of this host exists, is not a zombie, and (when ``start`` is
    known) is the process that started at ``start``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc (macOS): the kill probe is all there is
    if fields and fields[0] == b"Z":
        return False
    return start == "-" or len(fields) <= 19 or fields[19].decode() == start


def process_gone(processes: list, log_mtime: float, now: float) -> tuple[str, str] | None:
    """``(state, why)`` when every process recorded in a log is gone, else None (alive, or no
    record: nothing can be said). Same host: the kernel says; another host: the log's
    heartbeat (its mtime) stopped ``HEARTBEAT_MISSED`` heartbeats ago."""
    if not processes:
        return None
    here = socket.gethostname()
    reasons, certain = [], True
    for host, pid, start, heartbeat in processes:
        if host == here:
            if process_alive(pid, start):
                return None
            reasons.append(f"process {pid} ended")
        else:
            quiet = now - log_mtime
            if heartbeat <= 0 or quiet <= HEARTBEAT_MISSED * heartbeat:
                return None
            certain = False
            reasons.append(f"no heartbeat from process {pid} on {host} for {fmt_duration(quiet)}")
    why = ("killed or crashed" if certain else "killed, or its node lost: check squeue or the "
           "Snakemake log")
    return ("interrupted" if certain else "interrupted?"), \
        "; ".join(reasons) + f" without an error line or its output ({why})"


def job_status(log: Path, root: Path, now: float | None = None) -> Job:
    now = time.time() if now is None else now
    stage, variant, seed, output = classify(log, root)
    facts = parse_log(read_lines(log))
    try:
        log_mtime = log.stat().st_mtime
    except OSError:
        log_mtime = now
    start = facts["start"] if facts["start"] is not None else log_mtime
    # a job that records a heartbeat touches its log: the last line's stamp is its last write
    beats = any(p[3] > 0 for p in facts["processes"])
    last_write = (facts["last"] or start) if beats else log_mtime
    done = output is not None and output.exists()
    gone = None
    if done:
        state = "done"
        end = max(output.stat().st_mtime, facts["last"] or start)
        error = ""
    elif facts["interrupted"]:
        state, end = "interrupted", max(facts["last"] or start, start)
        error = f"interrupted by {facts['interrupted']}"
    elif facts["error"]:
        state, end, error = "failed", max(log_mtime, facts["last"] or start), facts["error"]
    elif facts["exit"] not in (None, 0):
        state, end = "failed", facts["last"] or start
        error = f"exit status {facts['exit']} without an error line"
    elif (gone := process_gone(facts["processes"], log_mtime, now)) is not None:
        (state, error), end = gone, facts["last"] or start
    else:
        state, end, error = "running", now, ""
    job = Job(stage, variant, seed, state, facts["unit"], facts["k"], facts["n"],
              facts["val_bacc"], max(0.0, end - start), None, str(log), error)
    if state == "running" and facts["k"] is not None and facts["t_progress"] is not None:
        steps = facts["k"] - facts["k0"]
        if steps > 0 and facts["t_progress"] > start:
            pace = (facts["t_progress"] - start) / steps
            job.eta_s = max(0.0, pace * (facts["n"] - facts["k"]) - (now - facts["t_progress"]))
            if now - last_write > max(STALL_MIN_S, STALL_FACTOR * pace):
                job.state, job.eta_s = "stalled?", None
    elif state == "running" and now - last_write > 6 * STALL_MIN_S:
        job.state = "stalled?"
    return job


def dataset_dirs(path: Path) -> list[Path]:
    """``path`` itself when it holds ``logs/``, else its sub-folders that do."""
    if (path / "logs").is_dir():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} not found (give results/<dataset>, or the results folder)")
    found = sorted(d for d in path.iterdir() if (d / "logs").is_dir() and d.name != "image_cache")
    if not found:
        raise FileNotFoundError(f"no experiment logs under {str(path)!r} (results/<dataset>/logs/ "
                                "appears when the first job starts)")
    return found


def collect(root: Path, now: float | None = None, include_all: bool = False) -> list[Job]:
    """Every job of the experiment at ``root`` (results/<dataset>) that has a log."""
    now = time.time() if now is None else now
    jobs = [job_status(p, root, now) for p in sorted((root / "logs").rglob("*.log"))]
    if not include_all:  # bookkeeping jobs (evaluation, report) only when not done
        jobs = [j for j in jobs if j.stage in ("split", "stage1", "features", "stage2")
                or j.state != "done"]
    order = {"split": 0, "stage1": 1, "features": 2, "stage2": 3, "evaluate": 4, "report": 5}
    return sorted(jobs, key=lambda j: (order.get(j.stage, 9), j.seed if j.seed is not None else -1,
                                       j.variant))


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def render(root: Path, jobs: list[Job]) -> str:
    counts = {}
    for j in jobs:
        counts[j.state] = counts.get(j.state, 0) + 1
    head = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: kv[0] != "running"))
    lines = [f"{root}: {head or 'no job has started'}"]
    rows = [("stage", "variant", "seed", "state", "progress", "val_bacc", "elapsed", "ETA")]
    for j in jobs:
        rows.append((j.stage, j.variant or "-", "-" if j.seed is None else str(j.seed), j.state,
                     j.progress or "-", "-" if j.val_bacc is None else f"{j.val_bacc:.4f}",
                     fmt_duration(j.elapsed_s), fmt_duration(j.eta_s)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for j in jobs:
        if j.state in ("failed", "interrupted", "interrupted?"):
            lines.append(f"{j.state}: {j.stage} {j.variant} seed {j.seed}: {j.error} (log {j.log})")
    return "\n".join(lines)


def status_text(path: str | os.PathLike = "results", include_all: bool = False) -> str:
    return "\n\n".join(render(d, collect(d, include_all=include_all))
                       for d in dataset_dirs(Path(path)))


# -- the job's side: what status reads --------------------------------------------------------

def _log_line(text: str) -> None:
    """``text`` as one time-stamped line on fd 2 (the log), in the logging format the parser
    reads; ``os.write``, so that a signal handler may call it while a stream is mid-write."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    try:
        os.write(2, f"{stamp} {text}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _heartbeat(every: float) -> None:
    while True:
        time.sleep(every)
        try:
            os.utime(2)  # the log's mtime: this process is alive (read from other hosts)
        except OSError:
            return


def job_started(command: str | None, heartbeat_s: float = HEARTBEAT_S) -> bool:
    """Record this process in its job's log, for ``lmdlt status``; returns whether it did.

    Only a job's process does this: one whose stderr is a regular file (Snakemake's log
    redirect), for a pipeline command. It writes ``lmdlt job: host H pid P start S heartbeat
    60s``, touches the log every ``heartbeat_s`` seconds from a daemon thread, and on SIGINT /
    SIGTERM / SIGHUP writes ``lmdlt <command>: interrupted by SIGxxx`` before ending as the
    signal would (SIGINT: KeyboardInterrupt, so ``finally`` blocks run; the others: the default
    action, the exit status a killed process has). Handlers are installed only where the
    signal has its default handler (the main thread of a plain process or a job-server child)."""
    if not command or command in NOT_JOBS:
        return False
    try:
        if not stat.S_ISREG(os.fstat(2).st_mode):
            return False
    except OSError:
        return False
    pid = os.getpid()
    beat = heartbeat_s > 0 and os.utime in os.supports_fd

    def on_signal(signum, _frame):
        if os.getpid() == pid:  # not in a forked worker (DataLoader) that inherited it
            _log_line(f"lmdlt {command}: interrupted by {signal.Signals(signum).name}")
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    defaults = {signal.SIGINT: (signal.default_int_handler, signal.SIG_DFL),
                signal.SIGTERM: (signal.SIG_DFL,), signal.SIGHUP: (signal.SIG_DFL,)}
    for signum, default in defaults.items():
        try:
            if signal.getsignal(signum) in default:
                signal.signal(signum, on_signal)
        except (ValueError, OSError):  # not the main thread
            break
    # the record after the handlers: whoever sees it and signals the job gets "interrupted"
    _log_line(f"lmdlt job: host {socket.gethostname()} pid {pid} start {process_start(pid)} "
              f"heartbeat {max(1, round(heartbeat_s)) if beat else 0}s")
    if beat:
        threading.Thread(target=_heartbeat, args=(heartbeat_s,), daemon=True,
                         name="lmdlt-heartbeat").start()
    return True
