"""Errors say what happened, where (lmdlt.errors, lmdlt.io.atomic_path): a full disk, a denied
permission or another OS error while writing is one line naming the file and the cause, and
nothing half-written remains; a code bug keeps its traceback in the job's log, whose last line
says where it is; user errors stay one line."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections import namedtuple

import pytest
import torch

from lmdlt.cli import main
from lmdlt.errors import NotFoundError, SetupError, UserError, WriteError
from lmdlt.io import atomic_path, write_json
from lmdlt.resume import resume_path

INLINE_CONTAINER = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
Usage = namedtuple("Usage", "total used free")


def _no_space(monkeypatch, free: int = 0):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(real(p).total, real(p).total - free, free))


def _temporaries(folder):
    return sorted(p.name for p in folder.glob(".*.tmp-*"))


# ---- the table row: a full disk during stage 1, through the command ------------------------

def test_a_full_disk_during_stage1_is_one_line_naming_the_file(digits, tmp_path, monkeypatch, capsys):
    """What torch.save raises when the disk fills mid-write is ``RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos ...`` (measured on a 5 MB tmpfs): no file, no
    errno. The disk is made full here (torch.save writes part of the file, then fails so;
    shutil.disk_usage reports 0 bytes free)."""
    real_save = torch.save

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half of a zip archive")
        raise RuntimeError(INLINE_CONTAINER)
    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    _no_space(monkeypatch)
    out = tmp_path / "exp" / "seed0" / "stage1" / "ce" / "model.pt"
    rc = main(["train-stage1", "--split", str(digits / "split.parquet"), "--images", str(digits / "images.h5"),
               "--params", json.dumps({"method": "ce", "epochs": 2, "batch_size": 64, "lr": 0.05}),
               "--seed", "0", "--threads", "1", "--device", "cpu", "--out", str(out)])
    monkeypatch.setattr(torch, "save", real_save)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("lmdlt ")]
    assert rc == 1 and "Traceback" not in err and len(lines) == 1, err
    # the first write of the run is the resume state after epoch 1
    assert lines[0] == (f"lmdlt train-stage1: error: cannot write {str(resume_path(out))!r}: no space left on "
                        f"device, 0 B free there; free some space or move results_dir to a larger disk, "
                        f"then re-run"), lines[0]
    assert sorted(p.name for p in out.parent.iterdir()) == []  # nothing half-written


# ---- atomic_path: the cause, the file, nothing left ----------------------------------------

def _write_failing(path, error):
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise error


@pytest.mark.parametrize("make_error,cause", [
    (lambda tmp: OSError(errno.ENOSPC, "No space left on device"), "no space left on device, "),
    (lambda tmp: OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp)), "disk quota exceeded, "),
    (lambda tmp: PermissionError(errno.EACCES, "Permission denied", str(tmp)),
     "permission denied; check that you may write to that folder"),
    (lambda tmp: OSError(errno.EROFS, "Read-only file system", str(tmp)), "read-only file system; move"),
    # h5py: errno in the exception and, with the temporary's name, in its message
    (lambda tmp: OSError(28, f"Can't synchronously write data (file write failed: time = Mon\n, filename "
                             f"= '{tmp}', errno = 28, error message = 'No space left on device')"),
     "no space left on device, "),
])
def test_a_failed_write_names_the_file_and_the_cause_and_leaves_the_old_file(tmp_path, make_error, cause):
    out = tmp_path / "metrics.json"
    write_json(out, {"old": 1})
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with pytest.raises(WriteError) as e:
        _write_failing(out, make_error(tmp))
    assert str(e.value).startswith(f"cannot write {str(out)!r}: {cause}"), str(e.value)
    assert "\n" not in str(e.value)
    assert json.loads(out.read_text()) == {"old": 1} and _temporaries(tmp_path) == []


def test_torch_save_failing_on_a_full_disk_is_no_space_left(tmp_path, monkeypatch):
    _no_space(monkeypatch, free=4096)
    with pytest.raises(WriteError, match=r"cannot write '.*model\.pt': no space left on device, 4\.0 KiB free"):
        _write_failing(tmp_path / "model.pt", RuntimeError(INLINE_CONTAINER))
    assert list(tmp_path.iterdir()) == []


def test_errors_that_are_not_about_the_write_pass_through(tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(ValueError, match="a check"):
        _write_failing(out, ValueError("a check"))
    other = tmp_path / "input.png"
    with pytest.raises(PermissionError) as e:  # an input file: its own message names it
        _write_failing(out, PermissionError(errno.EACCES, "Permission denied", str(other)))
    assert not isinstance(e.value, WriteError)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # plenty of space: not a write error
        _write_failing(out, RuntimeError("shape mismatch"))
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_created_is_named(tmp_path, monkeypatch):
    from pathlib import Path

    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(Path, "mkdir", denied)
    out = tmp_path / "new" / "metrics.json"
    with pytest.raises(WriteError, match=f"cannot write the folder {re.escape(repr(str(out.parent)))} for "
                                         "'metrics.json': permission denied"):
        write_json(out, {})


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_enospc_from_a_real_device_is_mapped(tmp_path, monkeypatch):
    """A real ENOSPC (/dev/full fails every write with it) through the mapping."""
    def write_to_full(self, data):
        with open("/dev/full", "w") as f:
            f.write(data)
            f.flush()
    from pathlib import Path
    monkeypatch.setattr(Path, "write_text", write_to_full)
    with pytest.raises(WriteError, match="no space left on device"):
        write_json(tmp_path / "m.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


# ---- the command: user errors one line, bugs with their traceback ---------------------------

def _run_cli_with(tmp_path, monkeypatch, raise_line: str):
    """``lmdlt show-split`` whose command runs ``raise_line`` (Python), with stderr in a log file
    as Snakemake's ``> {log} 2>&1`` puts it (in this process: a fresh one per case costs ~4 s;
    test_a_code_bug_in_a_job_process_keeps_its_traceback_in_its_log runs one)."""
    import lmdlt.cli as cli
    import lmdlt.errors as errors

    def boom(a):
        exec(raise_line, {"torch": torch, **vars(errors)})
    monkeypatch.setattr(cli, "cmd_show_split", boom)
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # no handler on the file
    log = tmp_path / "job.log"
    with open(log, "w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        try:
            rc = cli.main(["show-split", "x.parquet"])
        finally:
            monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    return rc, log.read_text(), log


def test_a_code_bug_in_a_job_process_keeps_its_traceback_in_its_log(tmp_path):
    script = ("import sys, lmdlt.cli as cli\n"
              "def boom(a):\n    return {}['missing']\n"
              "cli.cmd_show_split = boom\n"
              "sys.exit(cli.main(['show-split', 'x.parquet']))\n")
    log = tmp_path / "job.log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", script], stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
    lines = log.read_text().strip().splitlines()
    assert proc.returncode == 1 and lines[0] == "Traceback (most recent call last):", lines
    assert 'line 3, in boom' in "\n".join(lines) and lines[-2] == "KeyError: 'missing'", lines
    assert lines[-1] == (f"lmdlt show-split: error: internal error (KeyError: 'missing'), a bug in lmdlt "
                         f"rather than in the input; please report it; the full traceback is above, in {log}")


@pytest.mark.parametrize("raise_line,head", [
    ("{}['missing']", r"internal error \(KeyError: 'missing'\), a bug in lmdlt"),
    ("None.shape", r"internal error \(AttributeError: 'NoneType' object has no attribute 'shape'\)"),
    ("raise RuntimeError('expected scalar type Float but found Half')",
     r"internal error \(RuntimeError: expected scalar type Float but found Half\)"),
    ("raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')",
     r"out of GPU memory \(OutOfMemoryError: CUDA out of memory\. Tried to allocate 2\.00 GiB\); lower"),
])
def test_a_code_bug_keeps_its_traceback_and_the_last_line_says_where(tmp_path, monkeypatch, raise_line, head):
    rc, text, log = _run_cli_with(tmp_path, monkeypatch, raise_line)
    lines = text.strip().splitlines()
    assert rc == 1 and lines[0] == "Traceback (most recent call last):", text
    assert any("in boom" in ln for ln in lines), text  # the frame of the bug
    assert re.match(f"lmdlt show-split: error: {head}.*; the full traceback is above, in "
                    f"{re.escape(str(log))}$", lines[-1]), lines[-1]


@pytest.mark.parametrize("raise_line,message", [
    ("raise ValueError('split.protocol: unknown protocol')", "split.protocol: unknown protocol"),
    ("raise UserError('a user error')", "a user error"),
    ("raise NotFoundError('image id x is not in the image cache c.h5')",
     "image id x is not in the image cache c.h5"),
    ("raise SetupError(\"device 'cuda' requested but CUDA is not available on this machine\")",
     "device 'cuda' requested but CUDA is not available on this machine"),
    ("open('/proc/nonexistent/x', 'w')",
     "[Errno 2] No such file or directory: '/proc/nonexistent/x'"),
    ("raise OSError(28, 'Cannot write (errno = 28)\\n second line')", "[Errno 28] Cannot write (errno = 28) second line"),
])
def test_a_user_error_stays_one_line(tmp_path, monkeypatch, raise_line, message):
    rc, text, _ = _run_cli_with(tmp_path, monkeypatch, raise_line)
    assert rc == 1 and text.strip() == f"lmdlt show-split: error: {message}", text


def test_known_user_errors_are_also_what_their_callers_catch():
    assert issubclass(NotFoundError, KeyError) and issubclass(SetupError, RuntimeError)
    assert issubclass(UserError, ValueError) and not issubclass(WriteError, OSError)
    assert str(NotFoundError("no split 'val'")) == "no split 'val'"  # not KeyError's quoting
