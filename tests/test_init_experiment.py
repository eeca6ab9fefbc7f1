"""`lmdlt init` on generated data, and the `csv` source it can point at."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, run_snakemake
from lmdlt.cli import main
from lmdlt.config import validate_config
from lmdlt.data.sources import get_source
from lmdlt.data.splits import build_split
from lmdlt.init_experiment import choose_split, init_experiment, look, rank_groups


def _png(path, side=8, grey=False, seed=0):
    rng = np.random.default_rng(seed)
    shape = (side, side) if grey else (side, side, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(path)


def image_tree(root, counts, side=8):
    for c, n in counts.items():
        for i in range(n):
            _png(root / c / f"{i:03d}.png", side, seed=i)
    return root


def csv_list(root, counts, per_group=2, grey=True, side=10):
    """A CSV of path,label,group; images under root/img; groups of ``per_group`` images."""
    rows = []
    for c, n in counts.items():
        for i in range(n):
            rel = f"img/{c}_{i:03d}.png"
            _png(root / rel, side, grey=grey, seed=i)
            rows.append({"path": rel, "label": c, "group": f"{c}-p{i // per_group}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def _check_feasible(cfg, counts):
    """The split the config names is one the data can give (and builds for every seed)."""
    sp = cfg["split"]
    n = np.array(sorted(counts.values(), reverse=True))
    natural = n[0] / n[-1]
    if sp["protocol"] == "lmd":
        assert natural < sp["imbalance_ratio"] <= n[0]
    elif sp["protocol"] == "cui":
        assert n[-1] >= sp["val_per_class"] + sp["test_per_class"] + 1
        n_cap = n[-1] - sp["val_per_class"] - sp["test_per_class"]
        assert sp["imbalance_ratio"] <= n_cap
    src = get_source(cfg["dataset"]["source"], cfg["dataset"]["root"], cfg["dataset"]["options"])
    index = src.index()
    for seed in cfg["seeds"]:
        table = build_split(index, sp, seed)
        assert set(table["split"]) == {"train", "val", "test"}
    return index


def test_imagefolder_long_tailed_gets_lmd_above_its_imbalance(tmp_path):
    counts = {"nevus": 100, "mel": 50, "bcc": 25, "df": 12}
    tree = image_tree(tmp_path / "derm", counts)
    out = tmp_path / "exp.yaml"
    cfg = init_experiment(tree, out)
    text = out.read_text()
    again = validate_config(yaml.safe_load(text))  # the file itself validates
    assert again["dataset"] == cfg["dataset"]
    assert cfg["dataset"]["source"] == "imagefolder"
    assert cfg["dataset"]["root"] == str(tree)
    assert cfg["dataset"]["name"] == "derm"
    assert cfg["dataset"]["image_size"] == 28
    assert "channels" not in cfg["dataset"]["options"]  # RGB: the default 3
    index = _check_feasible(cfg, counts)
    assert dict(zip(index.class_names, np.bincount(index.table["label"]))) == counts
    assert cfg["split"]["protocol"] == "lmd" and cfg["split"]["imbalance_ratio"] == 10
    assert "grouped" not in cfg["split"]
    # classes and counts are in the header comment, head to tail
    assert "nevus 100, mel 50, bcc 25, df 12" in text and "natural imbalance 8.33" in text
    assert cfg["groups"] == {"rule": "rank", "sizes": [1, 2, 1], "many": 100, "few": 20}
    assert list(cfg["stage1"]) == ["ce", "rrl"]
    assert {"crt", "ncm", "icc", "vfc", "icc_nofdc", "icc_novfc"} <= set(cfg["stage2"])
    for abl in ("vfc", "icc_nofdc", "icc_novfc"):
        assert cfg["stage2"][abl]["inherit"] == "icc"
    # inherit resolved: the ablation shares ICC's settings except the one it names
    assert cfg["stage2"]["icc_nofdc"]["params"]["lambda_e"] == 0.0
    assert cfg["stage2"]["icc_nofdc"]["params"]["iterations"] == cfg["stage2"]["icc"]["params"]["iterations"]
    assert cfg["stage1"]["ce"]["model"]["arch"] == "small_resnet"
    assert cfg["stage1"]["ce"]["epochs"] == 20


def test_balanced_imagefolder_gets_cui_with_balanced_val_test(tmp_path):
    counts = {"a": 40, "b": 40, "c": 41}
    tree = image_tree(tmp_path / "bal", counts)
    cfg = init_experiment(tree, tmp_path / "exp.yaml", name="bal-lt", scale="gpu")
    assert cfg["dataset"]["name"] == "bal-lt"
    assert cfg["split"]["protocol"] == "cui"
    assert cfg["split"]["imbalance_ratio"] == 5  # n_cap 28 (40 - 4 - 8): tail >= 5 images
    _check_feasible(cfg, counts)
    assert cfg["dataset"]["image_size"] == 224
    assert cfg["stage1"]["rrl"]["model"]["arch"] == "resnet18"
    assert cfg["groups"]["sizes"] == [1, 1, 1]


def test_csv_with_groups_gets_a_grouped_split_and_one_channel(tmp_path):
    counts = {"benign": 60, "malignant": 20, "rare": 8}
    csv = csv_list(tmp_path / "study", counts)
    info = look(csv)
    assert info.source == "csv" and info.grouped and info.n_groups == 44
    assert info.channels == 1 and info.image_size == (10, 10)
    out = tmp_path / "exp.yaml"
    assert main(["init", str(csv), "--out", str(out)]) == 0
    cfg = validate_config(yaml.safe_load(out.read_text()))
    assert cfg["dataset"]["source"] == "csv"
    assert cfg["dataset"]["root"] == str(csv)
    assert cfg["dataset"]["options"] == {"channels": 1}
    assert cfg["split"]["grouped"] is True
    index = _check_feasible(cfg, counts)
    assert index.class_names == ["benign", "malignant", "rare"]
    assert np.bincount(index.table["label"]).tolist() == [60, 20, 8]
    table = build_split(index, cfg["split"], 0)
    assert (table.groupby("group")["split"].nunique() == 1).all()  # no patient in two splits
    # an existing file is not overwritten without --force
    assert main(["init", str(csv), "--out", str(out)]) == 1
    assert main(["init", str(csv), "--out", str(out), "--force"]) == 0


def test_too_small_a_class_is_a_clear_error(tmp_path):
    tree = image_tree(tmp_path / "tiny", {"a": 30, "b": 2})
    with pytest.raises(ValueError, match="no split protocol fits"):
        init_experiment(tree, tmp_path / "exp.yaml")
    assert not (tmp_path / "exp.yaml").exists()


@pytest.mark.parametrize("k,sizes", [(2, [1, 0, 1]), (3, [1, 1, 1]), (7, [2, 3, 2]), (10, [3, 4, 3])])
def test_rank_groups_are_thirds(k, sizes):
    assert rank_groups(k) == sizes and sum(sizes) == k


def test_choose_split_prefers_the_smallest_nice_ratio_above_the_imbalance(tmp_path):
    counts = {"a": 200, "b": 80, "c": 40, "d": 25}   # natural 8; 10 and 20 keep a tail >= 10
    tree = image_tree(tmp_path / "t", counts, side=4)
    info = look(tree)
    choice = choose_split(info, info.index)
    assert choice.section == {"protocol": "lmd", "imbalance_ratio": 10, "val_fraction": 0.1,
                              "test_fraction": 0.2}
    assert "natural imbalance 8.00" in " ".join(choice.reason)


# --- the csv source ---------------------------------------------------------------------------

def _write(path, text):
    path.write_text(text)
    return path


def test_csv_source_paths_relative_absolute_and_folder_root(tmp_path):
    _png(tmp_path / "a" / "x.png")
    _png(tmp_path / "elsewhere" / "y.png")
    _write(tmp_path / "a" / "labels.csv",
           f"file,dx\nx.png,1\n{tmp_path / 'elsewhere' / 'y.png'},10\n")
    opts = {"path_column": "file", "label_column": "dx"}
    for root in (tmp_path / "a" / "labels.csv", tmp_path / "a"):  # the file, or its folder
        src = get_source("csv", str(root), opts)
        index = src.index()
        assert index.class_names == ["1", "10"]
        assert "group" not in index.table.columns
        assert src.images(index.table, 4).shape == (2, 4, 4, 3)


def test_csv_source_errors_name_the_file_and_row(tmp_path):
    _png(tmp_path / "x.png")
    csv = tmp_path / "l.csv"
    cases = [
        ("path,label\nx.png,a\nmissing.png,b\n", r"row 2 \(line 3\): image file .*missing.png.* not found"),
        ("path,label\nx.png,\n", r"row 1 \(line 2\): empty label"),
        ("path,labels\nx.png,a\n", r"lacks column\(s\) \['label'\]"),
        ("path,label,group\nx.png,a,\n", r"row 1 \(line 2\): empty group"),
        ("path,label\n../x.png,a\n", r"row 1 \(line 2\): .*escapes the data root"),
        ("path,label\nx.png,a\nx.png,b\n", r"listed twice \(row 1 \(line 2\) and row 2 \(line 3\)\)"),
    ]
    for text, pattern in cases:
        _write(csv, text)
        with pytest.raises((ValueError, FileNotFoundError), match=pattern) as e:
            get_source("csv", str(csv)).index()
        assert str(csv) in str(e.value)
    _write(csv, "path,label\nx.png,a\n")
    with pytest.raises(ValueError, match=r"row 1 \(line 2\): label 'a' is not in"):
        get_source("csv", str(csv), {"class_names": ["b", "c"]}).index()
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['patient'\]"):
        get_source("csv", str(csv), {"group_column": "patient"}).index()


def test_csv_group_column_by_name(tmp_path):
    _png(tmp_path / "x.png")
    _png(tmp_path / "y.png")
    csv = _write(tmp_path / "l.csv", "path,label,patient\nx.png,a,p1\ny.png,b,p2\n")
    index = get_source("csv", str(csv), {"group_column": "patient"}).index()
    assert index.table["group"].tolist() == ["p1", "p2"]


# --- end to end -------------------------------------------------------------------------------

@pytest.mark.slow
def test_init_then_snakemake_configfile_writes_the_results_table(tmp_path):
    counts = {"a": 24, "b": 12, "c": 8, "d": 4}
    tree = image_tree(tmp_path / "data" / "mine", counts)
    work = tmp_path / "work"
    work.mkdir()
    exp = work / "experiment.yaml"
    assert main(["init", str(tree), "--out", str(exp)]) == 0
    # a tiny scale as an overlay file (Snakemake's --config reads nested values as strings)
    tiny = {
        "seeds": [0],
        "dataset": {"image_size": 8},
        "stage1": {"ce": {"epochs": 2, "batch_size": 16},
                   "rrl": {"epochs": 2, "batch_size": 16, "params": {"consistency_start_epoch": 1}}},
        "stage2": {"crt": {"params": {"epochs": 2, "batch_size": 16}},
                   "icc": {"params": {"iterations": 1, "virtual_per_class": 20,
                                      "m_batch_size": 32, "e_batch_size": 16}}},
    }
    (work / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    run_snakemake(work, "--cores", "2", "--configfile", str(exp), str(work / "tiny.yaml"))
    root = work / "results" / "mine"
    table = pd.read_csv(root / "tables" / "results.csv")
    assert {"CE", "RRL", "CE + cRT", "RRL + ICC", "RRL + ICC w/o FDC"} <= set(table["row"])
    assert (table["n_seeds"] == 1).all()
    assert (root / "tables" / "table2.md").stat().st_size > 100
    from lmdlt.status import collect
    jobs = collect(root)
    assert jobs and all(j.state == "done" for j in jobs)
    assert any(j.stage == "stage1" and j.progress == "epoch 2/2" for j in jobs)


def test_init_on_a_colour_tree_whose_first_image_is_grey_uses_3_channels(tmp_path, caplog):
    """Every image's header decides: one grey image (first when sorted) among colour ones."""
    tree = image_tree(tmp_path / "mixed", {"a": 40, "b": 20, "c": 12})
    _png(tree / "a" / "000.png", grey=True)  # sorted first
    with caplog.at_level("WARNING"):
        info = look(tree)
        cfg = init_experiment(tree, tmp_path / "exp.yaml", name="mixed")
    assert info.channels == 3 and info.image_modes == {"RGB": 71, "L": 1}
    assert cfg["dataset"]["options"].get("channels", 3) == 3
    text = (tmp_path / "exp.yaml").read_text()
    assert "pixel modes (every image's header): RGB 71, L 1 (mixed: grey images are repeated to 3 bands)" in text
    assert "several pixel modes" in caplog.text and "RGB 71, L 1" in caplog.text


def test_init_names_images_whose_header_cannot_be_read(tmp_path, caplog):
    tree = image_tree(tmp_path / "t", {"a": 120, "b": 60, "c": 30})
    (tree / "b" / "zz_bad.png").write_bytes(b"not an image")
    with caplog.at_level("WARNING"):
        info = look(tree)
    assert [p.endswith("zz_bad.png") for p, _ in info.unreadable] == [True]
    assert "1 of 211 image files cannot be opened" in caplog.text and "zz_bad.png" in caplog.text
    for i in range(3):  # 4 of 214: above 1%
        (tree / "c" / f"zz_bad{i}.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"4 of 214 image files cannot be opened.*more than 1%"):
        look(tree)


def test_init_writes_valid_yaml_with_its_comments_for_an_awkward_path(tmp_path):
    """A root YAML would misread unquoted (': ', ' #', quotes) is quoted by the writer; each
    section keeps the comment that explains it; inline comments stand two spaces clear."""
    counts = {"nevus": 100, "mel": 50, "bcc": 25, "df": 12}
    tree = image_tree(tmp_path / "derm: #1 'x'", counts)
    out = tmp_path / "exp.yaml"
    cfg = init_experiment(tree, out, name="derm")
    text = out.read_text()
    assert yaml.safe_load(text)["dataset"]["root"] == str(tree) == cfg["dataset"]["root"]
    lines = text.splitlines()

    def line(start):
        return next(ln for ln in lines if ln.startswith(start))

    assert line("  source: imagefolder").endswith("  # one folder per class")
    assert line("  image_size: 28").endswith("# every image resized once to this square in the image cache")
    # the split's reason (why this protocol and ratio is feasible) sits above its keys
    split_at = lines.index("split:")
    assert lines[split_at + 1].startswith("  # lmd: the data is already long-tailed")
    assert line("  sizes: [1, 2, 1]").endswith("# head nevus; tail df")
    assert "# Stage 1: every row has the same budget" in text
    assert line("    augment: {crop_padding: 2}").endswith("}  # flips: the method's own views")
    assert line("  icc_nofdc:").endswith('# "LMD w/o FDC": lambda_e = 0')
    for ln in lines:  # an inline comment: two spaces after the value
        if " #" in ln and not ln.lstrip().startswith("#") and "'" not in ln:
            assert "  # " in ln, ln
