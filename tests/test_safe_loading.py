"""Safe loading: a checkpoint carrying a pickled object is refused (weights-only), image paths
from label files are confined to the data root, YAML is safe-loaded."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REPO
from lmdlt.config import ConfigError, load_config
from lmdlt.data.sources import get_source
from lmdlt.models.checkpoint import CheckpointError, load_checkpoint


class Payload:
    """Unpickling this runs ``touch <marker>``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


def _evil_checkpoint(path, marker):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {"hook": Payload(marker)}}, path)


def test_checkpoint_with_a_pickled_object_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    _evil_checkpoint(tmp_path / "model.pt", marker)
    with pytest.raises(CheckpointError, match=r"refusing to load stage-1 checkpoint '.*model\.pt': it carries "
                                              r"a pickled \S+\.call, .*could run code"):
        load_checkpoint(tmp_path / "model.pt")
    assert not marker.exists()


def test_cli_refuses_a_hostile_checkpoint_with_one_line(tmp_path):
    marker = tmp_path / "pwned"
    _evil_checkpoint(tmp_path / "model.pt", marker)
    proc = subprocess.run([sys.executable, "-m", "lmdlt.cli", "extract", "--checkpoint",
                           str(tmp_path / "model.pt"), "--split", "x", "--images", "y", "--out",
                           str(tmp_path / "f.h5"), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert re.search(r"lmdlt extract: error: refusing to load stage-1 checkpoint", proc.stderr)
    assert "Traceback" not in proc.stderr and "weights_only=False" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "f.h5").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip"])
def test_unreadable_checkpoint_is_a_clear_error(tmp_path, content):
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"'.*model\.pt' is not a readable torch file"):
        load_checkpoint(tmp_path / "model.pt")


def test_tensor_file_that_is_not_a_checkpoint_is_named(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"is not an lmdlt stage-1 checkpoint"):
        load_checkpoint(tmp_path / "model.pt")


# ---- image paths from label files stay inside the data root -------------------------------

ESCAPES = ["../outside.jpg", "sub/../../outside.jpg", "/etc/hostname"]


def _jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, "JPEG")


@pytest.mark.parametrize("entry", ESCAPES)
@pytest.mark.parametrize("where", ["label map", "split file"])
def test_isic_lists_entry_escaping_the_root_is_refused(tmp_path, entry, where):
    root = tmp_path / "lists"
    root.mkdir()
    _jpeg(tmp_path / "outside.jpg")
    _jpeg(root / "ok.jpg")
    pd.DataFrame({"name": ["ok.jpg", entry], "label": [0, 1]}).to_csv(root / "dic.csv", index=False)
    np.save(root / "train.npy", np.array(["ok.jpg", entry]))
    np.save(root / "val.npy", np.array([], dtype="<U30"))
    np.save(root / "test.npy", np.array([], dtype="<U30"))
    opts = {"split_files": None} if where == "label map" else {}
    named = "dic.csv" if where == "label map" else "train.npy"
    with pytest.raises(ValueError, match=rf"{named}.*image path {re.escape(repr(entry))} "
                                         r"(escapes|must be relative to) the data root"):
        get_source("isic_lists", str(root), opts).index()


@pytest.mark.parametrize("entry", ["../outside", "/tmp"])
def test_imagefolder_split_dir_escaping_the_root_is_refused(tmp_path, entry):
    root = tmp_path / "tree"
    _jpeg(root / "train" / "a" / "x.jpg")
    _jpeg(tmp_path / "outside" / "a" / "y.jpg")
    src = get_source("imagefolder", str(root), {"split_dirs": {"train": "train", "val": entry}})
    with pytest.raises(ValueError, match=r"split_dirs entry .* (escapes|must be relative to) the data root"):
        src.index()


@pytest.mark.parametrize("column", ["Video file", "Classification"])
def test_hyper_kvasir_label_list_entry_escaping_the_root_is_refused(tmp_path, column):
    root = tmp_path / "hk"
    root.mkdir()
    ok = {"Video file": "ok-uuid", "Organ": "Lower GI", "Finding": "polyps",
          "Classification": "pathological-findings"}
    pd.DataFrame([ok, {**ok, column: "../../../../outside"}]).to_csv(root / "image-labels.csv", index=False)
    with pytest.raises(ValueError, match=r"Hyper-Kvasir label list .*image-labels\.csv.*(escapes|must be "
                                         r"relative to) the data root"):
        get_source("hyper_kvasir", str(root)).index()


def test_ham10000_image_id_escaping_the_root_is_refused(tmp_path):
    root = tmp_path / "ham"
    (root / "HAM10000_images_part_1").mkdir(parents=True)
    pd.DataFrame([{"lesion_id": "HAM_1", "image_id": "../../outside", "dx": "nv"}]).to_csv(
        root / "HAM10000_metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"HAM10000 metadata CSV .*escapes the data root"):
        get_source("ham10000", str(root)).index()


def test_isic2019_csv_entry_escaping_the_root_is_refused_before_decoding(tmp_path):
    root = tmp_path / "isic"
    root.mkdir()
    _jpeg(tmp_path / "outside.jpg")
    cols = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    pd.DataFrame([["../outside", 0, 1, 0, 0, 0, 0, 0, 0, 0]], columns=cols).to_csv(
        root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    src = get_source("isic2019", str(root), {"image_dir": "."})
    with pytest.raises(ValueError, match="escapes the data root"):
        src.images(src.index().table, 8)


# ---- YAML ---------------------------------------------------------------------------------

def test_yaml_is_only_ever_safe_loaded():
    """No yaml.load / full_load / unsafe_load / Loader= anywhere in the package or workflow."""
    unsafe = re.compile(r"yaml\.(load|full_load|unsafe_load|load_all|full_load_all|unsafe_load_all)\(|"
                        r"Loader\s*=")
    hits = []
    for path in [*(REPO / "lmdlt").rglob("*.py"), *(REPO / "workflow").rglob("*.smk"), REPO / "Snakefile"]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if unsafe.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, hits


def test_yaml_config_with_a_python_tag_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"dataset: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(cfg)
    assert not marker.exists()
