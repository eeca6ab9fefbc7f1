"""The experiment configs in workflow/experiments/: valid, and a Snakemake dry-run of each on a
data root given on the command line (a small fake tree for datasets whose images are not in
../shared/data)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_snakemake
from PIL import Image

from lmdlt.config import load_config
from lmdlt.data.splits import group_overlap, read_manifest

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "workflow" / "experiments"
CONFIGS = sorted(EXPERIMENTS.glob("*.yaml"))
OVERLAYS = sorted((EXPERIMENTS / "overlays").glob("isic2019-lt-r*.yaml"))


def jpeg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path, "JPEG")


def fake_isic2019(root: Path) -> None:
    cols = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    rows = []
    for i, c in enumerate(cols[1:-1]):
        rows.append([f"ISIC_{i:07d}"] + [1.0 if k == c else 0.0 for k in cols[1:]])
        jpeg(root / "ISIC_2019_Training_Input" / f"ISIC_{i:07d}.jpg", i)
    pd.DataFrame(rows, columns=cols).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)


def fake_hyper_kvasir(root: Path) -> None:
    pd.DataFrame([{"Video file": "u1", "Organ": "Lower GI", "Finding": "polyps",
                   "Classification": "pathological-findings"}]).to_csv(root / "image-labels.csv", index=False)
    jpeg(root / "labeled-images" / "lower-gi-tract" / "pathological-findings" / "polyps" / "u1.jpg")


def fake_isic_archive(root: Path) -> None:
    jpeg(root / "ISIC_0062513.jpg")


FAKE = {"isic2019": fake_isic2019, "hyper_kvasir": fake_hyper_kvasir, "isic_lists": fake_isic_archive}


def test_there_are_the_four_experiments_and_overlays():
    names = {p.stem for p in CONFIGS}
    assert {"isic2019-lt", "isic-archive-lt", "hyper-kvasir", "ham10000-lt"} <= names
    assert {p.stem for p in OVERLAYS} >= {"isic2019-lt-r300", "isic2019-lt-r500"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_experiment_config_is_complete_and_valid(path):
    raw = yaml.safe_load(path.read_text())
    # fully defined: nothing may be inherited from config.yaml (dataset, split, stages, groups)
    for key in ("dataset", "split", "seeds", "groups", "stage1", "stage2", "report"):
        assert key in raw, f"{path.name} lacks {key}"
    assert raw["dataset"]["root"], f"{path.name}: dataset.root must be set (overridable)"
    cfg = load_config(path)
    assert cfg["dataset"]["name"]


def _override(data_root: Path, source: str, shared: Path | None) -> list[str]:
    ds = {"root": str(data_root)}
    if source == "isic_lists":
        ds["options"] = {"lists": str(shared / "isic_lt_splits" / "isic_archive_14class")}
    return ["--config", "dataset=" + json.dumps(ds)]


def _dry_run(tmp_path: Path, configfiles: list[Path], shared_data: Path,
             work_name: str = "work") -> tuple[str, dict]:
    cfg = load_config(configfiles[0])
    source = cfg["dataset"]["source"]
    if source == "ham10000":
        root = shared_data / "ham10000"  # the real images are there
    else:
        root = tmp_path / "data"
        if not root.exists():  # a second dry-run in the same tmp_path shares the fake tree
            root.mkdir()
            FAKE[source](root)
    work = tmp_path / work_name
    work.mkdir()
    # as when run from the repository root: the default config.yaml is there too, and must not
    # leak its variants into the experiment
    (work / "config.yaml").write_text((REPO / "config.yaml").read_text())
    proc = run_snakemake(work, "-n", "-p", "--configfile", *map(str, configfiles),
                         *_override(root, source, shared_data))
    out = proc.stdout + proc.stderr
    assert "This was a dry-run" in out
    assert not any(p.name not in (".snakemake", "config.yaml") for p in work.iterdir()), \
        "a dry-run wrote outputs"
    return out, {"root": str(root)}


@pytest.mark.realdata
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_experiment_dry_run(tmp_path, shared_data, path):
    out, info = _dry_run(tmp_path, [path], shared_data)
    cfg = load_config(path)
    name = cfg["dataset"]["name"]
    # every stage is scheduled, for every seed, with the root given on the command line
    for rule in ("image_cache", "split", "train_stage1", "extract_features", "results_table"):
        assert re.search(rf"^{rule}\s+\d+$", out, re.M), f"{rule} not scheduled for {path.name}"
    n_stage1 = int(re.search(r"^train_stage1\s+(\d+)$", out, re.M).group(1))
    assert n_stage1 == len(cfg["stage1"]) * len(cfg["seeds"]), "config.yaml's variants leaked in"
    # the image cache is keyed by the source (and its root/options) and size, not the experiment
    assert re.search(rf"results/image_cache/{cfg['dataset']['source']}-[0-9a-f]{{10}}/"
                     rf"images_{cfg['dataset']['image_size']}px\.h5", out)
    for seed in cfg["seeds"]:
        assert f"results/{name}/seed{seed}/split.parquet" in out
    assert f'"root": "{info["root"]}"' in out
    assert f'"protocol": "{cfg["split"]["protocol"]}"' in out
    # the paper-dataset experiments feed the paper's tables, with its numbers beside ours
    if cfg["dataset"]["source"] != "ham10000":
        assert cfg["report"]["paper"] and cfg["report"]["tables"], f"{path.name} declares no paper table"
        n_tables = int(re.search(r"^paper_table\s+(\d+)$", out, re.M).group(1))
        assert n_tables == len(cfg["report"]["tables"])
        assert re.search(r"^train_stage2_encoder\s+\d+$", out, re.M)  # LMD's ICC rows


# each HAM10000 overlay's scale: (image size, encoder width, arch)
HAM_OVERLAY_SCALE = {"baselines-ham10000.yaml": ("16px", 8, "small_resnet"),
                     "lmd-ham10000.yaml": ("28px", 16, "small_resnet")}


@pytest.mark.realdata
@pytest.mark.parametrize("overlay", sorted(HAM_OVERLAY_SCALE))
def test_ham10000_overlays_dry_run(tmp_path, shared_data, overlay):
    out, _ = _dry_run(tmp_path, [EXPERIMENTS / "ham10000-lt.yaml", EXPERIMENTS / "overlays" / overlay],
                      shared_data)
    base = yaml.safe_load((EXPERIMENTS / "ham10000-lt.yaml").read_text())
    over = yaml.safe_load((EXPERIMENTS / "overlays" / overlay).read_text())
    encoders = set(base["stage1"]) | set(over["stage1"])  # Snakemake deep-merges the overlay
    n_stage1 = int(re.search(r"^train_stage1\s+(\d+)$", out, re.M).group(1))
    assert n_stage1 == len(encoders) * len(base["seeds"])
    size, width, arch = HAM_OVERLAY_SCALE[overlay]  # the overlay's CPU scale
    assert f"images_{size}.h5" in out and f'"width": {width}' in out and f'"arch": "{arch}"' in out


@pytest.mark.realdata
def test_lmd_ham10000_at_paper_scale_on_a_gpu_dry_run(tmp_path, shared_data):
    """The GPU overlay on top of the CPU one: 224 px, resnet18 for every encoder, 100 epochs,
    the methods' paper defaults in stage 2; every row is still scheduled."""
    out, _ = _dry_run(tmp_path, [EXPERIMENTS / "ham10000-lt.yaml", EXPERIMENTS / "overlays" / "lmd-ham10000.yaml",
                                 EXPERIMENTS / "overlays" / "lmd-ham10000-gpu.yaml"], shared_data)
    assert "images_224px.h5" in out and "images_28px.h5" not in out
    assert '"arch": "small_resnet"' not in out and out.count('"arch": "resnet18"') >= 2
    assert '"epochs": 100' in out and '"epochs": 20' not in out
    assert '"iterations": 200' in out and '"virtual_per_class": 50000' in out
    n_encoder = int(re.search(r"^train_stage2_encoder\s+(\d+)$", out, re.M).group(1))
    assert n_encoder == 6 * 3  # ce/icc, rrl/icc and its four ICC ablations, 3 seeds


@pytest.mark.realdata
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.stem)
def test_isic2019_overlays_change_r_and_folder_only(tmp_path, shared_data, overlay):
    out, _ = _dry_run(tmp_path, [EXPERIMENTS / "isic2019-lt.yaml", overlay], shared_data)
    over = yaml.safe_load(overlay.read_text())
    r, name = over["split"]["imbalance_ratio"], over["dataset"]["name"]
    assert f'"imbalance_ratio": {r}' in out and f"results/{name}/seed0/split.parquet" in out
    assert "results/isic2019-lt-r100/" not in out  # (the combined Table 3 names it, as it should)
    assert '"protocol": "lmd"' in out and '"source": "isic2019"' in out  # the rest is the base config
    # r = 300 / 500 decode nothing of their own: the same images as r = 100, the same cache file
    base, _ = _dry_run(tmp_path, [EXPERIMENTS / "isic2019-lt.yaml"], shared_data, work_name="base")
    cache = re.compile(r"results/image_cache/isic2019-[0-9a-f]{10}/images_\d+px\.h5")
    assert set(cache.findall(out)) == set(cache.findall(base)) != set()


@pytest.mark.realdata
def test_ham10000_split_rule_runs_lesion_grouped(tmp_path, shared_data):
    """The real rule on the real metadata: a lesion-grouped manifest, no lesion in two splits."""
    work = tmp_path / "work"
    work.mkdir()
    target = "results/ham10000-lt/seed0/split.parquet"
    run_snakemake(work, target, "--cores", "1", "--configfile", str(EXPERIMENTS / "ham10000-lt.yaml"),
                  "--config", "dataset=" + json.dumps({"root": str(shared_data / "ham10000")}))
    table, meta = read_manifest(work / target)
    assert group_overlap(table)["groups_in_several_splits"] == 0
    assert table.groupby("split").size().sum() == 9423
    assert meta["provenance"]["config"]["split"]["grouped"] is True


def test_digits_sweeps_overlay_fills_tables_4_5_and_the_sweep_figures():
    """config.yaml + overlays/lmd-sweeps-digits.yaml (merged as Snakemake merges --configfile):
    Table 4's lambda_e sweep, all four E/M combinations of Table 5, and several points on each
    sweep figure (Figs. 3, 6, 7)."""
    from snakemake.utils import update_config

    from lmdlt.config import validate_config
    from lmdlt.report.spec import figure_specs, table_specs

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(cfg, yaml.safe_load((EXPERIMENTS / "overlays" / "lmd-sweeps-digits.yaml").read_text()))
    cfg = validate_config(cfg)
    paths = {"stage1_metrics": "r/seed{seed}/stage1/{s1}/metrics.json",
             "stage2_metrics": "r/seed{seed}/stage2/{s1}/{s2}/metrics.json",
             "features": "r/seed{seed}/stage1/{s1}/features.h5",
             "predictions": "r/seed{seed}/stage2/{s1}/{s2}/predictions.h5",
             "stage2_benchmark": "r/benchmarks/seed{seed}/stage2_{s1}_{s2}.tsv",
             "split": "r/seed{seed}/split.parquet"}
    tables, figures = table_specs(cfg, paths), figure_specs(cfg, paths)
    assert [r["run"] for r in tables["table4"]["rows"]] == [
        "rrl/icc_le1e-2", "rrl/icc_le1e-3", "rrl/icc", "rrl/icc_le1e-5", "rrl/icc_nofdc"]
    assert all(r["run"] for r in tables["table5"]["rows"]) and len(tables["table5"]["rows"]) == 4
    xs = {name: [[p["x"] for p in s["points"]] for s in spec["series"]]
          for name, spec in figures.items() if "series" in spec}
    assert xs["fig3"][0] == [10, 100, 500, 10000]         # R of VFC (500: ICC's M-step, inherited)
    assert xs["fig6"] == [[1, 3, 5, 20]]                   # J of ICC
    assert xs["fig7"] == [[0.3, 1.0, 3.0, 10.0]]           # lambda_1 of RRL


RESULTS = [EXPERIMENTS / "ham10000-lt.yaml", EXPERIMENTS / "overlays" / "lmd-ham10000.yaml",
           EXPERIMENTS / "overlays" / "results-ham10000.yaml"]


def _jobs(out: str, rule: str) -> int:
    m = re.search(rf"^{rule}\s+(\d+)$", out, re.M)
    return int(m.group(1)) if m else 0


@pytest.mark.realdata
def test_results_page_experiment_dry_run(tmp_path, shared_data):
    """The results page's experiment: every row of the page's table is scheduled, every stage-1 row at one budget
    (16 px, width 8, 20 epochs, batch 128, lr 0.1), and the page is an output."""
    from snakemake.utils import update_config

    from lmdlt.config import validate_config

    out, _ = _dry_run(tmp_path, RESULTS, shared_data)
    cfg = yaml.safe_load(RESULTS[0].read_text())
    for f in RESULTS[1:]:  # merged as Snakemake merges --configfile
        update_config(cfg, yaml.safe_load(f.read_text()))
    validate_config(cfg)
    encoders = cfg["stage1"]
    assert len(encoders) == 18 and _jobs(out, "train_stage1") == 18 * 3
    budgets = {(v["epochs"], v["batch_size"], v["lr"], v["model"]["width"]) for v in encoders.values()}
    assert budgets == {(20, 128, 0.1, 8)}, "every stage-1 row shares one budget"
    assert cfg["stage1"]["rrl"]["params"]["consistency_start_epoch"] == 4  # 21 of 100, scaled
    assert "images_16px.h5" in out and "images_28px.h5" not in out and _jobs(out, "results_page") == 1
    assert "docs/results.md" in out
    rows = cfg["report"]["tables"]["table2"]["rows"]
    assert len(rows) == 30 and {"ce/crt", "rrl/icc", "iccl/kd_rebalance", "ce/logit_adjust"} <= {r["run"] for r in rows}


@pytest.mark.realdata
def test_results_page_naive_curve_and_gpu_configs_dry_run(tmp_path, shared_data):
    naive, _ = _dry_run(tmp_path, [*RESULTS, EXPERIMENTS / "overlays" / "results-ham10000-naive.yaml"],
                        shared_data, "naive")
    assert "results/ham10000-lt-naive/seed0/split.parquet" in naive and '"grouped": false' in naive
    assert _jobs(naive, "results_page") == 0
    assert _jobs(naive, "train_stage1") == 18 * 2  # seeds 0 and 1 (what fits a session)
    curve, _ = _dry_run(tmp_path, [RESULTS[0], EXPERIMENTS / "overlays" / "results-ham10000-curve.yaml"],
                        shared_data, "curve")
    # the 40-epoch curve and the four shorter schedules the page compares, at the page's scale
    assert _jobs(curve, "train_stage1") == 5 and "images_16px.h5" in curve
    assert all(f'"epochs": {e}' in curve for e in (10, 15, 20, 30, 40)) and '"width": 8' in curve
    gpu, _ = _dry_run(tmp_path, [*RESULTS, EXPERIMENTS / "overlays" / "results-ham10000-gpu.yaml"],
                      shared_data, "gpu")
    assert "images_224px.h5" in gpu and '"arch": "small_resnet"' not in gpu
    assert _jobs(gpu, "train_stage1") == 18 * 3 and '"iterations": 200' in gpu
    assert "results/ham10000-lt/results-gpu.md" in gpu
