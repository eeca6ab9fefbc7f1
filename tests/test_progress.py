"""Progress: a bar on a terminal, one plain line per epoch / ICC iteration in a log file.

The log-file case is the one Snakemake runs (``> {log} 2>&1``): no carriage return, exactly
one line per epoch, which ``lmdlt status`` reads; the terminal case is a real pseudo-terminal
for the CLI and a stream that says it is a terminal for the stages run in-process.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading

import pytest

from conftest import link_digits
from lmdlt import progress
from lmdlt.config import validate_variant
from lmdlt.status import collect, parse_log, read_lines

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"  # the CLI's (lmdlt.cli.main)
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
CE = {"method": "ce", "epochs": 3, "batch_size": 32, "lr": 0.05, "model": {"width": 8}}
ICC = {"iterations": 2, "virtual_per_class": 50, "m_lr": 0.05, "m_batch_size": 64,
       "e_lr": 1e-3, "e_batch_size": 64}


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def data(digits, tmp_path_factory):
    return link_digits(digits, tmp_path_factory.mktemp("progress"))


@pytest.fixture(scope="module")
def checkpoint(data):
    from lmdlt.stage1.trainer import train_stage1

    cfg = validate_variant("stage1", {**CE, "epochs": 1})
    train_stage1(data / "split.parquet", data / "images.h5", cfg, 0, data / "model.pt", threads=1,
                 device="cpu")
    return data / "model.pt"


@contextlib.contextmanager
def stderr_as(stream, monkeypatch):
    """``stream`` as sys.stderr, with the CLI's log handler on it (lmdlt loggers at INFO)."""
    monkeypatch.setattr(sys, "stderr", stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    root, lm = logging.getLogger(), logging.getLogger("lmdlt")
    before, level = list(root.handlers), lm.level
    root.addHandler(handler)
    lm.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        lm.setLevel(level)
    assert root.handlers == before  # the bars put the console handlers back


def read_all(fd) -> str:
    """What is written to a pseudo-terminal's master ``fd`` (until it is quiet for 0.5 s)."""
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def redrawn(text: str) -> bool:
    """A bar's carriage return (a terminal writes a newline as \\r\\n: not that one)."""
    return re.search(r"\r(?!\n)", text) is not None


def segments(text: str) -> list[str]:
    """What a terminal shows line by line: the text cut at every carriage return and newline
    (cursor movements, ESC [ A and the like, left out)."""
    return re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text))


def own_lines(text: str, pattern: str) -> list[str]:
    """Log lines matching ``pattern`` that start a segment (not written into a bar's line)."""
    return [s for s in segments(text) if re.match(STAMP + r".*" + pattern, s)]


def cli(data, out, epochs=3):
    cfg = {**CE, "epochs": epochs}
    return [sys.executable, "-m", "lmdlt.cli", "train-stage1", "--split", str(data / "split.parquet"),
            "--images", str(data / "images.h5"), "--params", json.dumps(cfg), "--seed", "0",
            "--threads", "1", "--device", "cpu", "--precision", "fp32", "--channels-last", "off",
            "--out", str(out)]


# --- the helper ------------------------------------------------------------------------------

def test_bar_draws_on_a_pseudo_terminal_only(tmp_path):
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        assert progress.is_terminal(tty)
        for _ in progress.bar(range(3), total=3, desc="work", file=tty, leave=True):
            pass
        tty.flush()
        drawn = read_all(master)
    os.close(master)
    assert redrawn(drawn) and "work" in drawn and "3/3" in drawn, repr(drawn)

    with open(tmp_path / "job.log", "w") as f:
        assert not progress.is_terminal(f)
        assert list(progress.bar(range(3), desc="work", file=f)) == [0, 1, 2]  # iterates unchanged
    assert (tmp_path / "job.log").read_text() == ""
    tty = FakeTerminal()
    list(progress.bar(range(3), desc="work", file=tty, enable=False))  # e.g. a rank other than 0
    assert tty.getvalue() == ""
    assert not progress.is_terminal(io.StringIO())


def test_log_lines_go_above_a_drawn_bar_and_handlers_come_back_after_an_error(monkeypatch):
    tty = FakeTerminal()
    with stderr_as(tty, monkeypatch):  # asserts the root handlers are back at the end
        with pytest.raises(FloatingPointError):
            for i in progress.bar(range(5), total=5, desc="outer"):
                for _ in progress.bar(range(2), desc="inner"):
                    logging.getLogger("lmdlt.test").info("step %d", i)
                if i == 2:
                    raise FloatingPointError("stop")
    assert [len(own_lines(tty.getvalue(), rf"lmdlt\.test INFO step {i}$")) for i in range(4)] == [2, 2, 2, 0]


def test_pace_leaves_out_the_steps_done_before(monkeypatch):
    clock = iter([100.0, 130.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    pace = progress.Pace(10, done=4)  # resumed after 4
    assert pace.text(7) == "elapsed 30s eta 30s"  # 10 s per step since the start, 3 left


# --- stage 1 through the CLI: a log file (Snakemake) and a pseudo-terminal ----------------------

@pytest.mark.slow  # a training run in a subprocess: ~25-60 s on the 2-core CPU
def test_training_into_a_log_file_writes_one_line_per_epoch_and_no_bar(data, tmp_path):
    root = tmp_path / "results" / "digits"
    out = root / "seed0" / "stage1" / "ce" / "model.pt"
    log = root / "logs" / "seed0" / "stage1_ce.log"
    out.parent.mkdir(parents=True)
    log.parent.mkdir(parents=True)
    with open(log, "w") as f:  # as the rule's `> {log} 2>&1`
        subprocess.run(cli(data, out), stdout=f, stderr=subprocess.STDOUT, check=True)
    text = log.read_text()
    assert "\r" not in text and "batch" not in text
    lines = [line for line in text.splitlines() if re.search(r"\bepoch \d+/", line)]
    assert len(lines) == 3, text
    for k, line in enumerate(lines, 1):
        assert re.match(STAMP + rf"lmdlt\.stage1 INFO epoch {k}/3 loss [0-9.]+ .*val_bacc [0-9.]+ "
                        r".*elapsed \S+ eta \S+$", line), line
    # lmdlt status reads them
    facts = parse_log(read_lines(log))
    assert (facts["k"], facts["n"], facts["unit"]) == (3, 3, "epoch")
    assert facts["val_bacc"] == pytest.approx(float(re.search(r"val_bacc ([0-9.]+)", lines[-1]).group(1)))
    job = next(j for j in collect(root) if j.stage == "stage1")
    assert (job.state, job.progress) == ("done", "epoch 3/3")


@pytest.mark.slow  # a training run in a subprocess: ~20 s
def test_training_on_a_terminal_draws_bars_with_the_epoch_lines_above_them(data, tmp_path):
    master, slave = os.openpty()
    proc = subprocess.Popen(cli(data, tmp_path / "model.pt", epochs=2), stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []

    def drain():
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    assert proc.wait(timeout=300) == 0
    reader.join(timeout=30)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert redrawn(text) and "stage1 ce" in text and "batch" in text, text[-2000:]
    # each epoch's log line on a line of its own, printed above the bars (not into them)
    assert [len(own_lines(text, rf"INFO epoch {k}/2 loss")) for k in (1, 2)] == [1, 1], text[-3000:]
    assert (tmp_path / "model.pt").exists()


# --- feature extraction, ICC and the image cache, in-process --------------------------------------

def test_extraction_bar_on_a_terminal_none_in_a_file(checkpoint, data, tmp_path, monkeypatch):
    from lmdlt.features import extract_features

    def run(stream, name):
        with stderr_as(stream, monkeypatch):
            extract_features(checkpoint, data / "split.parquet", data / "images.h5", tmp_path / name,
                             threads=1, device="cpu", batch_size=64)

    tty = FakeTerminal()
    run(tty, "a.h5")
    assert "\r" in tty.getvalue() and "features train" in tty.getvalue()
    with open(tmp_path / "features.log", "w") as f:
        run(f, "b.h5")
    text = (tmp_path / "features.log").read_text()
    assert "\r" not in text and "features train" not in text
    assert len(own_lines(text, r"lmdlt\.features INFO train: \d+ images -> features")) == 1


def test_icc_bars_on_a_terminal_one_line_per_iteration_in_a_file(checkpoint, data, tmp_path,
                                                                 monkeypatch):
    from lmdlt.stage2.runner import run_stage2_encoder

    cfg = validate_variant("stage2", {"method": "icc", "params": ICC})

    def run(stream, name):
        with stderr_as(stream, monkeypatch):
            run_stage2_encoder(checkpoint, data / "split.parquet", data / "images.h5", cfg, 0,
                               tmp_path / name, threads=1, device="cpu")

    tty = FakeTerminal()
    run(tty, "a.h5")
    shown = tty.getvalue()
    assert "\r" in shown and "ICC" in shown and "E-step" in shown
    assert len(own_lines(shown, r"ICC iteration 2/2: ")) == 1  # above the bars
    log = tmp_path / "stage2.log"
    with open(log, "w") as f:
        run(f, "b.h5")
    text = log.read_text()
    assert "\r" not in text and "E-step 1" not in text
    lines = [line for line in text.splitlines() if "ICC iteration" in line]
    assert [re.match(STAMP + rf"lmdlt\.stage2 INFO ICC iteration {k}/2: .*val_bacc [0-9.]+; "
                     r".*elapsed \S+ eta \S+$", line) is not None for k, line in enumerate(lines, 1)] \
        == [True, True], lines
    facts = parse_log(read_lines(log))
    assert (facts["k"], facts["n"], facts["unit"]) == (2, 2, "iter")


def test_image_cache_bar_on_a_terminal_only(tmp_path, monkeypatch):
    from lmdlt.data.image_cache import build_image_cache
    from lmdlt.data.sources import get_source
    from lmdlt.io import provenance

    tty = FakeTerminal()
    with stderr_as(tty, monkeypatch):
        build_image_cache(get_source("digits"), 8, tmp_path / "a.h5", provenance("image_cache", {}))
    assert "\r" in tty.getvalue() and "decode digits" in tty.getvalue()
    with open(tmp_path / "cache.log", "w") as f, stderr_as(f, monkeypatch):
        build_image_cache(get_source("digits"), 8, tmp_path / "b.h5", provenance("image_cache", {}))
    assert (tmp_path / "cache.log").read_text() == ""
