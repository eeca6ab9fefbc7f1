"""The data is a key of the cache: a change of the images re-runs the image cache, the split and
everything below them (Snakemake dry-runs on a tiny ImageFolder tree), and a cache or split
whose recorded data differs from the data is never read."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import dry_run_jobs, run_snakemake
from PIL import Image

from lmdlt.cli import main
from lmdlt.data.image_cache import load_split_images

CLASSES = {"a": 14, "b": 10, "c": 8}
CONFIG = {
    "dataset": {"name": "tiny", "source": "imagefolder", "root": "data", "image_size": 8},
    "split": {"protocol": "random", "val_fraction": 0.2, "test_fraction": 0.2},
    "seeds": [0],
    "groups": {"rule": "rank", "sizes": [1, 1, 1]},
    "compute": {"threads": 1},
    "stage1": {"ce": {"method": "ce", "label": "CE", "epochs": 1, "batch_size": 16}},
    "stage2": {"crt": {"method": "crt", "label": "cRT", "params": {"epochs": 1}}},
}


def png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)


def tree(root: Path, counts=CLASSES) -> Path:
    seed = 0
    for c, n in counts.items():
        for i in range(n):
            png(root / c / f"{i:02d}.png", seed)
            seed += 1
    return root


def change_data(root: Path) -> None:
    """The issue's change: 5 images deleted, 10 added, a class folder renamed."""
    for i in range(5):
        (root / "a" / f"{i:02d}.png").unlink()
    for i in range(10):
        png(root / "b" / f"new{i:02d}.png", 1000 + i)
    (root / "c").rename(root / "c_renamed")


# ------------------------------------------------------------------- through Snakemake


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny ImageFolder experiment whose every output exists and is up to date: the image
    cache and the split really built (`lmdlt cache`, `lmdlt split`), the outputs below them
    placeholders marked up to date (`snakemake --touch`), so dry-runs show what re-runs."""
    work = tmp_path_factory.mktemp("made")
    tree(work / "data")
    (work / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    listing = run_snakemake(work, "-n", "--cores", "1")
    text = listing.stdout + listing.stderr
    cache = re.search(r"results/image_cache/imagefolder-[0-9a-f]+/images_8px\.h5", text).group(0)
    cwd = os.getcwd()
    os.chdir(work)  # the config's root is relative to the working directory, as in a run
    try:
        dataset = json.dumps({"source": "imagefolder", "root": "data", "options": {}})
        assert main(["-q", "cache", "--dataset", dataset, "--size", "8", "--out", cache]) == 0
        assert main(["-q", "split", "--dataset", dataset, "--split", json.dumps(CONFIG["split"]),
                     "--seed", "0", "--out", "results/tiny/seed0/split.parquet"]) == 0
    finally:
        os.chdir(cwd)
    for line in text.splitlines():
        if line.startswith("    output: "):
            for out in line.split(": ", 1)[1].split(", "):
                p = work / out
                if not p.exists():
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text("placeholder")
    run_snakemake(work, "--cores", "1", "--touch")
    assert dry_run_jobs(work) == {}, "the made experiment is not up to date"
    return work


def copy_of(made: Path, tmp_path: Path, fresh_clone: bool = False) -> Path:
    """A copy (file times kept) of the made experiment; ``fresh_clone``: without .snakemake/."""
    work = tmp_path / "work"
    shutil.copytree(made, work, symlinks=True,
                    ignore=shutil.ignore_patterns(".snakemake") if fresh_clone else None)
    return work


ALL_JOBS = {"image_cache": 1, "split": 1, "train_stage1": 1, "extract_features": 1, "train_stage2": 1}


@pytest.mark.parametrize("fresh_clone", [False, True], ids=["same-clone", "fresh-clone"])
def test_a_data_change_reruns_the_image_cache_the_split_and_everything_below(made, tmp_path,
                                                                          fresh_clone):
    work = copy_of(made, tmp_path, fresh_clone)
    results = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (work / "results").rglob("*")
               if p.is_file()}
    change_data(work / "data")
    jobs = dry_run_jobs(work)
    assert {k: jobs.get(k) for k in ALL_JOBS} == ALL_JOBS
    assert jobs.get("results_table") == 1  # the table (its rows name the renamed class)
    # the data stamps are beside the image cache and the split; a dry-run writes nothing into
    # results (its changed stamps go under .snakemake/)
    assert len([p for p in results if p.name.endswith(".data.json")]) == 2
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (work / "results").rglob("*")
            if p.is_file()} == results


def test_an_image_rewritten_in_place_reruns_the_cache(made, tmp_path):
    """Same size, same name, new pixels: the file's modification time is in the fingerprint."""
    work = copy_of(made, tmp_path)
    img = work / "data" / "b" / "03.png"
    size = img.stat().st_size
    png(img, 777)
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    assert img.stat().st_size == size
    jobs = dry_run_jobs(work)
    assert jobs.get("image_cache") == 1 and jobs.get("split") == 1


def test_forcerun_image_cache_alone_after_a_data_change_reruns_the_split_too(made, tmp_path):
    """`--forcerun image_cache` after a data change: the split depends on the same fingerprint,
    so it re-runs too (a cache and a split of different data would fail in stage 1)."""
    work = copy_of(made, tmp_path)
    change_data(work / "data")
    proc = run_snakemake(work, "-n", "--quiet", "rules", "--forcerun", "image_cache")
    text = proc.stdout + proc.stderr
    assert re.search(r"^image_cache\s+1$", text, re.M)
    assert re.search(r"^split\s+1$", text, re.M), text[-3000:]


def test_adding_seed_1_after_a_data_change_reruns_seed_0_too(made, tmp_path):
    work = copy_of(made, tmp_path)
    change_data(work / "data")
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["seeds"] = [0, 1]
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    jobs = dry_run_jobs(work)
    assert jobs.get("image_cache") == 1  # the new seed's split must find its images in the cache
    assert jobs.get("split") == 2 and jobs.get("train_stage1") == 2  # seed 0 is stale too


# ------------------------------------------------------------------- readers refuse stale data


def _cache_and_split(work: Path, fingerprint: str | None = None) -> tuple[Path, Path, str]:
    ds = {"source": "imagefolder", "root": str(work / "data"), "options": {}}
    if fingerprint:
        ds["fingerprint"] = fingerprint
    dataset = json.dumps(ds)
    cache, split = work / "images.h5", work / "split.parquet"
    assert main(["-q", "cache", "--dataset", dataset, "--size", "8", "--out", str(cache)]) == 0
    assert main(["-q", "split", "--dataset", dataset, "--split", json.dumps(CONFIG["split"]),
                 "--seed", "0", "--out", str(split)]) == 0
    return cache, split, dataset


def test_a_cache_and_split_of_data_that_changed_since_are_refused(tmp_path):
    tree(tmp_path / "data")
    cache, split, _ = _cache_and_split(tmp_path)
    load_split_images(split, cache)  # the same data: read
    png(tmp_path / "data" / "a" / "extra.png", 99)  # one image added
    with pytest.raises(ValueError, match=r"changed since.*re-run snakemake"):
        load_split_images(split, cache)


def test_a_cache_and_a_split_of_different_data_are_refused_naming_both(tmp_path):
    """What `--forcerun image_cache` alone made after a data change: a new cache, an old split."""
    tree(tmp_path / "data")
    cache, split, dataset = _cache_and_split(tmp_path)
    (tmp_path / "data" / "a" / "00.png").unlink()
    assert main(["-q", "cache", "--dataset", dataset, "--size", "8", "--out", str(cache)]) == 0
    with pytest.raises(ValueError, match=r"image cache .*images\.h5 was built from other data .*"
                                         r"than split .*split\.parquet"):
        load_split_images(split, cache)


def test_a_cache_read_where_the_raw_data_is_not_is_compared_with_its_split_only(tmp_path):
    tree(tmp_path / "data")
    cache, split, _ = _cache_and_split(tmp_path)
    shutil.rmtree(tmp_path / "data")  # a cache and split copied to a machine without the images
    data = load_split_images(split, cache)
    assert sum(len(data[s][1]) for s in ("train", "val", "test")) == 32


def test_content_fingerprint_ignores_file_times_but_not_bytes(tmp_path):
    tree(tmp_path / "data")
    cache, split, _ = _cache_and_split(tmp_path, fingerprint="content")
    img = tmp_path / "data" / "a" / "03.png"
    os.utime(img, ns=(1, 1))  # a copy that lost its file times
    load_split_images(split, cache)
    png(img, 4242)  # other bytes
    with pytest.raises(ValueError, match="changed since"):
        load_split_images(split, cache)


def test_fingerprint_stat_and_content_see_what_the_split_uses():
    """Unit check of what the fingerprint covers (a hand-made source)."""
    import pandas as pd

    from lmdlt.data.fingerprint import compute_fingerprint
    from lmdlt.data.sources import Source, SourceIndex

    class Fake(Source):
        name = "fake"

        def __init__(self, table, names):
            super().__init__()
            self._index = (table, names)

        def index(self):
            return SourceIndex(self._index[0].copy(), list(self._index[1]))

        def images(self, table, size):
            raise NotImplementedError

    base = pd.DataFrame({"id": ["x", "y", "z"], "label": [0, 1, 1], "group": ["p1", "p1", "p2"]})
    fp = compute_fingerprint(Fake(base, ["A", "B"])).sha256
    assert compute_fingerprint(Fake(base, ["A", "B"])).sha256 == fp  # stable
    variants = {
        "label": base.assign(label=[0, 0, 1]),
        "group": base.assign(group=["p1", "p2", "p2"]),
        "order": base.iloc[[1, 0, 2]].reset_index(drop=True),  # the split draws in index order
        "id": base.assign(id=["x", "y", "w"]),
    }
    for what, table in variants.items():
        assert compute_fingerprint(Fake(table, ["A", "B"])).sha256 != fp, what
    assert compute_fingerprint(Fake(base, ["A", "C"])).sha256 != fp, "class renamed"
    assert compute_fingerprint(Fake(base, ["A", "B"]), "content").sha256 != fp  # mode is part of it


def test_a_missing_data_stamp_is_adopted_only_by_outputs_that_record_no_other_data(tmp_path):
    """Outputs from before data stamps existed keep their date (no re-run); an output that
    records another fingerprint gets a stamp dated now (it re-runs)."""
    from lmdlt.stamps import stamp_is_newer, write_stamp

    out = tmp_path / "split.parquet"
    out.write_text("x")
    os.utime(out, ns=(5_000_000_000, 5_000_000_000))
    stamp = write_stamp(str(out), '{"sha256": "a"}', "data", adopt=lambda outputs: True)
    assert stamp.endswith(".split.parquet.data.json") and not stamp_is_newer(str(out), "data")
    os.remove(stamp)
    write_stamp(str(out), '{"sha256": "a"}', "data", adopt=lambda outputs: False)
    assert stamp_is_newer(str(out), "data")


def test_fingerprint_covers_the_class_list_and_the_shared_data_files(tmp_path):
    """The class names list itself (a class without images renamed, which no row shows) and the
    files many images are decoded from (a MedMNIST .npz rewritten with other pixels, labels
    kept: no row changes either)."""
    import pandas as pd

    from lmdlt.data.fingerprint import compute_fingerprint
    from lmdlt.data.sources import Source, SourceIndex, get_source

    class Listed(Source):
        name = "listed"

        def __init__(self, names):
            super().__init__()
            self.names = names

        def index(self):
            return SourceIndex(pd.DataFrame({"id": ["x", "y"], "label": [0, 1]}), list(self.names))

        def images(self, table, size):
            raise NotImplementedError

    a = compute_fingerprint(Listed(["A", "B", "C"])).sha256
    assert compute_fingerprint(Listed(["A", "B", "D"])).sha256 != a

    rng = np.random.default_rng(0)
    arrays = {}
    for fold, n in (("train", 6), ("val", 2), ("test", 2)):
        arrays[f"{fold}_images"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        arrays[f"{fold}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    np.savez(tmp_path / "m.npz", **arrays)
    src = get_source("medmnist", str(tmp_path), {"file": "m.npz"})
    before = compute_fingerprint(src, "content").sha256
    arrays["train_images"] = 255 - arrays["train_images"]
    np.savez(tmp_path / "m.npz", **arrays)
    assert compute_fingerprint(get_source("medmnist", str(tmp_path), {"file": "m.npz"}), "content").sha256 != before
