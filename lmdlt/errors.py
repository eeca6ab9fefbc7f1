"""What kind of error a failure is, which decides how the ``lmdlt`` command reports it.

* A **user error** (a bad config value, missing or inconsistent input, a full disk, a learning
  rate that makes training diverge) is something the user fixes: the command prints one line,
  ``lmdlt <command>: error: <what, where, the fix>``, and exits 1. ``UserError`` and its
  subclasses are user errors, and so are ``ValueError`` (the config and artefact checks raise
  subclasses of it) and ``OSError`` (``str`` names the file and the cause).
* Anything else (``KeyError``, ``TypeError``, ``AttributeError``, a ``RuntimeError`` that is not
  a known user error, CUDA out of memory) is an **internal error**: its full traceback goes to
  stderr, which in a pipeline job is the job's log file, and the last line says what it was
  and where the traceback is (``lmdlt.cli.main``).

A known user error raised where code expects a ``KeyError`` or ``RuntimeError`` uses the
subclasses below, which are both.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import TextIO


class UserError(ValueError):
    """A problem the user fixes (input, config, data, machine); reported as one line."""


class NotFoundError(UserError, KeyError):
    """Something asked for by name (an image id, a split, a setting) that is not there."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


class SetupError(UserError, RuntimeError):
    """This machine or launch cannot run what was asked (no CUDA device, a torchrun setting)."""


class WriteError(UserError):
    """An output that could not be written (no space left, permission denied, ...): the message
    names the file and the cause. Not an ``OSError``, so that code wrapping a *read* error of
    its input (``except OSError``) never mistakes it for a damaged input file."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def is_user_error(error: BaseException) -> bool:
    """True when ``error`` is reported as one line (see the module docstring)."""
    return isinstance(error, (UserError, ValueError, OSError))


def one_line(error: BaseException) -> str:
    """The error's message on one line (library messages may carry newlines)."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


def _is_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def log_file_of(stream: TextIO) -> str | None:
    """The regular file ``stream`` writes to (a job's log: Snakemake redirects stderr there),
    or None (a terminal, a pipe, or not known on this platform)."""
    try:
        target = os.readlink(f"/proc/self/fd/{stream.fileno()}")
    except (OSError, AttributeError, ValueError):
        return None
    return target if target.startswith("/") and os.path.isfile(target) else None


def report(command: str, error: BaseException, stream: TextIO | None = None) -> int:
    """Print ``error`` as the command ``command`` (e.g. ``lmdlt extract``) reports it and return
    the exit status (1): a user error as one line; an internal error as its full traceback
    followed by a last line saying what it was and where the traceback is."""
    stream = sys.stderr if stream is None else stream
    if is_user_error(error):
        print(f"{command}: error: {one_line(error)}", file=stream)
        return 1
    traceback.print_exception(type(error), error, error.__traceback__, file=stream)
    log = log_file_of(stream)
    where = f"above, in {log}" if log else "above"
    what = f"{type(error).__name__}: {one_line(error)}"[:300]
    if _is_out_of_memory(error):
        head = (f"out of GPU memory ({what}); lower the batch size or the image size, or run on a "
                "device with more memory")
    else:
        head = f"internal error ({what}), a bug in lmdlt rather than in the input; please report it"
    print(f"{command}: error: {head}; the full traceback is {where}", file=stream)
    return 1
