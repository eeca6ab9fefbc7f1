"""CLI manners: --version, one error line, help on every option, no "± 0.00" for one seed."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pandas as pd

import lmdlt
from lmdlt.cli import build_parser
from lmdlt.report.tables import to_markdown


def test_version_prints_the_package_version():
    out = subprocess.run([sys.executable, "-m", "lmdlt.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"lmdlt {lmdlt.__version__}"


def test_an_error_is_one_line():
    out = subprocess.run([sys.executable, "-m", "lmdlt.cli", "show-split", "/nonexistent/split.parquet"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lmdlt show-split: error:"), out.stderr


def test_every_subcommand_and_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "options without help: " + ", ".join(missing)


def _table(n_seeds: int) -> pd.DataFrame:
    return pd.DataFrame([{"row": "CE", "stage1": "ce", "stage2": "", "bacc_mean": 0.5, "bacc_std": 0.0,
                          "bacc_n": n_seeds, "n_seeds": n_seeds}])


def test_one_seed_shows_no_spread():
    assert "± 0.00" not in to_markdown(_table(1), ["bacc"], "t", "c")
    assert "50.00 ± 0.00" in to_markdown(_table(2), ["bacc"], "t", "c")
