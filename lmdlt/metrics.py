"""Evaluation metrics, all from scikit-learn on softmax probabilities: balanced accuracy (= macro
recall; the LMD paper's "Recall" column equals it), accuracy, macro one-vs-rest AUC, macro F1 and
precision, Cohen's kappa quadratic-weighted (as the paper, on nominal classes) and unweighted,
per-class recall, and the expected calibration error."""
from __future__ import annotations

import logging

import numpy as np
from scipy.special import softmax
from sklearn import metrics as skm

from .io import check_config_hash, h5_read_provenance, open_h5, provenance, sha256_file, write_json

log = logging.getLogger("lmdlt.evaluate")

GROUPS = ("head", "medium", "tail")


def class_groups(train_counts: np.ndarray, rule: dict) -> dict[str, list[int]]:
    """Head / medium / tail class ids from training counts.

    ``shots`` (Kang et al.): head > ``many`` images, tail < ``few``, medium otherwise.
    ``rank``: the ``sizes`` = [head, medium, tail] most frequent classes, by training count.
    """
    counts = np.asarray(train_counts)
    k = len(counts)
    if rule["rule"] == "shots":
        many, few = rule.get("many", 100), rule.get("few", 20)
        head = [c for c in range(k) if counts[c] > many]
        tail = [c for c in range(k) if counts[c] < few]
        medium = [c for c in range(k) if c not in head and c not in tail]
        return {"head": head, "medium": medium, "tail": tail}
    if rule["rule"] == "rank":
        sizes = rule.get("sizes")
        if not sizes or len(sizes) != 3 or sum(sizes) != k:
            raise ValueError(f"groups.sizes must be [head, medium, tail] summing to the {k} "
                             f"classes, got {sizes}")
        order = sorted(range(k), key=lambda c: (-counts[c], c))
        h, m = sizes[0], sizes[0] + sizes[1]
        return {"head": sorted(order[:h]), "medium": sorted(order[h:m]), "tail": sorted(order[m:])}
    raise ValueError(f"groups.rule: unknown rule {rule['rule']!r} (known: shots, rank)")


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 prediction (Guo et al. 2017), equal-width bins.

    Images are binned by their confidence (the largest probability) into ``n_bins`` intervals
    (0, 1/n], (1/n, 2/n], ...; ECE = sum over bins of (images in bin / N) * |accuracy in bin -
    mean confidence in bin|. scikit-learn has no ECE; this is the standard binned estimator.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    n = np.bincount(bins, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / len(labels))


def compute_metrics(labels: np.ndarray, logits: np.ndarray,
                    groups: dict[str, list[int]] | None = None) -> dict:
    """All metrics of one run on one split; the head/medium/tail BACCs only with ``groups``
    (the pipeline derives them at the report, ``group_metrics``, so that a change of the
    ``groups`` rule re-runs only the report, never a producer)."""
    k = logits.shape[1]
    classes = list(range(k))
    probs = softmax(logits.astype(np.float64), axis=1)
    pred = probs.argmax(1)
    per_class = skm.recall_score(labels, pred, labels=classes, average=None, zero_division=0)
    out = {
        "bacc": skm.balanced_accuracy_score(labels, pred),
        "accuracy": skm.accuracy_score(labels, pred),
        # binary: sklearn wants the positive class's score; K > 2: macro one-vs-rest
        "auc": (skm.roc_auc_score(labels, probs[:, 1]) if k == 2 else
                skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=classes)),
        "f1": skm.f1_score(labels, pred, labels=classes, average="macro", zero_division=0),
        "precision": skm.precision_score(labels, pred, labels=classes, average="macro", zero_division=0),
        "recall": skm.recall_score(labels, pred, labels=classes, average="macro", zero_division=0),
        "kappa_quadratic": skm.cohen_kappa_score(labels, pred, labels=classes, weights="quadratic"),
        "kappa": skm.cohen_kappa_score(labels, pred, labels=classes),
        "ece": expected_calibration_error(labels, probs),
    }
    if groups is not None:
        out.update(_group_baccs(per_class, groups))
    out = {name: float(v) for name, v in out.items()}
    out["per_class_recall"] = [float(r) for r in per_class]
    return out


GROUP_METRICS = tuple(f"{g}_bacc" for g in GROUPS)


def _group_baccs(per_class: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float]:
    # group BACC = mean recall of the group's classes (NaN for an empty group)
    return {f"{g}_bacc": float(np.mean(per_class[groups.get(g, [])])) if groups.get(g) else float("nan")
            for g in GROUPS}


def group_metrics(record: dict, group_rule: dict) -> dict[str, float]:
    """Head / medium / tail BACC of a metrics record (``evaluate_file``'s JSON) under
    ``group_rule``, from its per-class recall and training counts: exactly what
    ``compute_metrics`` gives with the same groups."""
    per_class = np.asarray(record["metrics"]["per_class_recall"], dtype=np.float64)
    return _group_baccs(per_class, class_groups(np.asarray(record["train_counts"]), group_rule))


def check_against_manifest(predictions_path, f, manifest_path, split: str) -> dict:
    """Provenance and leak guards before any metric is computed.

    The predictions must come from this split manifest (same content hash, in the attributes
    and in the provenance record), cover exactly its ``split`` images with the manifest's
    labels, and no evaluated image id (nor, when the manifest has a ``group`` column such as
    HAM10000's lesion_id, any evaluated group) may occur in another split. The one exception:
    a manifest built with ``split.grouped: false`` is a naive split asked for on purpose (to
    measure the leak); its shared groups are logged and returned, not refused.
    """
    from .data.splits import read_manifest

    table, meta = read_manifest(manifest_path)
    recorded = f.attrs.get("split_hash")
    if recorded != meta["content_hash"]:
        raise ValueError(f"{predictions_path} was computed on split {recorded}, not on "
                         f"{manifest_path} ({meta['content_hash']}); re-run its stages")
    parent = h5_read_provenance(f).get("parents", {}).get("split")
    if parent is not None and parent != recorded:
        raise ValueError(f"{predictions_path}: inconsistent provenance, split {recorded} in its "
                         f"attributes but {parent} in its provenance record")
    ids = f[f"{split}/ids"].asstr()[:]
    evaluated = set(ids)
    if len(evaluated) != len(ids):
        raise ValueError(f"{predictions_path}: an image occurs twice in its {split} split")
    rows = table[table["split"] == split]
    expected = set(rows["id"])
    if evaluated != expected:
        extra = sorted(evaluated - expected)[:3]
        missing = sorted(expected - evaluated)[:3]
        raise ValueError(f"{predictions_path}: its {split} images differ from the manifest's "
                         f"(not in the manifest's {split} split: {extra}; missing: {missing})")
    label_of = dict(zip(rows["id"], rows["label"].astype(int)))
    labels = f[f"{split}/labels"][:]
    wrong = [i for i, y in zip(ids, labels) if label_of[i] != int(y)]
    if wrong:
        raise ValueError(f"{predictions_path}: {len(wrong)} {split} label(s) differ from "
                         f"{manifest_path}, e.g. image {wrong[0]!r}")
    others = table[table["split"] != split]
    leaked = evaluated & set(others["id"])
    if leaked:
        raise ValueError(f"split leak: {split} image {sorted(leaked)[0]!r} is also in another split "
                         f"of {manifest_path}")
    if "group" in table.columns:
        groups = set(rows["group"].dropna())
        shared = groups & set(others["group"].dropna())
        naive = meta.get("provenance", {}).get("config", {}).get("split", {}).get("grouped") is False
        if shared and not naive:
            raise ValueError(f"split leak: group {sorted(map(str, shared))[0]!r} has images in the "
                             f"{split} split and in another split of {manifest_path}")
        if shared:
            log.warning("%s is a naive split (split.grouped: false): %d %s group(s) also have "
                        "images in train/val, e.g. %r; its metrics include that leak",
                        manifest_path, len(shared), split, sorted(map(str, shared))[0])
            return {"shared_groups": len(shared)}
    return {}


def evaluate_file(predictions_path, group_rule: dict | None, out_path, split: str = "test",
                  manifest_path=None, stage1_params: dict | None = None,
                  stage2_params: dict | None = None) -> dict:
    """Metrics of a features or predictions HDF5 file (its ``/<split>/logits``) to JSON.

    With ``manifest_path`` (as the pipeline always passes) the provenance and leak guards of
    ``check_against_manifest`` run first. ``stage1_params`` / ``stage2_params`` (the variant
    configs the metrics are being made for): the file's recorded stage-1 config hash (features
    and predictions both record their encoder's) and, for stage-2 predictions, its own config
    hash must be theirs (``io.check_config_hash``). ``group_rule`` None (the pipeline's
    producers): no head/medium/tail BACC in the record; the report derives them
    (``group_metrics``) from the per-class recall and training counts it always holds.
    """
    with open_h5(predictions_path, "predictions file") as f:
        parent = h5_read_provenance(f)
        leak = {}
        if manifest_path is not None:
            leak = check_against_manifest(predictions_path, f, manifest_path, split)
        class_names = [str(c) for c in f.attrs["class_names"]]
        train_counts = np.bincount(f["train/labels"][:], minlength=len(class_names))
        labels, logits = f[f"{split}/labels"][:], f[f"{split}/logits"][:]
    recorded_stage1 = {"config_hash": parent.get("parents", {}).get("stage1_config")}
    if stage1_params is not None:
        check_config_hash(predictions_path, recorded_stage1, stage1_params, out_path, "stage-1")
    if stage2_params is not None:
        check_config_hash(predictions_path, parent, stage2_params, out_path, "stage-2")
    if not np.isfinite(logits).all():
        raise ValueError(f"{predictions_path}: non-finite logits in the {split} split")
    groups = class_groups(train_counts, group_rule) if group_rule is not None else None
    result = compute_metrics(labels, logits, groups)
    log.info("%s on %s: %s", predictions_path, split,
             " ".join(f"{k} {v:.4f}" for k, v in result.items() if not isinstance(v, list)))
    parents = {"predictions": sha256_file(predictions_path),
               # the configs the scored file was made for, checked by the report
               "scored_config": parent.get("config_hash"), "scored_stage": parent.get("stage"),
               "stage1_config": recorded_stage1["config_hash"]}
    if manifest_path is not None:
        parents["split"] = parent["parents"].get("split")
    record = {
        "split": split, "metrics": result, "class_names": class_names,
        "train_counts": train_counts.tolist(),
        **({"groups": groups, "group_rule": group_rule} if group_rule is not None else {}),
        "n_images": int(len(labels)),
        **({"naive_split_leak": leak} if leak else {}),
        "provenance": provenance("evaluate", {"group_rule": group_rule, "split": split},
                                 parents, parent.get("seed")),
    }
    write_json(out_path, record)
    return record
