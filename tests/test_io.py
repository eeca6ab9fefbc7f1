import pytest

from lmdlt.io import atomic_path, provenance, read_json, sha256_json, write_json


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_path_keeps_the_old_file_until_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_json_and_provenance(tmp_path):
    prov = provenance("stage2", {"b": 1, "a": [1, 2]}, {"features": "abc"}, seed=3)
    assert prov["config_hash"] == sha256_json({"a": [1, 2], "b": 1})
    assert prov["seed"] == 3 and prov["parents"] == {"features": "abc"}
    assert prov["code_version"].startswith("0.")
    write_json(tmp_path / "p.json", prov)
    assert read_json(tmp_path / "p.json") == prov


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".out.h5.tmp-{dead}"
    stale.write_bytes(b"half-written by a killed job")
    with atomic_path(tmp_path / "out.h5") as tmp:
        tmp.write_bytes(b"complete")
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
