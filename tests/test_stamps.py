"""lmdlt.stamps: a params stamp is rewritten only when its content changes."""
from __future__ import annotations

import os

from lmdlt.stamps import write_params_stamp


def test_stamp_written_kept_rewritten_and_adopted(tmp_path, monkeypatch):
    out = tmp_path / "r" / "model.pt"
    stamp = write_params_stamp(str(out), '{"a": 1}')
    assert stamp == str(tmp_path / "r" / ".model.pt.params.json")
    assert open(stamp).read() == '{"a": 1}\n'
    os.utime(stamp, ns=(1, 1))
    assert write_params_stamp(str(out), '{"a": 1}') == stamp and os.stat(stamp).st_mtime_ns == 1  # same: untouched
    write_params_stamp(str(out), '{"a": 2}')
    assert open(stamp).read() == '{"a": 2}\n' and os.stat(stamp).st_mtime_ns > 1  # changed: now
    # an output from before stamps existed: its new stamp is dated like it (no re-run)
    old = tmp_path / "r" / "old.h5"
    old.write_text("x")
    os.utime(old, ns=(5_000_000_000, 5_000_000_000))
    assert os.stat(write_params_stamp(str(old), "{}")).st_mtime_ns == 5_000_000_000
    # a dry-run never writes into results: the changed stamp goes to a scratch file
    monkeypatch.chdir(tmp_path)
    scratch = write_params_stamp(str(out), '{"a": 3}', dryrun=True)
    assert scratch.startswith(os.path.join(".snakemake", "lmdlt", "params-changed"))
    assert open(stamp).read() == '{"a": 2}\n' and open(scratch).read() == '{"a": 3}\n'
