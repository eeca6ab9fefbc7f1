"""Evaluation metrics, all from scikit-learn on softmax probabilities (DESIGN.md §5)."""
from __future__ import annotations

import logging

import h5py
import numpy as np
from scipy.special import softmax
from sklearn import metrics as skm

from .io import h5_read_provenance, provenance, sha256_file, write_json

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


def compute_metrics(labels: np.ndarray, logits: np.ndarray, groups: dict[str, list[int]]) -> dict:
    """All metrics of one run on one split."""
    k = logits.shape[1]
    classes = list(range(k))
    probs = softmax(logits.astype(np.float64), axis=1)
    pred = probs.argmax(1)
    per_class = skm.recall_score(labels, pred, labels=classes, average=None, zero_division=0)
    out = {
        "bacc": skm.balanced_accuracy_score(labels, pred),
        "accuracy": skm.accuracy_score(labels, pred),
        "auc": skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=classes),
        "f1": skm.f1_score(labels, pred, labels=classes, average="macro", zero_division=0),
        "precision": skm.precision_score(labels, pred, labels=classes, average="macro", zero_division=0),
        "recall": skm.recall_score(labels, pred, labels=classes, average="macro", zero_division=0),
        "kappa_quadratic": skm.cohen_kappa_score(labels, pred, labels=classes, weights="quadratic"),
        "kappa": skm.cohen_kappa_score(labels, pred, labels=classes),
    }
    for g in GROUPS:
        ids = groups.get(g, [])
        # group BACC = mean recall of the group's classes (NaN for an empty group)
        out[f"{g}_bacc"] = float(np.mean(per_class[ids])) if ids else float("nan")
    out = {name: float(v) for name, v in out.items()}
    out["per_class_recall"] = [float(r) for r in per_class]
    return out


def evaluate_file(predictions_path, group_rule: dict, out_path, split: str = "test") -> dict:
    """Metrics of a features or predictions HDF5 file (its ``/<split>/logits``) to JSON."""
    with h5py.File(predictions_path, "r") as f:
        parent = h5_read_provenance(f)
        class_names = [str(c) for c in f.attrs["class_names"]]
        train_counts = np.bincount(f["train/labels"][:], minlength=len(class_names))
        labels, logits = f[f"{split}/labels"][:], f[f"{split}/logits"][:]
    groups = class_groups(train_counts, group_rule)
    result = compute_metrics(labels, logits, groups)
    log.info("%s on %s: %s", predictions_path, split,
             " ".join(f"{k} {v:.4f}" for k, v in result.items() if not isinstance(v, list)))
    record = {
        "split": split, "metrics": result, "class_names": class_names,
        "train_counts": train_counts.tolist(), "groups": groups, "group_rule": group_rule,
        "n_images": int(len(labels)),
        "provenance": provenance("evaluate", {"group_rule": group_rule, "split": split},
                                 {"predictions": sha256_file(predictions_path)}, parent.get("seed")),
    }
    write_json(out_path, record)
    return record
