"""``lmdlt init``: an experiment config for your own images, from a look at the data.

Given an ImageFolder tree (``<root>/<class>/<image>``) or a CSV list (``path,label[,group]``,
:mod:`lmdlt.data.sources.csv_list`), this reads the index (class names and counts; no image is
decoded) and the header of every image (its size and pixel mode: cheap, no pixel decoded;
channels are 3 when any image is in colour, and mixed modes are stated in the config and the
log; a file whose header cannot be read is named, and more than 1% of them is an error),
then writes a commented
experiment config that :func:`lmdlt.config.validate_config` accepts and that runs with
``snakemake --cores N --configfile <that file>``:

* the dataset section (source, absolute root, channels);
* a split protocol and imbalance ratio the data can give, checked by building the split of
  every seed from the index (:func:`lmdlt.data.splits.build_split`), with the reason in a
  comment: ``cui`` (long-tailed training set, balanced val/test) for roughly balanced data with
  images enough per class, else ``lmd`` (the LMD reference scheme, r above the data's natural
  imbalance and at most the largest class count; per class 7:1:2), else ``random`` (all images
  7:1:2); ``grouped: true`` when the data has a group column;
* head / medium / tail groups by training-count rank (thirds);
* a CPU scale (28 px, small ResNet width 16, 20 epochs) or a GPU scale (224 px, resnet18);
* the rows to compare: stage 1 CE and RRL; stage 2 cRT, NCM, ICC and LMD's ablations (VFC,
  ICC w/o FDC, ICC w/o VFC), every ablation ``inherit: icc``.
"""
from __future__ import annotations

import io
import logging
import math
import os
import re
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

#: imbalance ratios offered, in the order of preference within a protocol
NICE_RATIOS = (2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: fewest training images the tail class may get in a constructed long-tailed split
MIN_TAIL_TRAIN = 5
#: fewest images the lmd scheme may keep of the tail class (7:1:2: 1 val, 2 test, 4+ train)
MIN_TAIL_KEPT = 10
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
log = logging.getLogger("lmdlt.init")

SCALES = {
    "cpu": {
        "image_size": 28, "threads": 1, "epochs": 20, "batch_size": 128, "lr": 0.1,
        "model": {"arch": "small_resnet", "width": 16, "blocks_per_stage": 1},
        "rrl_params": {"lambda_1": 1.0, "ema_decay": 0.99, "consistency_start_epoch": 4},
        "icc_params": {"iterations": 5, "virtual_per_class": 2000, "m_epochs": 1,
                       "m_batch_size": 256, "m_lr": 0.05, "e_lr": 0.001, "e_batch_size": 128,
                       "lambda_e": 1.0e-4},
        "crt_params": {"epochs": 30, "batch_size": 128, "lr": 0.05, "sampler": "class_balanced"},
        "cores": 2,
    },
    "gpu": {
        "image_size": 224, "threads": 4, "epochs": 100, "batch_size": 128, "lr": 0.1,
        "model": {"arch": "resnet18", "stem": "imagenet", "pretrained": None},
        "rrl_params": {},
        "icc_params": {},
        "crt_params": {"epochs": 10, "batch_size": 128, "lr": 0.05, "sampler": "class_balanced"},
        "cores": 8,
    },
}


@dataclass
class DataLook:
    """What ``init`` learnt from the data without decoding it."""

    source: str
    root: str                      # absolute
    class_names: list[str]
    counts: list[int]              # per class, in class_names order
    grouped: bool
    n_groups: int | None
    image_size: tuple[int, int]    # (width, height) most images have
    image_mode: str                # the pixel mode most images have
    channels: int                  # 3 when any image is in colour, else 1
    options: dict = field(default_factory=dict)
    index: object = field(default=None, repr=False)  # the SourceIndex read
    image_modes: dict = field(default_factory=dict)   # pixel mode -> images
    image_sizes: dict = field(default_factory=dict)   # (width, height) -> images
    unreadable: list = field(default_factory=list)    # (file, why): headers that cannot be read

    @property
    def modes_text(self) -> str:
        """``RGB 31, L 1 (mixed: grey images are repeated to 3 bands)`` or ``RGB``."""
        modes = sorted(self.image_modes.items(), key=lambda kv: (-kv[1], kv[0]))
        if len(modes) <= 1:
            return modes[0][0] if modes else self.image_mode
        kinds = {m in GREY_MODES for m, _ in modes}
        note = ("grey images are repeated to 3 bands" if self.channels == 3 and len(kinds) > 1
                else "each converted to " + ("RGB" if self.channels == 3 else "grey"))
        return ", ".join(f"{m} {n}" for m, n in modes) + f" (mixed: {note})"

    @property
    def sizes_text(self) -> str:
        """``200x150`` or ``30x40 to 600x450 (most 200x150: 30 images)``."""
        if len(self.image_sizes) <= 1:
            w, h = self.image_size
            return f"{w}x{h}"
        by_area = sorted(self.image_sizes, key=lambda s: (s[0] * s[1], s))
        (w, h), n = self.image_size, self.image_sizes[self.image_size]
        lo, hi = by_area[0], by_area[-1]
        return f"{lo[0]}x{lo[1]} to {hi[0]}x{hi[1]} (most {w}x{h}: {n} images)"

    @property
    def natural_imbalance(self) -> float:
        return max(self.counts) / min(self.counts)


@dataclass
class SplitChoice:
    section: dict
    reason: list[str]              # comment lines


def read_headers(files) -> tuple[Counter, Counter, list]:
    """(pixel modes, sizes, unreadable ``(file, why)``) of every image's header: PIL reads the
    header only, no pixel is decoded."""
    modes: Counter = Counter()
    sizes: Counter = Counter()
    bad = []
    for p in files:
        try:
            with Image.open(p) as im:
                modes[im.mode] += 1
                sizes[im.size] += 1
        except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            bad.append((str(p), str(e).splitlines()[0] if str(e) else type(e).__name__))
    return modes, sizes, bad


def look(data: str | os.PathLike) -> DataLook:
    """Index the data (ImageFolder folder or CSV file) and read every image's header."""
    from .data.sources import get_source

    p = Path(os.path.abspath(Path(data).expanduser()))
    if p.is_dir():
        source, options = "imagefolder", {}
    elif p.is_file() and p.suffix.lower() == ".csv":
        source, options = "csv", {}
    elif p.exists():
        raise ValueError(f"lmdlt init: {str(p)!r} is neither an image folder (one sub-folder per "
                         "class) nor a .csv list of path,label[,group]")
    else:
        raise FileNotFoundError(f"lmdlt init: {str(p)!r} not found")
    src = get_source(source, str(p), options)
    index = src.index()
    labels = index.table["label"].to_numpy()
    counts = np.bincount(labels, minlength=len(index.class_names)).tolist()
    if len(index.class_names) < 2:
        raise ValueError(f"{str(p)!r}: {len(index.class_names)} class found "
                         f"({index.class_names}); a classification experiment needs at least 2")
    empty = [n for n, c in zip(index.class_names, counts) if c == 0]
    if empty:
        raise ValueError(f"{str(p)!r}: classes without images: {empty}")
    from .data.sources._files import MAX_UNREADABLE_FRACTION

    modes, sizes, bad = read_headers(src.image_files(index.table))
    n = len(index.table)
    if bad:
        shown = ", ".join(f"{f!r} ({why})" for f, why in bad[:5]) + (", ..." if len(bad) > 5 else "")
        text = f"{len(bad)} of {n} image files cannot be opened as images: {shown}"
        if len(bad) > MAX_UNREADABLE_FRACTION * n or not modes:
            raise ValueError(f"lmdlt init: {text}; more than {MAX_UNREADABLE_FRACTION:.0%} of the "
                             "files: fix or remove them")
        log.warning("lmdlt init: %s (the image cache will stop at them: fix or remove them)", text)
    colour = sum(c for m, c in modes.items() if m not in GREY_MODES)
    grouped = "group" in index.table.columns
    info = DataLook(source=source, root=str(p), class_names=list(index.class_names),
                    counts=[int(c) for c in counts], grouped=grouped,
                    n_groups=int(index.table["group"].nunique()) if grouped else None,
                    image_size=max(sizes, key=lambda s: (sizes[s], s)),
                    image_mode=max(modes, key=lambda m: (modes[m], m)),
                    channels=3 if colour else 1, options=options, index=index,
                    image_modes=dict(modes), image_sizes=dict(sizes), unreadable=bad)
    if len(modes) > 1:
        log.warning("lmdlt init: the images have several pixel modes: %s -> %d channel(s)",
                    info.modes_text, info.channels)
    return info


def _feasible(index, section: dict, seeds) -> str | None:
    """None when every seed's split builds from the index, else the error."""
    from .config import validate_section
    from .data.splits import build_split

    cfg = validate_section("split", dict(section))
    quiet = logging.getLogger("lmdlt.splits")
    level, quiet.level = quiet.level, logging.ERROR  # candidates' ratio notes are not news
    try:
        for s in seeds:
            build_split(index, cfg, int(s))
    except ValueError as e:
        return str(e)
    finally:
        quiet.setLevel(level)
    return None


def _r_text(r: float) -> str:
    return f"{r:g}"


def choose_split(info: DataLook, index, seeds=(0, 1, 2)) -> SplitChoice:
    """A split protocol and ratio the data can give (checked on every seed), with the reasons."""
    counts = np.array(info.counts)
    n_max, n_min, k = int(counts.max()), int(counts.min()), len(counts)
    rho = info.natural_imbalance
    tried: list[str] = []
    base = {"grouped": True} if info.grouped else {}
    group_note = (["grouped: the data has a group column (" + str(info.n_groups) + " groups): "
                   "each group goes whole to train, val or test"] if info.grouped else [])

    # 1. roughly balanced data with images enough: cui (Cui et al. / Ju et al.: a long-tailed
    #    training set, balanced val/test). cui cannot keep groups together.
    if rho < 2 and not info.grouped:
        val = max(1, min(50, round(0.1 * n_min)))
        test = max(1, min(100, round(0.2 * n_min)))
        n_cap = n_min - val - test
        for r in sorted((r for r in NICE_RATIOS if r <= 100 and n_cap / r >= MIN_TAIL_TRAIN),
                        reverse=True):
            section = {"protocol": "cui", "imbalance_ratio": r, "val_per_class": val,
                       "test_per_class": test}
            err = _feasible(index, section, seeds)
            if err is None:
                return SplitChoice(section, [
                    f"cui: the data is roughly balanced (natural imbalance {rho:.2f}, smallest "
                    f"class {n_min} images), so a long-tailed benchmark is built from it:",
                    f"balanced val/test ({val} + {test} per class) first, then a Pareto training "
                    f"set from {n_cap} (head) down to {math.ceil(n_cap / r)} (tail) images, r = {r}",
                    f"(the largest of {', '.join(map(str, NICE_RATIOS[:6]))} leaving the tail "
                    f">= {MIN_TAIL_TRAIN} training images)."])
            tried.append(f"cui r={r}: {err}")

    # 2. the LMD reference scheme: r above the natural imbalance, at most the largest class
    #    (the tail keeps n_max / r images, at least MIN_TAIL_KEPT here)
    cands = [r for r in NICE_RATIOS if rho * 1.0001 < r <= n_max / MIN_TAIL_KEPT]
    if rho >= 2:
        pref = [r for r in cands if r >= 10] + [r for r in reversed(cands) if r < 10]
        why = (f"lmd: the data is already long-tailed (natural imbalance {rho:.2f}: {n_max} / "
               f"{n_min}); the LMD reference scheme needs r above it and keeps n_max / r of the "
               f"tail class, so r is the smallest of {', '.join(map(str, NICE_RATIOS))} that is "
               f">= 10, above {rho:.2f} and leaves the tail >= {MIN_TAIL_KEPT} images")
    else:
        pref = [r for r in reversed(cands) if r <= 100]
        why = (f"lmd: the data is roughly balanced (natural imbalance {rho:.2f}) but the cui "
               f"protocol does not fit it{' (cui cannot keep groups together)' if info.grouped else ''};"
               f" the LMD scheme subsamples every class to a Pareto profile, r the largest of "
               f"{', '.join(map(str, NICE_RATIOS[:6]))} leaving the tail >= {MIN_TAIL_KEPT} images")
    for r in pref:
        section = {"protocol": "lmd", "imbalance_ratio": r, "val_fraction": 0.1,
                   "test_fraction": 0.2, **base}
        err = _feasible(index, section, seeds)
        if err is None:
            return SplitChoice(section, [why + ";",
                                         f"then per class 7:1:2 train/val/test. Tail keeps "
                                         f"{math.ceil(n_max / r)} of {n_min} images."] + group_note)
        tried.append(f"lmd r={r}: {err}")

    # 3. every image, the data's own imbalance: lmd at r just above it keeps every image
    r = math.ceil(rho * 1.0001 * 100) / 100
    if r <= n_max:
        section = {"protocol": "lmd", "imbalance_ratio": r, "val_fraction": 0.1,
                   "test_fraction": 0.2, **base}
        err = _feasible(index, section, seeds)
        if err is None:
            return SplitChoice(section, [
                f"lmd at r = {_r_text(r)} (the data's natural imbalance {rho:.2f}, rounded up): the "
                f"classes are too small for a steeper profile (tail {n_min} images, a constructed "
                f"tail needs >= {MIN_TAIL_KEPT}), so every image is kept and split 7:1:2 per class."
            ] + group_note)
        tried.append(f"lmd r={_r_text(r)}: {err}")

    section = {"protocol": "random", "val_fraction": 0.1, "test_fraction": 0.2, **base}
    err = _feasible(index, section, seeds)
    if err is None:
        return SplitChoice(section, [
            "random: every image, per class 7:1:2 (the long-tail protocols did not fit: "
            + "; ".join(tried[-2:]) + ")"] + group_note)
    tried.append(f"random: {err}")
    raise ValueError("lmdlt init: no split protocol fits this data (images per class: "
                     f"{dict(zip(info.class_names, info.counts))}); tried " + "; ".join(tried))


def rank_groups(k: int) -> list[int]:
    """[head, medium, tail] sizes by rank: thirds (head and tail at least one class)."""
    third = max(1, k // 3)
    return [third, k - 2 * third, third]


#: column of the end-of-line comments (two spaces after a longer line)
COMMENT_COLUMN = 27
#: width of the wrapped comment lines
COMMENT_WIDTH = 94


def _yaml() -> YAML:
    """ruamel.yaml's round-trip writer: keys in insertion order, comments attached to keys."""
    y = YAML()
    y.width = 10_000  # one line per flow collection (a wrapped ICC params line hides a key)
    y.indent(mapping=2, sequence=4, offset=2)
    # null spelled out: ruamel writes an empty value, which reads as null but looks unfinished
    y.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def _flow(obj):
    """``obj`` (a dict or list) written on one line: ``{a: 1, b: 2}``, ``[0, 1]``."""
    out = CommentedMap(obj) if isinstance(obj, dict) else CommentedSeq(obj)
    out.fa.set_flow_style()
    return out


def _note(mapping: CommentedMap, key: str, text: str, indent: int) -> None:
    """An end-of-line comment on ``key`` (a key at ``indent`` spaces), aligned at
    COMMENT_COLUMN, two spaces after the value where the line is longer."""
    buf = io.StringIO()
    _yaml().dump({key: mapping[key]}, buf)
    width = indent + len(buf.getvalue().splitlines()[0])
    mapping.yaml_add_eol_comment(text, key, column=max(COMMENT_COLUMN, width + 2))


def _above(mapping: CommentedMap, key: str, lines: list[str], indent: int) -> None:
    """Comment lines above ``key`` (an empty line stays a blank line)."""
    mapping.yaml_set_comment_before_after_key(key, before="\n".join(lines), indent=indent)


def _name(p: str) -> str:
    path = Path(p)
    base = path.parent.name + "-" + path.stem if path.is_file() else path.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "my-data"
    return name if re.match(r"^[A-Za-z0-9]", name) else "data-" + name


def _header(info: DataLook, name: str, scale: str, out_name: str) -> list[str]:
    """What the data is and how to run the experiment: the file's opening comment."""
    s = SCALES[scale]
    order = sorted(range(len(info.class_names)), key=lambda c: (-info.counts[c], c))
    counts = ", ".join(f"{info.class_names[c]} {info.counts[c]}" for c in order)
    other = ("CPU: 28 px, small ResNet; the GPU scale: lmdlt init ... --scale gpu" if scale == "cpu"
             else "GPU: 224 px, torchvision resnet18; the CPU scale: lmdlt init ... --scale cpu")
    return [
        f"{name}: an experiment written by `lmdlt init` from {info.root}",
        f"{len(info.class_names)} classes, {sum(info.counts)} images (head to tail): {counts}",
        f"natural imbalance {info.natural_imbalance:.2f}; image sizes {info.sizes_text} px",
        f"pixel modes (every image's header): {info.modes_text} -> {info.channels} channel(s)",
        f"Run it (from the lmdlt repository):  snakemake --cores {s['cores']} --configfile {out_name}",
        f"Results: results/{name}/tables/results.md (every row; mean +- std over seeds) and",
        f"         results/{name}/tables/table2.md (head / medium / tail BACC).",
        f"Progress while it runs:  lmdlt status results/{name}",
        f"Every key: workflow/schemas/config.schema.yaml. Scale: {scale} ({other})",
    ]


def _dataset(info: DataLook, name: str, scale: str) -> CommentedMap:
    options = dict(info.options)
    mixed = len({m in GREY_MODES for m in info.image_modes}) > 1
    if info.channels != 3 or mixed:  # 3 is the sources' default: written only where it is news
        options["channels"] = info.channels
    ds = CommentedMap(name=name, source=info.source, root=info.root)
    _note(ds, "name", f"outputs go to results/{name}/", 2)
    _note(ds, "source", "one folder per class" if info.source == "imagefolder"
          else "a CSV of path,label[,group]", 2)
    if options:
        ds["options"] = _flow(options)
        if info.channels == 1:
            _note(ds, "options", "grey images: one channel", 2)
        elif mixed:
            _note(ds, "options", "grey and colour images: 3 (grey repeated)", 2)
    ds["image_size"] = SCALES[scale]["image_size"]
    _note(ds, "image_size", "every image resized once to this square in the image cache", 2)
    return ds


def _split(split: SplitChoice) -> CommentedMap:
    sp = CommentedMap((k, _flow(v) if isinstance(v, (dict, list)) else v)
                      for k, v in split.section.items())
    _above(sp, next(iter(sp)), textwrap.wrap(" ".join(split.reason), COMMENT_WIDTH), 2)
    return sp


def _groups(info: DataLook) -> CommentedMap:
    k = len(info.class_names)
    order = sorted(range(k), key=lambda c: (-info.counts[c], c))
    sizes = rank_groups(k)
    head = [info.class_names[c] for c in order[:sizes[0]]]
    tail = [info.class_names[c] for c in order[k - sizes[2]:]]
    groups = CommentedMap(rule="rank", sizes=_flow(sizes))
    _note(groups, "sizes", f"head {', '.join(head)}; tail {', '.join(tail)}", 2)
    return groups


def _compute(scale: str) -> CommentedMap:
    compute = CommentedMap(device="auto", threads=SCALES[scale]["threads"])
    _note(compute, "device", "CUDA when visible, else CPU", 2)
    _note(compute, "threads", "one thread per job: --cores 2 runs two jobs at once"
          if scale == "cpu" else "per job", 2)
    return compute


def _stage1(scale: str) -> CommentedMap:
    s = SCALES[scale]

    def variant(method: str, label: str, augment: dict) -> CommentedMap:
        # every row the same budget: the rows differ by method only
        return CommentedMap(method=method, label=label, model=_flow(s["model"]),
                            epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"],
                            weight_decay=0.0005, augment=_flow(augment))

    ce = variant("ce", "CE", {"crop_padding": 2, "hflip": True})
    rrl = variant("rrl", "RRL", {"crop_padding": 2})
    _note(rrl, "augment", "flips: the method's own views", 4)
    if s["rrl_params"]:
        rrl["params"] = _flow(s["rrl_params"])
        _above(rrl, "params", [
            "CPU scale (the reference: lambda_1 10, EMA decay 0.999, consistency from epoch 21 of 100):",
            "warm-up scaled to 4 of 20 epochs, a shorter teacher horizon, lambda_1 1"], 4)
    else:
        _above(rrl, "method", [
            "the method's defaults: the paper / reference values (lambda_1 10, EMA decay 0.999,",
            "consistency terms from epoch 21 of 100)"], 4)
    stage1 = CommentedMap(ce=ce, rrl=rrl)
    _note(stage1, "rrl", "LMD stage 1: relation-aware mean teacher (docs/lmd.md)", 2)
    return stage1


def _stage2(scale: str) -> CommentedMap:
    s = SCALES[scale]
    both = ["ce", "rrl"]
    stage2 = CommentedMap()
    stage2["crt"] = CommentedMap(method="crt", label="cRT", stage1=_flow(both),
                                 params=_flow(s["crt_params"]))
    stage2["ncm"] = CommentedMap(method="ncm", label="NCM", stage1=_flow(both))
    stage2["icc"] = icc = CommentedMap(method="icc", label="ICC", stage1=_flow(both))
    if s["icc_params"]:
        icc["params"] = _flow(s["icc_params"])
        _above(icc, "params", [
            "CPU scale: J 5 iterations, R 2,000 virtual features per class, rates 0.05 / 1e-3",
            "(paper: 200, 50,000, 1e-5 / 1e-6; the GPU scale uses them)"], 4)
    else:
        _above(icc, "method", [
            "the paper's scale (the method's defaults): J 200, R 50,000, lr 1e-5 / 1e-6; for a",
            "first look, e.g. params: {iterations: 20}"], 4)
    _note(stage2, "icc", 'RRL + ICC = LMD; CE + ICC = "LMD w/o RRL"', 2)
    # each ablation inherits ICC's params and changes one thing
    for key, label, params, why in (
            ("vfc", "VFC", None, '"LMD w/o ICC": one M-step on virtual features, no E-step'),
            ("icc_nofdc", "ICC w/o FDC", {"lambda_e": 0.0}, '"LMD w/o FDC": lambda_e = 0'),
            ("icc_novfc", "ICC w/o VFC", {"features": "real"},
             '"LMD w/o VFC": the M-step trains on class-balanced real features')):
        stage2[key] = CommentedMap(method="vfc" if key == "vfc" else "icc", label=label,
                                   stage1=_flow(["rrl"]), inherit="icc")
        if params:
            stage2[key]["params"] = _flow(params)
        _note(stage2, key, why, 2)
    return stage2


#: table 2's rows: (run, label), stage-1 rows and their stage-2 calibrations, LMD last
TABLE2_ROWS = (("ce", "CE"), ("ce/crt", "CE + cRT"), ("ce/ncm", "CE + NCM"), ("rrl", "RRL"),
               ("rrl/crt", "RRL + cRT"), ("ce/icc", "LMD w/o RRL (CE + ICC)"),
               ("rrl/vfc", "LMD w/o ICC (RRL + VFC)"), ("rrl/icc_novfc", "LMD w/o VFC"),
               ("rrl/icc_nofdc", "LMD w/o FDC"), ("rrl/icc", "LMD (RRL + ICC)"))


def _report(split: SplitChoice, name: str, scale: str) -> CommentedMap:
    s = SCALES[scale]
    protocol = split.section["protocol"]
    r = split.section.get("imbalance_ratio")
    title = (f"{name} ({protocol}" + (f", r = {_r_text(r)}" if r is not None and protocol != "random" else "")
             + (", grouped" if split.section.get("grouped") else "")
             + f"): {s['image_size']} px, {s['model']['arch']}, {s['epochs']} epochs")
    rows = CommentedSeq(_flow({"run": run, "label": label}) for run, label in TABLE2_ROWS)
    tables = CommentedMap(table2=CommentedMap(rows=rows))
    _note(tables, "table2", "head / medium / tail / overall BACC, mean +- std", 4)
    report = CommentedMap(title=title, lmd="rrl/icc", tables=tables)
    _note(report, "lmd", "compared with every other row (paired bootstrap on BACC)", 2)
    return report


def render(info: DataLook, split: SplitChoice, name: str, scale: str, out_name: str) -> str:
    """The experiment config as commented YAML text: built as ruamel.yaml mappings whose comments
    are attached to the keys they explain, so the writer does the quoting and the layout."""
    config = CommentedMap()
    config["dataset"] = _dataset(info, name, scale)
    config["split"] = _split(split)
    config["seeds"] = _flow([0, 1, 2])
    config["groups"] = _groups(info)
    config["compute"] = _compute(scale)
    config["stage1"] = _stage1(scale)
    config["stage2"] = _stage2(scale)
    config["report"] = _report(split, name, scale)
    config.yaml_set_start_comment("\n".join(_header(info, name, scale, out_name)) + "\n\n")
    _note(config, "groups", "head / medium / tail by training-count rank (thirds)", 0)
    sections = {"stage1": ["Stage 1: every row has the same budget (epochs, batch, lr, weight "
                           "decay, cosine schedule)."],
                "stage2": ["Stage 2 on the frozen encoders (cRT, NCM) and LMD's ICC, which also "
                           "fine-tunes the encoder.",
                           "The ablations inherit ICC's params (`inherit: icc`) and change one "
                           "thing each."]}
    for key in list(config)[1:]:  # a blank line between sections
        _above(config, key, [""] + sections.get(key, []), 0)
    buf = io.StringIO()
    _yaml().dump(config, buf)
    return buf.getvalue()


def init_experiment(data: str | os.PathLike, out: str | os.PathLike = "experiment.yaml",
                    name: str | None = None, scale: str = "cpu", force: bool = False) -> dict:
    """Look at ``data``, write the experiment config to ``out``; return the validated config."""
    from .config import validate_config

    if scale not in SCALES:
        raise ValueError(f"--scale: unknown scale {scale!r} (known: {', '.join(SCALES)})")
    out = Path(out)
    if out.exists() and not force:
        raise ValueError(f"{str(out)!r} exists; choose another --out or pass --force")
    info = look(data)
    name = name or _name(info.root)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '.', '-' (it names results/<name>/)")
    split = choose_split(info, info.index)
    text = render(info, split, name, scale, str(out))
    config = validate_config(yaml.safe_load(text))  # what we write must validate
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return config


def summary(config: dict, info: DataLook | None = None) -> str:
    """What ``lmdlt init`` prints after writing the file."""
    sp = config["split"]
    r = f" r={sp['imbalance_ratio']:g}" if sp["protocol"] != "random" else ""
    return (f"dataset {config['dataset']['name']} (source {config['dataset']['source']}), "
            f"split {sp['protocol']}{r}{' grouped' if sp.get('grouped') else ''}, "
            f"{len(config['stage1'])} stage-1 and {len(config['stage2'])} stage-2 variants")
