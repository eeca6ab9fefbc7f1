"""Progress of long loops: a tqdm bar on a terminal, nothing extra in a log file.

A bar (:func:`bar`) is drawn only when its stream (stderr unless told) is a terminal. Under
Snakemake a job's stderr is its log file, so no carriage return of a bar reaches a log; what a
log gets is the one ``logging`` line per epoch or ICC iteration that the loop writes itself
(``lmdlt status`` reads them), with :class:`Pace`'s ``elapsed ... eta ...``. While a bar is
drawn, console log lines are printed above it (through ``tqdm.write``), not through it.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import time

from tqdm import tqdm

from .status import fmt_duration


def is_terminal(file=None) -> bool:
    """Whether ``file`` (default: the current ``sys.stderr``) is attached to a terminal."""
    file = sys.stderr if file is None else file
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class _AboveBars(logging.StreamHandler):
    """A console handler's stand-in while bars are drawn: each record through ``tqdm.write``."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 (logging's own contract)
            self.handleError(record)


_drawn = 0            # bars being drawn now
_saved_handlers = None  # the root logger's handlers before the first of them


def _console_to_tqdm(on: bool) -> None:
    """The first drawn bar swaps the root logger's console handlers (stderr, stdout) for
    :class:`_AboveBars`; the last one to close puts them back."""
    global _drawn, _saved_handlers
    root = logging.getLogger()
    if on:
        _drawn += 1
        if _drawn == 1:
            _saved_handlers = root.handlers
            swapped = []
            for h in root.handlers:
                if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.stdout):
                    new = _AboveBars(h.stream)
                    new.setLevel(h.level)
                    new.setFormatter(h.formatter)
                    for f in h.filters:
                        new.addFilter(f)
                    h = new
                swapped.append(h)
            root.handlers = swapped
    elif _drawn > 0:
        _drawn -= 1
        if _drawn == 0 and _saved_handlers is not None:
            root.handlers, _saved_handlers = _saved_handlers, None


class _Bar(tqdm):
    def __init__(self, *args, **kw):
        self._redirects = False
        super().__init__(*args, **kw)
        if not self.disable:
            self._redirects = True
            _console_to_tqdm(True)

    def close(self):
        try:
            super().close()
        finally:
            if self._redirects:
                self._redirects = False
                _console_to_tqdm(False)


def bar(iterable=None, *, total: int | None = None, desc: str | None = None, unit: str = "it",
        leave: bool = False, enable: bool = True, file=None, **kw) -> tqdm:
    """A tqdm bar over ``iterable``, drawn only when ``enable`` and its stream (default
    stderr) is a terminal; disabled, it iterates ``iterable`` unchanged and writes nothing.
    ``leave=False``: a finished bar is erased (the loop's own log line stays)."""
    file = sys.stderr if file is None else file
    on = enable and is_terminal(file)
    if on and "ncols" not in kw and _columns(file) > 1:
        kw["dynamic_ncols"] = True  # follows the window's width
    elif on:  # a terminal that reports no size (tqdm would draw nothing): 80 x 24
        kw.setdefault("ncols", 80)
        kw.setdefault("nrows", 24)
    return _Bar(iterable, total=total, desc=desc, unit=unit, leave=leave, file=file,
                disable=not on, **kw)


def _columns(file) -> int:
    try:
        return os.get_terminal_size(file.fileno()).columns
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return 0


class Pace:
    """Elapsed time of this attempt and the ETA of the steps left at this attempt's pace
    (steps done before it, e.g. resumed from a checkpoint, are not in the pace)."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.done0, self.t0 = total, done, time.perf_counter()

    def text(self, done: int) -> str:
        """``elapsed 1m05s eta 3m20s`` after ``done`` of ``total`` steps."""
        elapsed = time.perf_counter() - self.t0
        steps = done - self.done0
        eta = elapsed / steps * (self.total - done) if steps > 0 else None
        return f"elapsed {fmt_duration(elapsed)} eta {fmt_duration(eta)}"
