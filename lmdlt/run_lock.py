"""One writer per experiment: a lock file in ``results_dir/<experiment>/``.

Why: two Snakemake runs of one experiment from two clones (or two machines) over the same
``results_dir`` (shared storage) do not see each other: Snakemake's own lock lives in each
clone's ``.snakemake/``. The second run then resumes from the first one's live resume file and
deletes outputs under it (it re-runs a job whose output it finds incomplete). So a run that is
about to run jobs (the workflow's ``onstart``) takes ``results_dir/<experiment>/.lmdlt-run.lock``
first and keeps it until it ends (``onsuccess`` / ``onerror``, or at exit); a second run of the
same experiment stops before its first job with a message naming the first run (host, pid,
start time, clone, command) and how to clear a lock that is stale.

The lock file is JSON (host, pid, the pid's start time, start time, clone (the Snakefile's
folder), working directory, command, a run id),
created with ``O_CREAT | O_EXCL`` (atomic, on NFS too). A thread of the Snakemake process
touches it every ``HEARTBEAT_S`` seconds while the run lives; its mtime is the heartbeat. A lock
is stale, and is taken over with a notice, when its process is gone (same host: the kernel
says; a reused pid is told apart by its start time) or when its heartbeat is older than
``STALE_AFTER_S`` (another host: it cannot be asked). Dry runs, ``--list``, ``--summary`` and
``--report`` never reach ``onstart``: they take no lock and are never refused.
``lmdlt unlock results/<experiment>`` clears a lock by hand (it refuses a lock whose process is
alive on this host unless ``--force``).
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

LOCK_NAME = ".lmdlt-run.lock"
#: the holder touches its lock this often ...
HEARTBEAT_S = 30.0
#: ... and a lock untouched this long belongs to a run that is gone (10 minutes: 20 missed
#: heartbeats, and room for clocks of two hosts that differ by minutes)
STALE_AFTER_S = 600.0


class RunLockError(ValueError):
    """Another live run holds the experiment's lock (a user error: the CLI prints one line)."""


def lock_path(experiment_dir: str | os.PathLike) -> Path:
    return Path(experiment_dir) / LOCK_NAME


def _process_start(pid: int) -> str:
    from .status import process_start

    return process_start(pid)


def _process_alive(pid: int, start: str) -> bool:
    from .status import process_alive

    return process_alive(pid, start)


def read_lock(path: str | os.PathLike) -> tuple[dict, float] | None:
    """The lock's record and its heartbeat (mtime), or None when there is no lock. A lock
    that cannot be parsed (being written, truncated) is returned as ``{}``."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        info = {}
    return (info if isinstance(info, dict) else {}), mtime


def stale_reason(info: dict, heartbeat: float, now: float | None = None,
                 stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why the lock ``info`` (heartbeat at ``heartbeat``) is stale, or None when its run may
    be alive."""
    now = time.time() if now is None else now
    quiet = now - heartbeat
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        if not _process_alive(info["pid"], str(info.get("pid_start", "-"))):
            return f"its process {info['pid']} on {info['host']} is gone"
        return None
    if quiet > stale_after_s:
        return (f"its heartbeat is {quiet / 60:.0f} min old (stale after "
                f"{stale_after_s / 60:.0f} min)")
    return None


def describe(info: dict, heartbeat: float | None = None, now: float | None = None) -> str:
    """``host h, pid 123, started 2025-01-01 10:00:00, clone /x/y (snakemake --cores 8)``."""
    now = time.time() if now is None else now
    parts = [f"host {info.get('host', '?')}", f"pid {info.get('pid', '?')}"]
    if info.get("started"):
        parts.append(f"started {datetime.fromtimestamp(info['started']).isoformat(sep=' ', timespec='seconds')}")
    parts.append(f"clone {info.get('clone', '?')}")
    if info.get("workdir") and info.get("workdir") != info.get("clone"):
        parts.append(f"working directory {info['workdir']}")
    text = ", ".join(parts)
    if info.get("command"):
        text += f" ({info['command']})"
    if heartbeat is not None:
        text += f", last heartbeat {max(0.0, now - heartbeat):.0f} s ago"
    return text


class RunLock:
    """The lock of one run on one experiment folder (``acquire`` / ``release``)."""

    def __init__(self, experiment_dir: str | os.PathLike, clone: str | os.PathLike | None = None,
                 command: str | None = None, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.dir = Path(experiment_dir)
        self.path = lock_path(self.dir)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        pid = os.getpid()
        self.info = {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
                     "started": time.time(), "clone": os.path.realpath(clone or os.getcwd()),
                     "workdir": os.path.realpath(os.getcwd()),
                     "command": command if command is not None else " ".join(sys.argv),
                     "run_id": uuid.uuid4().hex}
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.notice = ""  # what acquire had to do (a stale lock taken over)

    # -- taking it -----------------------------------------------------------------------

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.info, f, indent=1)
            f.write("\n")
        return True

    def _break(self, info: dict, heartbeat: float) -> bool:
        """Remove the stale lock ``info`` unless another run replaced it meanwhile: it is moved
        aside atomically, read back, and put back if it is not the one judged stale."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # gone already: try to create again
        moved = read_lock(aside)
        if moved is not None and moved[0] != info:
            try:
                os.link(aside, self.path)  # fails if a third run holds it: then it is theirs
            except OSError:
                pass
        try:
            os.unlink(aside)
        except OSError:
            pass
        return moved is None or moved[0] == info

    def acquire(self) -> "RunLock":
        """Take the lock, or raise :class:`RunLockError` naming the run that holds it."""
        if self.held:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            if self._create():
                self.held = True
                self._start_heartbeat()
                return self
            found = read_lock(self.path)
            if found is None:
                continue  # released meanwhile
            info, heartbeat = found
            if not info and time.time() - heartbeat < 5:
                time.sleep(0.2)  # being written by the run that just created it
                continue
            if info.get("run_id") == self.info["run_id"]:
                self.held = True
                self._start_heartbeat()
                return self
            reason = stale_reason(info, heartbeat, stale_after_s=self.stale_after_s) if info \
                else "it cannot be read"
            if reason is None:
                raise RunLockError(self.refusal(info, heartbeat))
            if self._break(info, heartbeat):
                self.notice = (f"lmdlt: took over the lock {self.path} of a run that is gone "
                               f"({describe(info, heartbeat)}): {reason}")
        raise RunLockError(f"could not take the lock {self.path}: it keeps changing (several runs "
                           f"starting at once?); run again")

    def refusal(self, info: dict, heartbeat: float) -> str:
        experiment = str(self.dir)
        host, pid = info.get("host", "?"), info.get("pid", "?")
        check = (f"`ps -p {pid}`" if host == socket.gethostname()
                 else f"`ps -p {pid}` on {host}, or `squeue` where it runs under SLURM")
        return (f"{experiment} is being written by another run: {describe(info, heartbeat)}. "
                f"Two runs of one experiment overwrite each other's files, so this run stops "
                f"before its first job. Wait for that run to end. If it is not running any more "
                f"(check with {check}), clear its lock with `lmdlt unlock {experiment}` or "
                f"delete {self.path}; a lock whose heartbeat is older than "
                f"{self.stale_after_s / 60:.0f} min is taken over by itself")

    # -- keeping it ----------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        atexit.register(self.release)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lmdlt-run-lock", daemon=True)
        self._thread.start()

    def still_mine(self) -> bool:
        found = read_lock(self.path)
        return found is not None and found[0].get("run_id") == self.info["run_id"]

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.still_mine():
                print(f"lmdlt: warning: the lock {self.path} of this run was removed or taken "
                      f"by another run; two runs may now write {self.dir}", file=sys.stderr)
                return
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> bool:
        """Remove the lock if it is still this run's; returns whether it was."""
        self._stop.set()
        if not self.held:
            return False
        self.held = False
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.still_mine():
            try:
                os.unlink(self.path)
                return True
            except OSError:
                return False
        return False


def unlock(experiment_dir: str | os.PathLike, force: bool = False) -> str:
    """``lmdlt unlock``: remove the experiment's lock; a lock whose process is alive on this
    host is refused unless ``force``. Returns what was done (one line)."""
    path = lock_path(experiment_dir)
    found = read_lock(path)
    if found is None:
        if not Path(experiment_dir).is_dir():
            raise FileNotFoundError(f"{str(experiment_dir)!r} not found (give results/<experiment>)")
        return f"{experiment_dir}: no lock"
    info, heartbeat = found
    here = socket.gethostname()
    if (not force and info.get("host") == here and isinstance(info.get("pid"), int)
            and _process_alive(info["pid"], str(info.get("pid_start", "-")))):
        raise RunLockError(f"{path} belongs to a run that is alive on this host "
                           f"({describe(info, heartbeat)}); stop that run, or give --force")
    path.unlink(missing_ok=True)
    alive = "" if info.get("host") == here else (
        f" (its host {info.get('host')} could not be asked whether it still runs)")
    return f"removed {path} of {describe(info, heartbeat)}{alive}"
