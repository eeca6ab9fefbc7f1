"""No silent wrong results: image decoding of every pixel mode PIL opens, shell-quoted
paths, the default Snakemake profile, config-file syntax errors, and data checks that run before
the image cache is built. docs/reliability.md lists what each test pins."""
from __future__ import annotations

import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lmdlt.data.image_cache import build_image_cache
from lmdlt.data.sources import get_source
from lmdlt.data.sources._files import IMAGE_EXTENSIONS, load_image

H, W = 4, 6  # not square: a missed or wrong EXIF transpose changes the shape

# ------------------------------------------------------------------ 1. image decoding per mode


def _png_by_hand(path, arr: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written without PIL (PIL cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _rng(seed=0):
    return np.random.default_rng(seed)


def _grey(ref):
    """What a grey reference looks like in a 3-channel cache."""
    return np.repeat(ref[..., None], 3, axis=-1)


def _r(x):
    return np.rint(x).astype(np.int64)


# Each case writes one file and returns the reference (H, W, 3) pixels computed with numpy only
# (and the tolerance: exact unless PIL's own colour-space conversion is involved).
def case_L(path):
    a = _rng().integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(a).save(path.with_suffix(".png"))
    return _grey(a), 0


def case_1bit(path):
    a = _rng().integers(0, 2, (H, W)).astype(bool)
    Image.fromarray(a).convert("1").save(path.with_suffix(".png"))
    return _grey(a * 255), 0


def case_I16(path):  # the X-ray / DICOM-export case: was all 255
    a = _rng().integers(0, 65536, (H, W)).astype(np.uint16)
    a[0, :3] = [0, 65535, 257 * 100]
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    im.save(path.with_suffix(".png"))
    return _grey(_r(a / 257)), 0


def case_I16B(path):
    a = _rng(1).integers(0, 65536, (H, W)).astype(np.uint16)
    Image.frombytes("I;16B", (W, H), a.astype(">u2").tobytes()).save(path.with_suffix(".tif"))
    with Image.open(path.with_suffix(".tif")) as im:
        assert im.mode == "I;16B"
    return _grey(_r(a / 257)), 0


def case_I32(path):  # 32-bit integer TIFF: scaled by its 32-bit depth
    a = _rng(2).integers(0, 2**31 - 1, (H, W)).astype(np.int32)
    Image.fromarray(a).save(path.with_suffix(".tif"))
    return _grey(_r(a.astype(np.float64) * 255 / (2**31 - 1))), 0  # PIL writes signed 32-bit


def case_I_pgm16(path):  # a 16-bit PGM opens as mode I holding 16-bit data
    a = _rng(3).integers(0, 65536, (H, W)).astype(np.uint16)
    path.with_suffix(".pgm").write_bytes(f"P5\n{W} {H}\n65535\n".encode() + a.astype(">u2").tobytes())
    with Image.open(path.with_suffix(".pgm")) as im:
        assert im.mode == "I"
    return _grey(_r(a / 257)), 0


def case_F(path):
    a = _rng(4).random((H, W)).astype(np.float32)
    a[0, :2] = [0.0, 1.0]
    Image.fromarray(a).save(path.with_suffix(".tif"))
    return _grey(_r(a.astype(np.float64) * 255)), 0


def case_P(path):
    pal = _rng(5).integers(0, 256, (256, 3), dtype=np.uint8)
    idx = _rng(6).integers(0, 256, (H, W), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.tobytes())
    im.save(path.with_suffix(".png"))
    return pal[idx].astype(np.int64), 0


def case_P_transparency(path):
    pal = _rng(7).integers(0, 256, (16, 3), dtype=np.uint8)
    alpha = _rng(8).integers(0, 256, 16, dtype=np.uint8)
    alpha[0], alpha[1] = 0, 255
    idx = _rng(9).integers(0, 16, (H, W), dtype=np.uint8)
    idx[0, :2] = [0, 1]
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.tobytes())
    im.save(path.with_suffix(".png"), transparency=alpha.tobytes())
    return _r(pal[idx].astype(np.float64) * alpha[idx][..., None] / 255), 0


def case_LA(path):
    la = _rng(10).integers(0, 256, (H, W, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(path.with_suffix(".png"))
    return _grey(_r(la[..., 0].astype(np.float64) * la[..., 1] / 255)), 0


def case_RGBA(path):
    a = _rng(11).integers(0, 256, (H, W, 4), dtype=np.uint8)
    a[0, 0, 3], a[0, 1, 3] = 0, 255
    Image.fromarray(a, "RGBA").save(path.with_suffix(".png"))
    return _r(a[..., :3].astype(np.float64) * a[..., 3:] / 255), 0


def case_CMYK(path):
    a = _rng(12).integers(0, 256, (H, W, 4), dtype=np.uint8)
    Image.fromarray(a, "CMYK").save(path.with_suffix(".tif"))
    c, k = a[..., :3].astype(np.float64), a[..., 3:].astype(np.float64)
    return _r((255 - c) * (255 - k) / 255), 1


def case_YCbCr(path):
    a = _rng(13).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(a, "YCbCr").save(path.with_suffix(".tif"))
    with Image.open(path.with_suffix(".tif")) as im:
        assert im.mode == "YCbCr"
    y, cb, cr = (a[..., i].astype(np.float64) for i in range(3))
    rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128)], axis=-1)
    return _r(np.clip(rgb, 0, 255)), 1


def case_RGB16(path):  # PIL opens 16-bit RGB as 8-bit from the high byte: within 1 of v / 257
    a = _rng(14).integers(0, 65536, (H, W, 3)).astype(np.uint16)
    _png_by_hand(path.with_suffix(".png"), a, color_type=2)
    return _r(a / 257), 1


def case_EXIF_rotated(path):  # stored 6 x 4, orientation 6 (rotate 90 deg clockwise): shown 4 x 6
    a = _rng(15).integers(0, 256, (W, H, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path.with_suffix(".png"), exif=exif)
    return np.rot90(a, k=-1).astype(np.int64), 0


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def cached_pixels(root, channels=3, size=None, tmp=None):
    src = get_source("imagefolder", str(root), {"channels": channels})
    out = (tmp or root.parent) / "images.h5"
    build_image_cache(src, size, out, {"stage": "image_cache"})
    import h5py

    with h5py.File(out, "r") as f:
        return f["images"][:].astype(np.int64)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cached_pixels_match_a_reference_conversion_per_mode(name, tmp_path):
    (tmp_path / "data" / "c0").mkdir(parents=True)
    ref, atol = CASES[name](tmp_path / "data" / "c0" / "img")
    (path,) = (tmp_path / "data" / "c0").iterdir()
    if path.suffix in IMAGE_EXTENSIONS:
        got = cached_pixels(tmp_path / "data")[0]
    else:  # a format ImageFolder does not index (PGM): the decoder the cache uses, directly
        got = load_image(path, None).astype(np.int64)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= atol, f"{name}: max difference {np.abs(got - ref).max()}"


def test_16bit_grey_resized_and_in_one_channel(tmp_path):
    """The 16-bit case through a resize and a 1-channel cache: never 255 everywhere."""
    (tmp_path / "data" / "c0").mkdir(parents=True)
    Image.fromarray(np.full((10, 12), 40000, np.uint16)).save(tmp_path / "data" / "c0" / "a.png")
    got = cached_pixels(tmp_path / "data", channels=1, size=4)
    assert got.shape == (1, 4, 4, 1) and (got == round(40000 / 257)).all()


def test_colour_to_one_channel_is_the_luma(tmp_path):
    (tmp_path / "data" / "c0").mkdir(parents=True)
    a = _rng(16).integers(0, 256, (H, W, 4), dtype=np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "data" / "c0" / "a.png")
    rgb = a[..., :3].astype(np.float64) * a[..., 3:] / 255
    rgb = np.rint(rgb)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    got = cached_pixels(tmp_path / "data", channels=1)[0, ..., 0]
    assert np.abs(got - luma).max() <= 1


@pytest.mark.parametrize("what", ["LAB", "F_out_of_range", "F_nan", "I_negative"])
def test_an_image_without_a_defined_conversion_is_an_error_naming_the_file(what, tmp_path):
    folder = tmp_path / "data" / "c0"
    folder.mkdir(parents=True)
    path = folder / "bad.tif"
    if what == "LAB":
        Image.new("LAB", (W, H), (50, 10, 10)).save(path)
    elif what == "F_out_of_range":
        Image.fromarray(np.full((H, W), 3.5, np.float32)).save(path)
    elif what == "F_nan":
        Image.fromarray(np.full((H, W), np.nan, np.float32)).save(path)
    else:
        Image.fromarray(np.full((H, W), -5, np.int32)).save(path)
    with pytest.raises(ValueError, match="bad.tif") as e:
        cached_pixels(tmp_path / "data")
    assert "corrupt" not in str(e.value)


# ------------------------------------------------------------------ workflow-level helpers

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from conftest import REPO, run_snakemake, snakemake_bin, write_config  # noqa: E402


def image_tree(root: Path, counts: dict[str, int], bad: str | None = None) -> Path:
    """An ImageFolder tree of 8 x 8 PNGs, ``counts`` images per class; ``bad``: a class whose
    first image is a corrupt file."""
    rng = _rng(42)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i:03d}.png")
    if bad is not None:
        (root / bad / "000.png").write_bytes(b"not a png")
    return root


def folder_config(root: Path, results_dir: str = "results", **split) -> dict:
    return {
        "results_dir": results_dir,
        "dataset": {"name": "tiny", "source": "imagefolder", "root": str(root), "image_size": 8},
        "split": {"protocol": "random", "val_fraction": 0.2, "test_fraction": 0.2, **split},
        "seeds": [0],
        "groups": {"rule": "rank", "sizes": [1, 1, 1]},
        "compute": {"threads": 1},
        "stage1": {"ce": {"method": "ce", "label": "CE", "epochs": 1, "batch_size": 16,
                          "model": {"arch": "small_resnet", "width": 8, "blocks_per_stage": 1}}},
        "stage2": {"ncm": {"method": "ncm", "label": "NCM", "stage1": ["ce"]}},
    }


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


# ------------------------------------------------------------------ 2. paths with spaces, non-ASCII


@pytest.mark.slow
def test_workflow_runs_with_a_space_and_non_ascii_in_results_dir_and_data_root(tmp_path):
    data = image_tree(tmp_path / "data röot 1", {"a": 12, "b": 12, "c": 12})
    before = files_under(data)
    work = tmp_path / "wörk dir"
    work.mkdir()
    results = "my résults"
    write_config(work, folder_config(data, results))
    run_snakemake(work, "--cores", "2")
    table = work / results / "tiny" / "tables" / "results.md"
    assert "| CE + NCM |" in table.read_text() and "| CE |" in table.read_text()
    stray = {p for p in files_under(work) if p.parts[0] not in (results, ".snakemake", "config.yaml")}
    assert not stray, f"files written outside results_dir: {sorted(stray)}"
    assert files_under(data) == before, "files written into the data root"
    assert set(os.listdir(tmp_path)) == {"data röot 1", "wörk dir"}


# ------------------------------------------------------------------ 3. the default profile applies


def snakemake_with_default_profile(work: Path, *args: str) -> subprocess.CompletedProcess:
    """The snakemake CLI as a user runs it: no --workflow-profile, so the default applies."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SNAKEMAKE_PROFILE", None)
    cmd = [snakemake_bin(), "-s", str(REPO / "Snakefile"), "--directory", str(work), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def test_default_profile_is_where_snakemake_looks_for_it():
    """With the Snakefile at the top level, Snakemake reads profiles/default (a
    workflow/profiles/default would silently not be applied)."""
    assert (REPO / "Snakefile").is_file()
    profile = REPO / "profiles" / "default" / "config.yaml"
    assert profile.is_file()
    assert not (REPO / "workflow" / "profiles" / "default").exists()


def test_default_profile_applies_a_failing_job_prints_its_log(tmp_path):
    """show-failed-logs and printshellcmds come from profiles/default/config.yaml: a job that
    fails (a corrupt image in the cache job) shows its log's error and its command (without
    the profile Snakemake prints only the log's path)."""
    data = image_tree(tmp_path / "data", {"a": 6, "b": 6, "c": 6}, bad="b")
    work = tmp_path / "work"
    work.mkdir()
    write_config(work, folder_config(data))
    proc = snakemake_with_default_profile(work, "--cores", "1", "--until", "image_cache")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "is corrupt or not an image" in out, out[-3000:]  # the log, printed by show-failed-logs
    assert "lmdlt cache --dataset" in out  # printshellcmds


# ------------------------------------------------------------------ 4. config-file syntax errors


BAD_YAML = "seeds: [0, 1\nstage1:\n  ce: {method: ce}\n"


@pytest.mark.xfail(strict=True, reason="Snakemake parses --configfile before the Snakefile runs and "
                   "drops the YAML error's position; see docs/reliability.md")
def test_snakemake_configfile_syntax_error_names_file_line_and_column(tmp_path):
    (tmp_path / "bad.yaml").write_text(BAD_YAML)
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "bad.yaml"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "bad.yaml" in out and "line 2" in out and "column 7" in out, out[-2000:]


def test_snakemake_verbose_shows_the_configfile_syntax_errors_position(tmp_path):
    """What docs/reliability.md tells a user whose --configfile does not parse: Snakemake's own
    message drops the position (snakemake/common/configfile.py re-raises the YAMLError as a bare
    WorkflowError), but `--verbose` prints the chained YAML error with file, line and column."""
    (tmp_path / "bad.yaml").write_text(BAD_YAML)
    proc = run_snakemake(tmp_path, "-n", "--verbose", "--configfile", str(tmp_path / "bad.yaml"),
                         check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r'in ".*bad\.yaml", line 2, column 7', out), out[-2000:]


# ------------------------------------------------------------------ 5. data checks before the cache

from lmdlt.data.longtail import cui_train_counts, lmd_keep_counts  # noqa: E402


def test_a_ratio_the_data_cannot_give_is_an_error_naming_it_and_the_maximum():
    with pytest.raises(ValueError, match=r"r=1e\+12 is more than the data can give.*1 <= r <= 129"):
        cui_train_counts(129, 1.0e12, 10)
    with pytest.raises(ValueError, match=r"r=1000 is more than the data can give.*5\.00 <= r <= 500"):
        lmd_keep_counts([500, 300, 100], 1000)
    assert cui_train_counts(129, 129, 3) == [129, 12, 1]  # the largest ratio the data can give
    lmd_keep_counts([500, 300, 100], 500)  # r = n_max: allowed


@pytest.mark.parametrize("counts, message", [
    ({"a": 10, "b": 10, "c": 1}, "class 'c' has 1 images: too few to split"),
    ({"a": 10, "b": 10, "c": 0}, r"classes without images: \['c'\]"),
])
def test_an_empty_or_one_image_class_is_caught_from_the_index(tmp_path, counts, message):
    data = image_tree(tmp_path / "data", counts)
    cfg = folder_config(data)
    from lmdlt.config import validate_config
    from lmdlt.data.splits import check_data

    cfg = validate_config(cfg)
    with pytest.raises(ValueError, match=message):
        check_data(cfg["dataset"], cfg["split"], cfg["seeds"])


def test_impossible_ratio_stops_the_run_before_any_job(tmp_path):
    write_config(tmp_path, {"dataset": {"name": "d", "source": "digits", "image_size": 8},
                            "split": {"protocol": "cui", "imbalance_ratio": 1.0e12, "val_per_class": 15,
                                      "test_per_class": 30},
                            "seeds": [0], "groups": {"rule": "rank", "sizes": [3, 4, 3]},
                            "stage1": {"ce": {"method": "ce", "epochs": 1}}, "stage2": {}})
    proc = run_snakemake(tmp_path, "--cores", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "imbalance_ratio r=1e+12 is more than the data can give" in out and "r <= 129" in out
    # nothing was built: no image cache, no split (the parse may leave params and data stamps,
    # tiny JSON)
    assert "rule image_cache" not in out and not list((tmp_path / "results").rglob("images_*.h5"))
    assert not list((tmp_path / "results").rglob("*.parquet")) and not list((tmp_path / "results").rglob("*.h5"))


def test_a_one_image_class_stops_the_run_before_the_image_cache_is_built(tmp_path):
    data = image_tree(tmp_path / "data", {"a": 10, "b": 10, "c": 1})
    work = tmp_path / "work"
    work.mkdir()
    write_config(work, folder_config(data))
    proc = run_snakemake(work, "--cores", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "before any image is decoded" in out and "class 'c' has 1 images" in out, out[-2000:]
    assert "rule image_cache" not in out and not list((work / "results").rglob("images_*.h5"))


def test_lmdlt_validate_config_names_file_line_and_column(tmp_path):
    """The documented way to locate a syntax error that Snakemake reports without a position."""
    (tmp_path / "bad.yaml").write_text(BAD_YAML)
    proc = subprocess.run([str(Path(sys.executable).with_name("lmdlt")), "validate-config",
                           str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "bad.yaml" in proc.stderr and "line 2, column 7" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ 6. the cache property without .snakemake/

import copy  # noqa: E402
import shutil  # noqa: E402

from conftest import dry_run_jobs, read_config  # noqa: E402

TINY = {
    "dataset": {"name": "digits-lt", "source": "digits", "image_size": 8},
    "split": {"protocol": "cui", "imbalance_ratio": 50, "val_per_class": 15, "test_per_class": 30},
    "seeds": [0],
    "groups": {"rule": "rank", "sizes": [3, 4, 3]},
    "compute": {"threads": 1},
    "stage1": {"ce": {"method": "ce", "label": "CE", "epochs": 1, "batch_size": 64}},
    "stage2": {"crt": {"method": "crt", "label": "cRT", "params": {"epochs": 1}}},
}
# the report's jobs that re-run when any row's metrics change (tables, their HTML pages, the
# per-class figure, the provenance page listing every metric file)
REPORT_JOBS = {"results_table": 1, "results_table_html": 1, "per_class_recall_figure": 1,
               "report_provenance": 1, "all": 1}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 1-seed digits run (CE 1 epoch, cRT 1 epoch), fully run."""
    work = tmp_path_factory.mktemp("tiny")
    write_config(work, TINY)
    run_snakemake(work, "--cores", "2")
    return work


def fresh_clone(run: Path, dest: Path, change=None) -> Path:
    """`cp -a results` into a directory without .snakemake/ (results on shared storage)."""
    dest.mkdir()
    shutil.copytree(run / "results", dest / "results", symlinks=True)  # copy2: mtimes kept
    cfg = copy.deepcopy(read_config(run))
    if change:
        change(cfg)
    write_config(dest, cfg)
    return dest


def results_state(work: Path) -> dict:
    return {str(p.relative_to(work)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in (work / "results").rglob("*") if p.is_file()}


@pytest.mark.slow
def test_fresh_clone_over_existing_results_schedules_exactly_the_right_jobs(tiny_run, tmp_path):
    """Without .snakemake/ metadata: nothing to do as is; a new stage-2 variant, a new seed, a
    changed stage-2 parameter each schedule exactly their jobs and the report (the stage-1
    checkpoint and features are not rebuilt); a dry-run writes nothing into results."""
    assert dry_run_jobs(fresh_clone(tiny_run, tmp_path / "same")) == {}

    def add_variant(cfg):
        cfg["stage2"]["ncm"] = {"method": "ncm"}
    work = fresh_clone(tiny_run, tmp_path / "variant", add_variant)
    before = results_state(work)
    assert dry_run_jobs(work) == {"train_stage2": 1, **REPORT_JOBS}
    assert results_state(work) == before, "a dry-run wrote into results"

    def add_seed(cfg):
        cfg["seeds"] = [0, 1]
    assert dry_run_jobs(fresh_clone(tiny_run, tmp_path / "seed", add_seed)) == {
        "split": 1, "train_stage1": 1, "extract_features": 1, "train_stage2": 1, **REPORT_JOBS}

    def change_param(cfg):
        cfg["stage2"]["crt"]["params"]["epochs"] = 2
    work = fresh_clone(tiny_run, tmp_path / "param", change_param)
    expected = {"train_stage2": 1, **REPORT_JOBS}
    assert dry_run_jobs(work) == expected
    # run it: then nothing to do, also in a fresh clone of that; back to the old value re-runs
    run_snakemake(work, "--cores", "2")
    assert dry_run_jobs(work) == {}
    again = tmp_path / "param_clone"
    again.mkdir()
    shutil.copytree(work / "results", again / "results", symlinks=True)
    shutil.copy(work / "config.yaml", again / "config.yaml")
    assert dry_run_jobs(again) == {}
    write_config(again, read_config(tiny_run))
    assert dry_run_jobs(again) == expected


# ------------------------------------------------------------------ 7. truncated or corrupt artefacts

from lmdlt.io import ArtefactError, open_h5, read_json  # noqa: E402
from lmdlt.models.checkpoint import CheckpointError, load_checkpoint  # noqa: E402


def truncate(path: Path) -> Path:
    """Keep the first half of a file's bytes (an interrupted copy or a full disk)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("artefact, rule, command", [
    ("seed0/stage1/ce/model.pt", "train_stage1",
     "extract --checkpoint {f} --split {split} --images {images} --device cpu --out {out}"),
    ("seed0/stage1/ce/features.h5", "extract_features",
     "train-stage2 --features {f} --checkpoint {ckpt} --split {split} --params {crt} --seed 0 --out {out}"),
    ("seed0/stage1/ce/features.h5", "extract_features", "evaluate --predictions {f} --manifest {split} --groups {groups} --out {out}"),
    ("seed0/stage2/ce/crt/predictions.h5", "train_stage2",
     "evaluate --predictions {f} --manifest {split} --groups {groups} --out {out}"),
])
def test_a_truncated_artefact_is_an_error_naming_the_file_and_the_fix(tiny_run, tmp_path, artefact, rule, command):
    import json
    import shlex

    root = tiny_run / "results" / "digits-lt"
    f = truncate(Path(shutil.copy(root / artefact, tmp_path / Path(artefact).name)))
    fields = {"f": f, "split": root / "seed0" / "split.parquet", "ckpt": root / "seed0/stage1/ce/model.pt",
              "images": next((tiny_run / "results" / "image_cache").rglob("images_8px.h5")),
              "out": tmp_path / "out" / "x", "crt": json.dumps(TINY["stage2"]["crt"]),
              "groups": json.dumps(TINY["groups"])}
    args = [a.format(**{k: str(v) for k, v in fields.items()}) for a in shlex.split(command)]
    proc = subprocess.run([str(Path(sys.executable).with_name("lmdlt")), *args], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = proc.stderr
    assert "Traceback" not in err, err[-2000:]
    assert repr(str(f)) in err and "truncated or corrupt" in err, err
    assert "delete it and re-run snakemake" in err and f"--forcerun {f}" in err and f"rule {rule}" in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_truncated_h5_and_json_and_checkpoint_name_the_file(tmp_path):
    """The same without a pipeline run: every reader of each artefact kind."""
    import h5py
    import torch

    from lmdlt.features import FeatureSet
    from lmdlt.metrics import evaluate_file
    from lmdlt.report.stats import read_test_predictions

    h5 = tmp_path / "predictions.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["provenance"] = "{}"
        f.create_dataset("test/logits", data=np.random.default_rng(0).random((2000, 10)))
    truncate(h5)
    for read in (FeatureSet, read_test_predictions,
                 lambda p: evaluate_file(p, {"rule": "rank", "sizes": [3, 4, 3]}, tmp_path / "m.json")):
        with pytest.raises(ArtefactError, match=r"'.*predictions\.h5' is truncated or corrupt.*"
                           r"rule train_stage2.*snakemake --forcerun .*predictions\.h5"):
            read(h5)
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(FileNotFoundError):
        with open_h5(tmp_path / "absent.h5"):
            pass

    js = tmp_path / "metrics.json"
    js.write_text('{"metrics": {"bacc": 0.5, "per_cl')
    with pytest.raises(ArtefactError, match=r"'.*metrics\.json' is truncated or corrupt.*rule extract_features, train_stage2 or train_stage2_encoder"):
        read_json(js)

    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(5000)}, "meta": {}}, ckpt)
    truncate(ckpt)
    with pytest.raises(CheckpointError, match=r"'.*model\.pt' is not a readable torch file, truncated or "
                       r"corrupt.*rule train_stage1.*--forcerun .*model\.pt"):
        load_checkpoint(ckpt)


# ------------------------------------------------------------------ 8. provenance closes the loop


@pytest.mark.slow
def test_a_checkpoint_of_another_stage1_variant_is_refused_by_extraction(tiny_run, tmp_path):
    """A model.pt of another stage-1 variant (other width), same split, dropped at
    stage1/ce/model.pt: extraction for the CE variant names both files and both hashes."""
    import json

    from lmdlt.config import validate_config
    from lmdlt.io import sha256_json

    root = tiny_run / "results" / "digits-lt"
    split = root / "seed0" / "split.parquet"
    images = next((tiny_run / "results" / "image_cache").rglob("images_8px.h5"))
    lmdlt = str(Path(sys.executable).with_name("lmdlt"))
    variants = validate_config(copy.deepcopy({**TINY, "stage1": {
        **TINY["stage1"], "ce_w24": {**TINY["stage1"]["ce"], "model": {"width": 24}}}}))["stage1"]
    other = tmp_path / "stage1" / "ce" / "model.pt"
    subprocess.run([lmdlt, "train-stage1", "--split", str(split), "--images", str(images), "--params",
                    json.dumps(variants["ce_w24"]), "--seed", "0", "--threads", "1", "--device", "cpu",
                    "--out", str(other)], check=True, capture_output=True)
    ce = json.dumps(variants["ce"], sort_keys=True)
    out = tmp_path / "stage1" / "ce" / "features.h5"

    def extract(ckpt, *extra):
        return subprocess.run([lmdlt, "extract", "--checkpoint", str(ckpt), "--split", str(split),
                               "--images", str(images), "--device", "cpu", "--threads", "1",
                               "--out", str(out), *extra], capture_output=True, text=True)

    proc = extract(other, "--stage1-params", ce)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    got = torch_load_hash(other)
    assert str(other) in proc.stderr and str(out) in proc.stderr, proc.stderr
    assert got in proc.stderr and sha256_json(json.loads(ce)) in proc.stderr, proc.stderr
    assert "'width': 24" in proc.stderr and not out.exists()
    # the right checkpoint passes; by hand without --stage1-params nothing is checked (--help says so)
    assert extract(root / "seed0" / "stage1" / "ce" / "model.pt", "--stage1-params", ce).returncode == 0
    assert extract(other).returncode == 0
    helptext = subprocess.run([lmdlt, "extract", "--help"], capture_output=True, text=True).stdout
    assert "--stage1-params" in helptext and "not checked" in helptext


def torch_load_hash(path: Path) -> str:
    from lmdlt.models.checkpoint import safe_torch_load

    return safe_torch_load(path)["meta"]["provenance"]["config_hash"]
