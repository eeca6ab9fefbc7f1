"""Share a row: one archive with everything behind a results-table row, and its re-check.

``lmdlt bundle results/<experiment> <row>`` writes a tar archive (``.tar``; ``.tar.gz`` when
``--out`` ends so) holding, for every seed of the experiment, the split manifest, the stage-1
checkpoint, its features file and metrics, the stage-2 predictions and metrics, the decoded
test images (the image cache's rows the test splits name), the fully resolved config of each
stage involved, each artefact's provenance record and sha256, the package versions and the code
version. ``MANIFEST.json``, the first member, lists every other member in archive order with its
sha256 and size.

``lmdlt verify FILE`` reads the archive member by member (a member whose bytes differ from its
MANIFEST hash, a truncated member, a missing or an extra one is an error naming it), checks the
chain of provenance hashes (checkpoint <- split and images; features and predictions <-
checkpoint; metrics <- what they scored; each stage's config hash), then re-scores on the CPU:
the stage-1 checkpoint re-encodes the bundled test images (fp32, the recorded batch size) and
the stage-1 classifier's test metrics are recomputed from those logits; the stage-2 classifier
(its fitted state in the predictions file) is re-applied to the re-extracted features (methods
that fine-tune the encoder, ICC: to the fine-tuned encoder's test features its predictions
record, since the pipeline keeps no fine-tuned encoder) and its metrics recomputed. Each metric
is reported against the bundled metrics.json, equal within ``TOLERANCE``.

Why the images travel (and not the dataset, nor only the features): re-scoring a checkpoint
means encoding images, the colleague may have no access to the dataset (licence, size, a
hospital's data), and decoding the originals again depends on the decoder's version; the
decoded test images at the run's size are what the model saw, and small. ``--images all``
adds the training and validation images (verify then re-extracts those splits too);
``--images none`` bundles none (verify then needs ``--images CACHE``, an image cache with the
same provenance).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import platform
import re
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from .io import atomic_path, code_version, sha256_file, sha256_json

FORMAT = "lmdlt-bundle"
VERSION = 1
MANIFEST = "MANIFEST.json"
#: re-scored and recorded metrics are "equal" when they differ by at most this (absolute): on
#: the machine that made them they are identical; elsewhere float rounding of the encoder's
#: arithmetic moves ECE and AUC (continuous in the probabilities) in the 7th decimal at most
TOLERANCE = 1e-6
#: features and logits: re-extracted and recorded ones agree when close within these
FEATURE_RTOL, FEATURE_ATOL = 1e-4, 1e-5
PACKAGES = ("lmdlt", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow",
            "h5py", "timm")
IMAGE_MODES = ("test", "all", "none")


class BundleError(ValueError):
    """A bundle that cannot be made, or a tampered, truncated or inconsistent one."""


# ---------------------------------------------------------------------------------------------
# which row


def experiment_config(root) -> dict:
    """The experiment's resolved config (``<root>/report/config.yaml``, written by the report)."""
    import yaml

    path = Path(root) / "report" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not a finished lmdlt experiment "
                                "(the report writes it; run snakemake first)")
    return yaml.safe_load(path.read_text())


def row_names(config: dict) -> dict[str, set[tuple[str, str | None]]]:
    """Every name a row goes by -> its (stage-1, stage-2) runs: ``s1`` / ``s1/s2``, the results
    table's label (``row_label``) and the labels the paper tables give it."""
    from .config import pairs, row_label

    names: dict[str, set] = {}
    runs = pairs(config)
    for s1, s2 in runs:
        names.setdefault(s1 if s2 is None else f"{s1}/{s2}", set()).add((s1, s2))
        names.setdefault(row_label(config, s1, s2), set()).add((s1, s2))
    known = set(runs)
    tables = (config.get("report") or {}).get("tables") or {}
    for spec in tables.values():
        for r in (spec.get("rows") or []) if isinstance(spec, dict) else []:
            if not isinstance(r, dict) or "run" not in r:
                continue
            s1, _, s2 = str(r["run"]).partition("/")
            run = (s1, s2 or None)
            if run in known:
                for key in ("label", "paper"):
                    if r.get(key):
                        names.setdefault(str(r[key]), set()).add(run)
    return names


def resolve_row(config: dict, row: str) -> tuple[str, str | None]:
    """(stage-1, stage-2 or None) of ``row``: ``s1``, ``s1/s2``, or a label of it in a table
    (exact, then case-insensitive); ambiguous or unknown names are errors listing the rows."""
    names = row_names(config)
    found = names.get(row)
    if not found:
        folded = [runs for name, runs in names.items() if name.casefold() == row.casefold()]
        found = set().union(*folded) if folded else None
    if not found:
        listed = sorted(n for n in names if "/" in n or n in config.get("stage1", {}))
        raise BundleError(f"no row {row!r} in the experiment; rows (s1 or s1/s2, or a table's "
                          f"label): {', '.join(listed[:40])}{' ...' if len(listed) > 40 else ''}")
    if len(found) > 1:
        runs = ", ".join(sorted(s1 if s2 is None else f"{s1}/{s2}" for s1, s2 in found))
        raise BundleError(f"row {row!r} names several runs ({runs}); give one as s1/s2")
    return next(iter(found))


def run_spec(s1: str, s2: str | None) -> str:
    return s1 if s2 is None else f"{s1}/{s2}"


# ---------------------------------------------------------------------------------------------
# the files of a row, and the chain of hashes between them


def seed_members(seed: int, s1: str, s2: str | None) -> dict[str, str]:
    """role -> member name (the results folder's own layout, under ``seed<N>/``)."""
    base = f"seed{seed}"
    out = {"split": f"{base}/split.parquet",
           "checkpoint": f"{base}/stage1/{s1}/model.pt",
           "features": f"{base}/stage1/{s1}/features.h5",
           "stage1_metrics": f"{base}/stage1/{s1}/metrics.json"}
    if s2 is not None:
        out["predictions"] = f"{base}/stage2/{s1}/{s2}/predictions.h5"
        out["stage2_metrics"] = f"{base}/stage2/{s1}/{s2}/metrics.json"
    return out


def _h5_record(path) -> dict:
    from .io import h5_read_provenance, open_h5

    with open_h5(path) as f:
        return {"provenance": h5_read_provenance(f),
                "attrs": {k: (v.tolist() if hasattr(v, "tolist") else v)
                          for k, v in f.attrs.items() if k != "provenance"}}


def _checkpoint_meta(path) -> dict:
    from .models.checkpoint import safe_torch_load

    ckpt = safe_torch_load(path, "cpu", "stage-1 checkpoint")
    if not isinstance(ckpt, dict) or "meta" not in ckpt:
        raise BundleError(f"{path} is not an lmdlt stage-1 checkpoint (no 'meta')")
    return ckpt["meta"]


def _pair(recorded, actual) -> str:
    """A check's detail: the hash once when it holds, both when not."""
    return str(recorded)[:12] if recorded == actual else f"recorded {recorded}, actual {actual}"


def chain_checks(paths: dict[str, Path], stage1_cfg: dict, stage2_cfg: dict | None,
                 images_hash: str | None) -> tuple[list[tuple[str, bool, str]], dict]:
    """The provenance links of one seed's files, as (what, holds, detail), and each artefact's
    provenance record with its sha256 (what the bundle's ``provenance.json`` holds)."""
    from .data.splits import read_manifest
    from .io import read_json

    sha = {role: sha256_file(p) for role, p in paths.items()}
    _, split_meta = read_manifest(paths["split"])
    meta = _checkpoint_meta(paths["checkpoint"])
    ckpt = meta["provenance"]
    feats = _h5_record(paths["features"])
    m1 = read_json(paths["stage1_metrics"])["provenance"]
    records = {"split": {"sha256": sha["split"], "content_hash": split_meta["content_hash"],
                         "provenance": split_meta.get("provenance")},
               "checkpoint": {"sha256": sha["checkpoint"], "provenance": ckpt},
               "features": {"sha256": sha["features"], **feats},
               "stage1_metrics": {"sha256": sha["stage1_metrics"], "provenance": m1}}
    split_hash = split_meta["content_hash"]
    checks = [
        ("stage-1 config hash of model.pt", ckpt.get("config_hash") == sha256_json(stage1_cfg),
         _pair(ckpt.get('config_hash'), sha256_json(stage1_cfg))),
        ("model.pt trained on split.parquet", ckpt.get("parents", {}).get("split") == split_hash,
         _pair(ckpt.get('parents', {}).get('split'), split_hash)),
        ("features.h5 extracted with model.pt", feats["attrs"].get("checkpoint_sha256") == sha["checkpoint"],
         _pair(feats['attrs'].get('checkpoint_sha256'), sha['checkpoint'])),
        ("features.h5 on split.parquet", feats["attrs"].get("split_hash") == split_hash,
         _pair(feats['attrs'].get('split_hash'), split_hash)),
        ("stage-1 metrics.json scored features.h5", m1.get("parents", {}).get("predictions") == sha["features"],
         _pair(m1.get('parents', {}).get('predictions'), sha['features'])),
    ]
    if images_hash is not None:
        checks.append(("model.pt trained on the bundled images' cache",
                       ckpt.get("parents", {}).get("images") in (None, images_hash),
                       _pair(ckpt.get('parents', {}).get('images'), images_hash)))
    if "predictions" in paths:
        pred = _h5_record(paths["predictions"])
        m2 = read_json(paths["stage2_metrics"])["provenance"]
        records["predictions"] = {"sha256": sha["predictions"], **pred}
        records["stage2_metrics"] = {"sha256": sha["stage2_metrics"], "provenance": m2}
        p = pred["provenance"]
        checks += [
            ("stage-2 config hash of predictions.h5", p.get("config_hash") == sha256_json(stage2_cfg),
             _pair(p.get('config_hash'), sha256_json(stage2_cfg))),
            ("predictions.h5 made from model.pt", pred["attrs"].get("checkpoint_sha256") == sha["checkpoint"],
             _pair(pred['attrs'].get('checkpoint_sha256'), sha['checkpoint'])),
            ("predictions.h5 on split.parquet", pred["attrs"].get("split_hash") == split_hash,
             _pair(pred['attrs'].get('split_hash'), split_hash)),
            ("stage-2 metrics.json scored predictions.h5",
             m2.get("parents", {}).get("predictions") == sha["predictions"],
             _pair(m2.get('parents', {}).get('predictions'), sha['predictions'])),
        ]
        if "features" in (p.get("parents") or {}):
            checks.append(("predictions.h5 fitted on features.h5",
                           p["parents"]["features"] == sha["features"],
                           _pair(p['parents']['features'], sha['features'])))
    return checks, records


# ---------------------------------------------------------------------------------------------
# writing


def environment() -> dict:
    """Package versions (those installed of ``PACKAGES``), Python, platform, code version."""
    from importlib import metadata

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"packages": packages, "python": sys.version.split()[0], "platform": platform.platform(),
            "code_version": code_version()}


def image_cache_path(root, config: dict) -> Path:
    """The image cache the experiment's jobs read (``results/image_cache/<source>-<hash>/``)."""
    from .data.image_cache import cache_dir_name

    ds = config["dataset"]
    return Path(root).resolve().parent / "image_cache" / cache_dir_name(ds) / f"images_{ds['image_size']}px.h5"


def write_image_subset(cache_path, ids: list[str], out_path) -> dict:
    """The rows ``ids`` of an image cache, in the cache's own format (readable by
    ``ImageCache``), with the cache's provenance record unchanged (its config hash is the one
    the checkpoints name) and ``subset_of`` (which cache, how many images of it)."""
    import h5py

    from .data.image_cache import ImageCache
    from .io import h5_write_provenance

    cache = ImageCache(cache_path)
    images = cache.load(ids)
    with h5py.File(cache_path, "r") as f:
        labels_all = f["labels"][:] if "labels" in f else None
        class_names = list(f.attrs.get("class_names", []))
    rows = np.array([cache._row[i] for i in ids], dtype=np.int64)
    with h5py.File(out_path, "w") as f:
        f.create_dataset("images", data=images, compression="gzip", shuffle=True)
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        if labels_all is not None:
            f.create_dataset("labels", data=labels_all[rows])
        f.attrs["class_names"] = class_names
        f.attrs["subset_of"] = json.dumps({"cache": Path(cache_path).name, "images": int(cache.shape[0])})
        h5_write_provenance(f, cache.provenance)
    return cache.provenance


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "row"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_bundle(root, row: str, out=None, images: str = "test") -> Path:
    """Write the bundle of ``row`` of the experiment ``root`` (results/<name>); returns its
    path. Every seed of the experiment's config must have the row's files, consistent with
    each other and with the config (``chain_checks``), else a ``BundleError`` naming what is not."""
    from .data.splits import SPLITS, read_manifest

    if images not in IMAGE_MODES:
        raise BundleError(f"--images: {images!r} is not one of {', '.join(IMAGE_MODES)}")
    root = Path(root)
    config = experiment_config(root)
    s1, s2 = resolve_row(config, row)
    spec = run_spec(s1, s2)
    name = config["dataset"]["name"]
    out = Path(out) if out else Path(f"{name}_{_slug(spec.replace('/', '_'))}.tar")
    stage1_cfg = config["stage1"][s1]
    stage2_cfg = config["stage2"][s2] if s2 is not None else None
    cache = image_cache_path(root, config)
    images_hash = None
    if images != "none":
        if not cache.is_file():
            raise FileNotFoundError(f"image cache {cache} not found (the experiment's images); "
                                    "bundle with --images none to leave the images out")
        from .data.image_cache import ImageCache

        images_hash = ImageCache(cache).provenance.get("config_hash")

    files: list[tuple[str, Path | bytes]] = []  # (member name, a file or the bytes themselves)

    def add_json(member: str, obj) -> None:
        files.append((member, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()))

    add_json("config/stage1.json", stage1_cfg)
    if stage2_cfg is not None:
        add_json("config/stage2.json", stage2_cfg)
    image_ids: list[str] = []
    seeds = [int(s) for s in config["seeds"]]
    members_by_seed = {}
    for seed in seeds:
        members = seed_members(seed, s1, s2)
        paths = {role: root / m for role, m in members.items()}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"row {spec!r}, seed {seed}: {missing[0]} not found"
                                    f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''};"
                                    " run snakemake to make it")
        checks, records = chain_checks(paths, stage1_cfg, stage2_cfg, images_hash)
        broken = [(what, detail) for what, ok, detail in checks if not ok]
        if broken:
            raise BundleError(f"row {spec!r}, seed {seed}: {broken[0][0]}: no ({broken[0][1]}); the "
                              "results are stale against the experiment's config: re-run snakemake")
        if seed == seeds[0]:
            add_json("config/split.json", records["split"]["provenance"].get("config"))
        for role, member in members.items():
            files.append((member, paths[role]))
        add_json(f"seed{seed}/provenance.json", {"checks": [c[0] for c in checks], "artefacts": records})
        members_by_seed[str(seed)] = members
        if images != "none":
            table, _ = read_manifest(paths["split"])
            wanted = table if images == "all" else table[table["split"] == "test"]
            image_ids += [i for i in wanted["id"].tolist()]
    run_cfg_path = root / "report" / "config.yaml"
    files.append(("config/experiment.yaml", run_cfg_path.read_bytes()))
    add_json("environment.json", environment())
    add_json("row.json", {"experiment": name, "row": row, "stage1": s1, "stage2": s2, "seeds": seeds,
                          "images": images, "image_splits": list(SPLITS) if images == "all" else
                          (["test"] if images == "test" else []),
                          "members": members_by_seed,
                          "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    with tempfile.TemporaryDirectory(prefix="lmdlt-bundle-") as tmp:
        if images != "none":
            subset = Path(tmp) / "images.h5"
            write_image_subset(cache, list(dict.fromkeys(image_ids)), subset)
            files.append(("images.h5", subset))
        entries = []
        for member, src in files:
            if isinstance(src, bytes):
                entries.append({"name": member, "sha256": _sha256_bytes(src), "bytes": len(src)})
            else:
                entries.append({"name": member, "sha256": sha256_file(src), "bytes": src.stat().st_size})
        manifest = {"format": FORMAT, "version": VERSION, "row": spec, "members": entries}
        blob = (json.dumps(manifest, indent=2) + "\n").encode()
        mode = "w:gz" if out.name.endswith((".tar.gz", ".tgz")) else "w"
        with atomic_path(out) as tmp_out, tarfile.open(tmp_out, mode) as tar:
            _add_bytes(tar, MANIFEST, blob)
            for member, src in files:
                if isinstance(src, bytes):
                    _add_bytes(tar, member, src)
                else:
                    tar.add(src, arcname=member, recursive=False, filter=_anonymous)
    return out


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(_dt.datetime.now().timestamp())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------
# reading back: integrity


def extract_checked(path, dest) -> dict:
    """Unpack the bundle ``path`` into ``dest`` member by member, each checked against
    ``MANIFEST.json``; returns the manifest. A member whose sha256 or size differs, a truncated
    or unreadable member, a missing, unexpected or unsafe one: a ``BundleError`` naming it."""
    path, dest = Path(path), Path(dest)
    if not path.is_file():
        raise FileNotFoundError(f"bundle {str(path)!r} not found")
    expected: dict[str, dict] | None = None
    order: list[str] = []
    seen: list[str] = []
    reading = None

    def next_expected() -> str:
        rest = [n for n in order if n not in seen]
        return rest[0] if rest else "(none)"

    try:
        tar = tarfile.open(path, "r|*")  # a stream: members in archive order, as written
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise BundleError(f"bundle {path}: member {MANIFEST}: not readable, the archive is truncated "
                          f"or corrupt at its start ({type(e).__name__}: {e})") from None
    try:
        with tar:
            for info in tar:
                name = info.name
                if expected is None and name != MANIFEST:
                    raise BundleError(f"bundle {path}: its first member is {name!r}, not {MANIFEST}: "
                                      "not an lmdlt bundle")
                if expected is not None and name not in expected:
                    raise BundleError(f"bundle {path}: member {name!r} is not listed in {MANIFEST} "
                                      "(added or renamed after bundling)")
                if name in seen:
                    raise BundleError(f"bundle {path}: member {name!r} occurs twice")
                target = (dest / name).resolve()
                if not info.isfile() or dest.resolve() not in target.parents:
                    raise BundleError(f"bundle {path}: member {name!r} is not a plain file inside "
                                      "the bundle (refused)")
                reading = name
                target.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                size = 0
                src = tar.extractfile(info)
                with open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        h.update(block)
                        size += len(block)
                        out.write(block)
                reading = None
                if expected is None:
                    try:
                        manifest = json.loads(target.read_text())
                        if manifest.get("format") != FORMAT:
                            raise ValueError(f"format {manifest.get('format')!r}")
                        expected = {m["name"]: m for m in manifest["members"]}
                        order = [m["name"] for m in manifest["members"]]
                    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
                        raise BundleError(f"bundle {path}: member {MANIFEST} is corrupt or not an "
                                          f"lmdlt bundle manifest ({e})") from None
                else:
                    want = expected[name]
                    if size != want["bytes"] or h.hexdigest() != want["sha256"]:
                        raise BundleError(
                            f"bundle {path}: member {name!r} differs from {MANIFEST}: sha256 "
                            f"{h.hexdigest()[:16]}... ({size} bytes), recorded {want['sha256'][:16]}... "
                            f"({want['bytes']} bytes): the bundle was changed or damaged")
                seen.append(name)
    except BundleError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        culprit = reading or next_expected()
        where = "while reading its data" if reading else "at its header"
        raise BundleError(f"bundle {path}: member {culprit!r}: truncated or corrupt {where} "
                          f"({type(e).__name__}: {e})") from None
    if expected is None:
        raise BundleError(f"bundle {path}: member {MANIFEST} missing: empty or not an lmdlt bundle")
    missing = [n for n in order if n not in seen]
    if missing:
        last = seen[-1] if seen else MANIFEST
        raise BundleError(f"bundle {path}: member {missing[0]!r} missing"
                          f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: the "
                          f"archive ends after {last!r} (truncated, or a corrupt header)")
    return manifest


# ---------------------------------------------------------------------------------------------
# reading back: re-scoring


def _linear(state, params, feats, stage1):
    import torch

    w = torch.as_tensor(state["weight"], dtype=torch.float32)
    b = torch.as_tensor(state["bias"], dtype=torch.float32) if "bias" in state else None
    with torch.no_grad():
        return torch.nn.functional.linear(torch.as_tensor(feats, dtype=torch.float32), w, b).numpy()


def _l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _gcl(state, params, feats, stage1):
    return (params["s"] * (_l2(np.asarray(feats, np.float64)) @ np.asarray(state["weight"], np.float64).T))


def _lws(state, params, feats, stage1):
    return _linear(stage1, params, feats, None) * np.asarray(state["scales"], np.float32)


def _ncm(state, params, feats, stage1):
    z = _l2(np.asarray(feats, np.float64) - np.asarray(state["mean"], np.float64))
    c = np.asarray(state["centroids"], np.float64)
    if params.get("metric", "cosine") == "cosine":
        return z @ _l2(c).T
    return -np.linalg.norm(z[:, None, :] - c[None, :, :], axis=2)


def _logit_adjust(state, params, feats, stage1, summary):
    base = np.asarray(feats, np.float64) @ np.asarray(stage1["weight"], np.float64).T + stage1["bias"]
    return base - summary["tau"] * np.asarray(state["log_prior"], np.float64)[None, :]


#: stage-2 method -> logits of features from its fitted state (as saved beside its predictions);
#: each mirrors the method's own ``logits`` (tests/test_bundle.py checks every one against it)
RESCORERS = {
    "crt": _linear, "cb_wd_max": _linear, "kd_rebalance": _linear, "vfc": _linear, "icc": _linear,
    "tau_norm": _linear, "gcl": _gcl, "lws": _lws, "ncm": _ncm,
}


def stage2_logits(method: str, state: dict, params: dict, feats, stage1: dict | None,
                  summary: dict | None = None):
    """The stage-2 classifier re-applied to ``feats``; None for a method with no re-scorer."""
    if method == "logit_adjust":
        return _logit_adjust(state, params, feats, stage1, summary or {})
    fn = RESCORERS.get(method)
    return None if fn is None else fn(state, params, feats, stage1)


def _read_group(path, group: str) -> dict:
    from .io import open_h5

    with open_h5(path) as f:
        if group not in f:
            return {}
        g = f[group]
        return {k: (g[k].asstr()[:] if k == "ids" else g[k][:]) for k in g.keys() if hasattr(g[k], "shape")}


def _compare_metrics(rows: list, seed: int, stage: str, recorded: dict, rescored: dict) -> None:
    for name, want in recorded.items():
        got = rescored.get(name)
        if isinstance(want, list):
            diff = (float(np.max(np.abs(np.asarray(want, float) - np.asarray(got, float))))
                    if got is not None and len(got) == len(want) else float("inf"))
            rows.append({"seed": seed, "stage": stage, "metric": name, "recorded": "[...]",
                         "rescored": "[...]", "diff": diff, "equal": diff <= TOLERANCE})
        else:
            diff = abs(float(want) - float(got)) if got is not None else float("inf")
            if np.isnan(want) and got is not None and np.isnan(got):
                diff = 0.0
            rows.append({"seed": seed, "stage": stage, "metric": name, "recorded": float(want),
                         "rescored": None if got is None else float(got), "diff": diff,
                         "equal": diff <= TOLERANCE})


def verify_bundle(path, image_cache=None, threads: int | None = 1, workdir=None) -> dict:
    """Check and re-score a bundle (module docstring). Returns {"row", "checks": [(seed, what,
    holds, detail)], "notes": [...], "metrics": [rows of seed, stage, metric, recorded,
    rescored, diff, equal]}; a damaged bundle raises ``BundleError`` naming the member."""
    with tempfile.TemporaryDirectory(prefix="lmdlt-verify-", dir=workdir) as tmp:
        manifest = extract_checked(path, tmp)
        return _rescore(Path(tmp), manifest, image_cache, threads)


def _rescore(d: Path, manifest: dict, image_cache, threads) -> dict:
    from .data.image_cache import ImageCache
    from .data.splits import SPLITS, read_manifest
    from .features import encode
    from .io import read_json
    from .metrics import compute_metrics
    from .models.checkpoint import load_checkpoint
    from .runtime import setup_torch

    row = json.loads((d / "row.json").read_text())
    s1, s2 = row["stage1"], row["stage2"]
    stage1_cfg = json.loads((d / "config/stage1.json").read_text())
    stage2_cfg = json.loads((d / "config/stage2.json").read_text()) if s2 is not None else None
    images_path = d / "images.h5" if (d / "images.h5").is_file() else image_cache
    if images_path is None:
        raise BundleError("the bundle holds no images (bundled with --images none): give an image "
                          "cache of the experiment's images with --images")
    cache = ImageCache(images_path)
    images_hash = cache.provenance.get("config_hash")
    setup_torch(0, threads)
    out = {"row": row, "checks": [], "notes": [], "metrics": [], "environment":
           json.loads((d / "environment.json").read_text())}
    for seed in row["seeds"]:
        members = row["members"][str(seed)]
        paths = {role: d / m for role, m in members.items()}
        checks, _ = chain_checks(paths, stage1_cfg, stage2_cfg, images_hash)
        out["checks"] += [(seed, *c) for c in checks]
        table, _ = read_manifest(paths["split"])
        net, meta = load_checkpoint(paths["checkpoint"], "cpu")
        feats_file = {split: _read_group(paths["features"], split) for split in SPLITS}
        batch = int(_h5_record(paths["features"])["provenance"].get("config", {}).get("batch_size", 512))
        splits = [s for s in SPLITS if s in (row.get("image_splits") or ["test"])]
        if image_cache is not None and not (d / "images.h5").is_file():
            splits = list(SPLITS)
        encoded = {}
        for split in splits:
            ids = table[table["split"] == split]["id"].tolist()
            try:
                x = cache.load(ids)
            except KeyError as e:
                raise BundleError(f"seed {seed}: {e.args[0]}") from None
            f, z = encode(net, x, "cpu", batch, "fp32", False, desc=f"seed {seed} {split}")
            encoded[split] = (f, z)
            rec = feats_file[split]
            same_ids = list(rec["ids"]) == ids
            for key, new in (("features", f), ("logits", z)):
                old = rec[key]
                ok = same_ids and old.shape == new.shape and bool(
                    np.allclose(new, old, rtol=FEATURE_RTOL, atol=FEATURE_ATOL))
                diff = float(np.max(np.abs(new - old))) if old.shape == new.shape and len(old) else 0.0
                out["checks"].append((seed, f"stage-1 {key} of the {split} split re-extracted from the "
                                      f"images ({len(ids)}, CPU fp32)", ok, f"max |diff| {diff:.3g}"))
        test_labels = table[table["split"] == "test"]["label"].to_numpy(np.int64)
        _, z_test = encoded["test"]
        m1 = read_json(paths["stage1_metrics"])["metrics"]
        _compare_metrics(out["metrics"], seed, f"stage1 {s1}", m1, compute_metrics(test_labels, z_test))
        if s2 is None:
            continue
        pred_test = _read_group(paths["predictions"], "test")
        state = _read_group(paths["predictions"], "state")
        stage1_clf = _read_group(paths["features"], "classifier")
        summary = _h5_record(paths["predictions"])["provenance"].get("summary") or {}
        if "features" in pred_test:  # the method fine-tuned the encoder (ICC): its recorded features
            feats_in, source = pred_test["features"], "the fine-tuned encoder's recorded test features"
        else:
            feats_in, source = encoded["test"][0], "the re-extracted stage-1 test features"
        logits = stage2_logits(stage2_cfg["method"], state, stage2_cfg.get("params") or {}, feats_in,
                               stage1_clf, summary)
        if logits is None:
            logits = pred_test["logits"]
            out["notes"].append(f"seed {seed}: stage-2 method {stage2_cfg['method']!r} has no re-scorer: "
                                "its metrics are recomputed from the recorded logits")
        else:
            diff = float(np.max(np.abs(np.asarray(logits, np.float64) - pred_test["logits"])))
            ok = bool(np.allclose(logits, pred_test["logits"], rtol=FEATURE_RTOL, atol=FEATURE_ATOL))
            out["checks"].append((seed, f"stage-2 {stage2_cfg['method']} classifier re-applied to {source}",
                                  ok, f"max |logit diff| {diff:.3g}"))
        m2 = read_json(paths["stage2_metrics"])["metrics"]
        _compare_metrics(out["metrics"], seed, f"stage2 {s2}", m2,
                         compute_metrics(pred_test["labels"], np.asarray(logits, np.float32)))
    return out


def report_text(path, result: dict) -> str:
    """What ``lmdlt verify`` prints: the row, the checks, and every metric recorded vs re-scored."""
    row = result["row"]
    env = result["environment"]
    pk = env.get("packages", {})
    lines = [f"bundle {path}: every member's sha256 matches MANIFEST.json",
             f"row {row['row']!r} = {run_spec(row['stage1'], row['stage2'])} of experiment "
             f"{row['experiment']}, seeds {', '.join(map(str, row['seeds']))}; bundled with lmdlt "
             f"{env.get('code_version')}, torch {pk.get('torch')}, numpy {pk.get('numpy')}, "
             f"scikit-learn {pk.get('scikit-learn')}", ""]
    for seed, what, ok, detail in result["checks"]:
        lines.append(f"seed {seed}  {'ok  ' if ok else 'FAIL'}  {what} ({detail})")
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append("")
    lines.append(f"{'seed':>4}  {'stage':<22} {'metric':<18} {'recorded':>10} {'re-scored':>10}  equal")
    for r in result["metrics"]:
        rec = r["recorded"] if isinstance(r["recorded"], str) else f"{r['recorded']:.6f}"
        new = (r["rescored"] if isinstance(r["rescored"], str) else
               ("-" if r["rescored"] is None else f"{r['rescored']:.6f}"))
        lines.append(f"{r['seed']:>4}  {r['stage']:<22} {r['metric']:<18} {rec:>10} {new:>10}  "
                     f"{'yes' if r['equal'] else 'NO (diff %.3g)' % r['diff']}")
    return "\n".join(lines)


def verify_problems(result: dict) -> list[str]:
    """Failed checks and unequal metrics, one line each (empty: the bundle verifies)."""
    out = [f"seed {s}: {what} ({detail})" for s, what, ok, detail in result["checks"] if not ok]
    out += [f"seed {r['seed']} {r['stage']} {r['metric']}: recorded {r['recorded']}, re-scored "
            f"{r['rescored']}" for r in result["metrics"] if not r["equal"]]
    return out


def bundle_summary(path) -> str:
    """One line: the bundle's path, size and member count."""
    with tarfile.open(path, "r:*") as tar:
        n = len(tar.getmembers())
    return f"{path} ({os.path.getsize(path) / 1e6:.2f} MB, {n} members)"


__all__ = ["BundleError", "make_bundle", "verify_bundle", "extract_checked", "report_text",
           "verify_problems", "stage2_logits", "resolve_row", "TOLERANCE"]
