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

import json
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


def _flow(obj) -> str:
    if isinstance(obj, str) and re.fullmatch(r"[A-Za-z0-9_./][A-Za-z0-9_./ +-]*", obj) \
            and yaml.safe_load(obj) == obj and not obj.endswith(" "):
        return obj  # plain where YAML reads it back as this string
    if not isinstance(obj, (dict, list, tuple)):
        return json.dumps(obj)  # a scalar in JSON form is YAML too (no document-end marker)
    return yaml.safe_dump(obj, default_flow_style=True, sort_keys=False, width=10_000).strip()


def _name(p: str) -> str:
    path = Path(p)
    base = path.parent.name + "-" + path.stem if path.is_file() else path.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "my-data"
    return name if re.match(r"^[A-Za-z0-9]", name) else "data-" + name


def render(info: DataLook, split: SplitChoice, name: str, scale: str, out_name: str) -> str:
    """The experiment config as commented YAML text."""
    s = SCALES[scale]
    k = len(info.class_names)
    order = sorted(range(k), key=lambda c: (-info.counts[c], c))
    sizes = rank_groups(k)
    head = [info.class_names[c] for c in order[:sizes[0]]]
    tail = [info.class_names[c] for c in order[k - sizes[2]:]]
    counts = ", ".join(f"{info.class_names[c]} {info.counts[c]}" for c in order)
    options = dict(info.options)
    mixed = len({m in GREY_MODES for m in info.image_modes}) > 1
    if info.channels != 3 or mixed:
        options["channels"] = info.channels
    model = dict(s["model"])
    bs = s["batch_size"]
    epochs = s["epochs"]
    L = []

    def a(line: str) -> None:
        if "  # " in line and not line.lstrip().startswith("#"):  # align an inline comment
            text, comment = line.split("  # ", 1)
            line = text.rstrip().ljust(max(27, len(text.rstrip()) + 2)) + "# " + comment
        L.append(line)
    a(f"# {name}: an experiment written by `lmdlt init` from {info.root}")
    a(f"# {k} classes, {sum(info.counts)} images (head to tail): {counts}")
    a(f"# natural imbalance {info.natural_imbalance:.2f}; image sizes {info.sizes_text} px")
    a(f"# pixel modes (every image's header): {info.modes_text} -> {info.channels} channel(s)")
    a(f"# Run it (from the lmdlt repository):  snakemake --cores {s['cores']} --configfile {out_name}")
    a(f"# Results: results/{name}/tables/results.md (every row; mean +- std over seeds) and")
    a(f"#          results/{name}/tables/table2.md (head / medium / tail BACC).")
    a(f"# Progress while it runs:  lmdlt status results/{name}")
    a("# Every key: workflow/schemas/config.schema.yaml. Scale: " + scale
      + (" (CPU: 28 px, small ResNet; the GPU scale: lmdlt init ... --scale gpu)" if scale == "cpu"
         else " (GPU: 224 px, torchvision resnet18; the CPU scale: lmdlt init ... --scale cpu)"))
    a("")
    a("dataset:")
    a(f"  name: {name}  # outputs go to results/{name}/")
    a(f"  source: {info.source}" + ("             # one folder per class" if info.source == "imagefolder"
                                    else "                     # a CSV of path,label[,group]"))
    a(f"  root: {_flow(info.root)}")
    if options:
        a(f"  options: {_flow(options)}" + ("   # grey images: one channel" if info.channels == 1 else
                                            "   # grey and colour images: 3 (grey repeated)" if mixed
                                            else ""))
    a(f"  image_size: {s['image_size']}" + "           # every image resized once to this square in the image cache")
    a("")
    a("split:")
    for line in textwrap.wrap(" ".join(split.reason), 94):
        a(f"  # {line}")
    for key, v in split.section.items():
        a(f"  {key}: {_flow(v)}")
    a("")
    a("seeds: [0, 1, 2]")
    a("")
    a("groups:                  # head / medium / tail by training-count rank (thirds)")
    a("  rule: rank")
    a(f"  sizes: {_flow(sizes)}" + f"        # head {', '.join(head)}; tail {', '.join(tail)}")
    a("")
    a("compute:")
    a("  device: auto           # CUDA when visible, else CPU")
    a(f"  threads: {s['threads']}" + ("             # one thread per job: --cores 2 runs two jobs at once"
                                       if scale == "cpu" else "             # per job"))
    a("")
    a("# Stage 1: every row has the same budget (epochs, batch, lr, weight decay, cosine schedule).")
    a("stage1:")
    a("  ce:")
    a("    method: ce")
    a("    label: CE")
    a(f"    model: {_flow(model)}")
    a(f"    epochs: {epochs}")
    a(f"    batch_size: {bs}")
    a(f"    lr: {s['lr']}")
    a("    weight_decay: 0.0005")
    a("    augment: {crop_padding: 2, hflip: true}")
    a("  rrl:                   # LMD stage 1: relation-aware mean teacher (docs/lmd.md)")
    a("    method: rrl")
    a("    label: RRL")
    a(f"    model: {_flow(model)}")
    a(f"    epochs: {epochs}")
    a(f"    batch_size: {bs}")
    a(f"    lr: {s['lr']}")
    a("    weight_decay: 0.0005")
    a("    augment: {crop_padding: 2}   # flips: the method's own views")
    if s["rrl_params"]:
        a("    # CPU scale (the reference: lambda_1 10, EMA decay 0.999, consistency from epoch 21 of 100):")
        a("    # warm-up scaled to 4 of 20 epochs, a shorter teacher horizon, lambda_1 1")
        a(f"    params: {_flow(s['rrl_params'])}")
    else:
        a("    # the method's defaults: the paper / reference values (lambda_1 10, EMA decay 0.999,")
        a("    # consistency terms from epoch 21 of 100)")
    a("")
    a("# Stage 2 on the frozen encoders (cRT, NCM) and LMD's ICC, which also fine-tunes the encoder.")
    a("# The ablations inherit ICC's params (`inherit: icc`) and change one thing each.")
    a("stage2:")
    a("  crt:")
    a("    method: crt")
    a("    label: cRT")
    a("    stage1: [ce, rrl]")
    a(f"    params: {_flow(s['crt_params'])}")
    a("  ncm:")
    a("    method: ncm")
    a("    label: NCM")
    a("    stage1: [ce, rrl]")
    a("  icc:                   # RRL + ICC = LMD; CE + ICC = \"LMD w/o RRL\"")
    a("    method: icc")
    a("    label: ICC")
    a("    stage1: [ce, rrl]")
    if s["icc_params"]:
        a("    # CPU scale: J 5 iterations, R 2,000 virtual features per class, rates 0.05 / 1e-3")
        a("    # (paper: 200, 50,000, 1e-5 / 1e-6; the GPU scale uses them)")
        a(f"    params: {_flow(s['icc_params'])}")
    else:
        a("    # the paper's scale (the method's defaults): J 200, R 50,000, lr 1e-5 / 1e-6; for a")
        a("    # first look, e.g. params: {iterations: 20}")
    a("  vfc:                   # \"LMD w/o ICC\": one M-step on virtual features, no E-step")
    a("    method: vfc")
    a("    label: VFC")
    a("    stage1: [rrl]")
    a("    inherit: icc")
    a("  icc_nofdc:             # \"LMD w/o FDC\": lambda_e = 0")
    a("    method: icc")
    a("    label: ICC w/o FDC")
    a("    stage1: [rrl]")
    a("    inherit: icc")
    a("    params: {lambda_e: 0.0}")
    a("  icc_novfc:             # \"LMD w/o VFC\": the M-step trains on class-balanced real features")
    a("    method: icc")
    a("    label: ICC w/o VFC")
    a("    stage1: [rrl]")
    a("    inherit: icc")
    a("    params: {features: real}")
    a("")
    a("report:")
    pname = split.section["protocol"]
    r = split.section.get("imbalance_ratio")
    title = f"{name} ({pname}" + (f", r = {_r_text(r)}" if r is not None and pname != "random" else "") \
        + f"{', grouped' if split.section.get('grouped') else ''}): {s['image_size']} px, {model['arch']}, {epochs} epochs"
    a(f"  title: {_flow(title)}")
    a("  lmd: rrl/icc           # compared with every other row (paired bootstrap on BACC)")
    a("  tables:")
    a("    table2:              # head / medium / tail / overall BACC, mean +- std")
    a("      rows:")
    for run, label in (("ce", "CE"), ("ce/crt", "CE + cRT"), ("ce/ncm", "CE + NCM"), ("rrl", "RRL"),
                       ("rrl/crt", "RRL + cRT"), ("ce/icc", "LMD w/o RRL (CE + ICC)"),
                       ("rrl/vfc", "LMD w/o ICC (RRL + VFC)"), ("rrl/icc_novfc", "LMD w/o VFC"),
                       ("rrl/icc_nofdc", "LMD w/o FDC"), ("rrl/icc", "LMD (RRL + ICC)")):
        a(f"        - {_flow({'run': run, 'label': label})}")
    return "\n".join(L) + "\n"


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
