"""lmdlt.metrics: class groups, the metrics against scikit-learn, and the evaluation's guards:
predictions from another split are refused, and so is any leak of a test image or group, for
every split protocol."""
import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from lmdlt.data.sources import SourceIndex
from lmdlt.data.splits import build_split, content_hash, write_manifest
from lmdlt.io import h5_write_provenance, provenance
from lmdlt.metrics import class_groups, compute_metrics, evaluate_file


def test_groups_by_shots():
    counts = np.array([500, 150, 100, 50, 20, 19, 3])
    g = class_groups(counts, {"rule": "shots", "many": 100, "few": 20})
    assert g == {"head": [0, 1], "medium": [2, 3, 4], "tail": [5, 6]}


def test_groups_by_rank():
    counts = np.array([5, 50, 500, 20, 1, 200, 9, 60])
    g = class_groups(counts, {"rule": "rank", "sizes": [2, 3, 3]})
    assert g == {"head": [2, 5], "medium": [1, 3, 7], "tail": [0, 4, 6]}
    with pytest.raises(ValueError, match="summing to the 8 classes"):
        class_groups(counts, {"rule": "rank", "sizes": [2, 2, 2]})


def test_metrics_match_sklearn_on_probabilities():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    logits = rng.normal(size=(100, 4)) + 2.0 * np.eye(4)[y] * rng.uniform(0, 1, size=(100, 1))
    groups = {"head": [0], "medium": [1, 2], "tail": [3]}
    m = compute_metrics(y, logits, groups)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = logits.argmax(1)
    assert m["bacc"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["kappa_quadratic"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))
    recall = skm.recall_score(y, pred, average=None)
    assert m["per_class_recall"] == pytest.approx(recall.tolist())
    assert m["recall"] == pytest.approx(m["bacc"])  # macro recall is balanced accuracy
    assert m["head_bacc"] == pytest.approx(recall[0])
    assert m["medium_bacc"] == pytest.approx(recall[1:3].mean())
    assert m["tail_bacc"] == pytest.approx(recall[3])


def test_perfect_and_empty_group():
    y = np.array([0, 1, 2, 0, 1, 2])
    m = compute_metrics(y, np.eye(3)[y] * 10, {"head": [0, 1, 2], "medium": [], "tail": []})
    assert m["bacc"] == 1.0 and m["auc"] == 1.0 and m["kappa_quadratic"] == 1.0
    assert np.isnan(m["medium_bacc"])


def test_a_class_never_predicted_gets_zero_precision_not_an_error():
    y = np.array([0, 0, 1, 1, 2, 2])
    logits = np.array([[3, 0, 0], [3, 0, 0], [0, 3, 0], [0, 3, 0], [3, 0, 1], [0, 3, 1]], float)
    m = compute_metrics(y, logits, {"head": [0], "medium": [1], "tail": [2]})
    assert m["per_class_recall"][2] == 0.0 and m["tail_bacc"] == 0.0


GROUPS = {"rule": "shots", "many": 100, "few": 20}


def make_manifest(path, rows):
    table = pd.DataFrame(rows, columns=["id", "label", "split", "group"])
    write_manifest(path, table, ["a", "b"], provenance("split", {}, seed=0))
    return table


def make_predictions(path, table, split_hash=None):
    rng = np.random.default_rng(0)
    k = max(int(table["label"].max()) + 1, 2)
    with h5py.File(path, "w") as f:
        for split in ("train", "val", "test"):
            rows = table[table["split"] == split]
            g = f.create_group(split)
            g["logits"] = rng.normal(size=(len(rows), k)).astype(np.float32)
            g["labels"] = rows["label"].to_numpy(np.int64)
            g.create_dataset("ids", data=np.array(rows["id"].tolist(), dtype=object),
                             dtype=h5py.string_dtype())
        f.attrs["class_names"] = ["a", "b"] if k == 2 else [f"c{i}" for i in range(k)]
        f.attrs["split_hash"] = split_hash or content_hash(table)
        h5_write_provenance(f, provenance("stage2", {}, {"split": split_hash or content_hash(table)}, 0))


def rows(n_per_split=4):
    out = []
    for split in ("train", "val", "test"):
        for i in range(n_per_split):
            out.append((f"{split}{i}", i % 2, split, f"lesion_{split}{i}"))
    return out


def test_clean_split_evaluates(tmp_path):
    table = make_manifest(tmp_path / "m.parquet", rows())
    make_predictions(tmp_path / "p.h5", table)
    rec = evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")
    assert rec["n_images"] == 4 and 0 <= rec["metrics"]["bacc"] <= 1


def test_predictions_from_another_split_are_refused(tmp_path):
    table = make_manifest(tmp_path / "m.parquet", rows())
    make_predictions(tmp_path / "p.h5", table, split_hash="0" * 64)
    with pytest.raises(ValueError, match="was computed on split 0000"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")
    assert not (tmp_path / "metrics.json").exists()


def test_a_test_image_in_training_is_a_leak(tmp_path):
    leaky = rows() + [("test0", 0, "train", "lesion_test0")]
    table = make_manifest(tmp_path / "m.parquet", leaky)
    make_predictions(tmp_path / "p.h5", table)
    with pytest.raises(ValueError, match="split leak: test image 'test0'"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")


def test_a_test_lesion_in_training_is_a_leak(tmp_path):
    leaky = rows()
    leaky[0] = ("train0", 0, "train", "lesion_test1")  # another image of a test lesion
    table = make_manifest(tmp_path / "m.parquet", leaky)
    make_predictions(tmp_path / "p.h5", table)
    with pytest.raises(ValueError, match="split leak: group 'lesion_test1'"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")


def test_predictions_must_cover_exactly_the_test_split(tmp_path):
    table = make_manifest(tmp_path / "m.parquet", rows())
    partial = table.drop(index=table.index[table["id"] == "test3"])
    make_predictions(tmp_path / "p.h5", partial, split_hash=content_hash(table))
    with pytest.raises(ValueError, match=r"missing: \['test3'\]"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")


def test_predictions_with_relabelled_images_are_refused(tmp_path):
    table = make_manifest(tmp_path / "m.parquet", rows())
    relabelled = table.copy()
    relabelled.loc[relabelled["id"] == "test2", "label"] = 1 - relabelled.loc[relabelled["id"] == "test2", "label"]
    make_predictions(tmp_path / "p.h5", relabelled, split_hash=content_hash(table))
    with pytest.raises(ValueError, match=r"1 test label\(s\) differ from .*image 'test2'"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")


def test_predictions_whose_provenance_contradicts_their_split_hash_are_refused(tmp_path):
    table = make_manifest(tmp_path / "m.parquet", rows())
    make_predictions(tmp_path / "p.h5", table)
    with h5py.File(tmp_path / "p.h5", "a") as f:
        h5_write_provenance(f, provenance("stage2", {}, {"split": "f" * 64}, 0))
    with pytest.raises(ValueError, match="inconsistent provenance, split .* but ffff"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "metrics.json", manifest_path=tmp_path / "m.parquet")


# ---- leak guards for every split protocol -------------------------------------------------


BASE = {"imbalance_ratio": 4, "val_fraction": 0.15, "test_fraction": 0.2, "val_per_class": 4,
        "test_per_class": 5, "n_cap": None, "class_order": "count"}


PROTOCOLS = {
    "lmd": {**BASE, "protocol": "lmd"},
    "cui": {**BASE, "protocol": "cui"},
    "random": {**BASE, "protocol": "random"},
    "predefined": {**BASE, "protocol": "predefined", "folds": None},
    "lmd_grouped": {**BASE, "protocol": "lmd", "grouped": True},
    "random_grouped": {**BASE, "protocol": "random", "grouped": True},
}


def synthetic_index(with_groups: bool) -> SourceIndex:
    """3 classes of 60/40/30 images; two images per group (a lesion); a published fold each."""
    labels = np.repeat([0, 1, 2], [60, 40, 30])
    n = len(labels)
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"id": [f"img{i:03d}" for i in range(n)], "label": labels,
                          "fold": rng.choice(["train", "train", "train", "val", "test"], size=n)})
    for c in range(3):  # every fold has every class
        idx = np.flatnonzero(labels == c)
        table.loc[idx[:3], "fold"] = ["train", "val", "test"]
    if with_groups:
        table["group"] = [f"lesion{i // 2:03d}" for i in range(n)]
    return SourceIndex(table, ["a", "b", "c"])


def split_manifest(path, protocol):
    cfg = PROTOCOLS[protocol]
    index = synthetic_index(with_groups="grouped" in protocol)
    table = build_split(index, cfg, 0)
    write_manifest(path, table, index.class_names,
                   provenance("split", {"dataset": {"source": "synthetic"}, "split": cfg}, seed=0))
    return table


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_protocol_s_split_evaluates_and_a_leaked_test_image_is_refused(tmp_path, protocol):
    table = split_manifest(tmp_path / "m.parquet", protocol)
    make_predictions(tmp_path / "p.h5", table)
    rec = evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "ok.json", manifest_path=tmp_path / "m.parquet")
    assert rec["n_images"] == int((table["split"] == "test").sum())
    for dest in ("train", "val"):  # one test image copied into training / validation
        victim = table[table["split"] == "test"].iloc[[0]].assign(split=dest)
        leaky = pd.concat([table, victim], ignore_index=True)
        path = tmp_path / f"leak_{dest}.parquet"
        write_manifest(path, leaky, ["a", "b", "c"], provenance("split", PROTOCOLS[protocol], seed=0))
        make_predictions(tmp_path / f"p_{dest}.h5", leaky)
        with pytest.raises(ValueError, match=f"split leak: test image {victim['id'].iloc[0]!r}"):
            evaluate_file(tmp_path / f"p_{dest}.h5", GROUPS, tmp_path / "m.json", manifest_path=path)


@pytest.mark.parametrize("protocol", ["lmd_grouped", "random_grouped"])
def test_grouped_protocols_refuse_a_test_lesion_in_training(tmp_path, protocol):
    table = split_manifest(tmp_path / "m.parquet", protocol)
    assert not (set(table.loc[table["split"] == "test", "group"])
                & set(table.loc[table["split"] != "test", "group"]))
    test_group = table.loc[table["split"] == "test", "group"].iloc[0]
    leaky = table.copy()
    leaky.loc[leaky.index[leaky["split"] == "train"][0], "group"] = test_group
    path = tmp_path / "leak.parquet"
    write_manifest(path, leaky, ["a", "b", "c"], provenance("split", {"split": PROTOCOLS[protocol]}, seed=0))
    make_predictions(tmp_path / "p.h5", leaky)
    with pytest.raises(ValueError, match=f"split leak: group {test_group!r}"):
        evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "m.json", manifest_path=path)


def test_a_naive_split_asked_for_is_evaluated_with_its_leak_recorded(tmp_path, caplog):
    cfg = {**BASE, "protocol": "lmd", "grouped": False}
    index = synthetic_index(with_groups=True)
    table = build_split(index, cfg, 0)
    write_manifest(tmp_path / "m.parquet", table, index.class_names,
                   provenance("split", {"dataset": {}, "split": cfg}, seed=0))
    make_predictions(tmp_path / "p.h5", table)
    rec = evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "m.json", manifest_path=tmp_path / "m.parquet")
    assert rec["naive_split_leak"]["shared_groups"] > 0
    assert "naive split (split.grouped: false)" in caplog.text


def test_leak_guard_on_a_real_source_split(tmp_path):
    """The embedded digits source through the cui protocol: clean, then a leaked test image."""
    from lmdlt.data.sources import get_source

    index = get_source("digits").index()
    cfg = {**BASE, "protocol": "cui", "imbalance_ratio": 10, "val_per_class": 15, "test_per_class": 30}
    table = build_split(index, cfg, 1)
    write_manifest(tmp_path / "m.parquet", table, index.class_names, provenance("split", cfg, seed=1))
    make_predictions(tmp_path / "p.h5", table)
    evaluate_file(tmp_path / "p.h5", GROUPS, tmp_path / "ok.json", manifest_path=tmp_path / "m.parquet")
    leaky = pd.concat([table, table[table["split"] == "test"].iloc[[5]].assign(split="val")])
    write_manifest(tmp_path / "l.parquet", leaky, index.class_names, provenance("split", cfg, seed=1))
    make_predictions(tmp_path / "l.h5", leaky)
    with pytest.raises(ValueError, match="split leak: test image"):
        evaluate_file(tmp_path / "l.h5", GROUPS, tmp_path / "m.json", manifest_path=tmp_path / "l.parquet")


# --- scores by hand on imbalanced data (balanced data hides several mistakes) -----------------

def auc_by_hand(pos_scores, neg_scores) -> float:
    """The fraction of (positive, negative) pairs ranked right, ties counting one half."""
    pairs = [(p > n) + 0.5 * (p == n) for p in pos_scores for n in neg_scores]
    return sum(pairs) / len(pairs)


def test_balanced_accuracy_and_macro_auc_by_hand_on_an_imbalanced_split():
    """BACC is the mean per-class recall, not the accuracy; AUC is the mean of the per-class
    one-vs-rest AUCs, not weighted by class size (the two differ only on imbalanced data)."""
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    logits = np.array([[3, 0, 0], [2, 1, 0], [1, 0, 0], [0, 1, 0], [0, 2, 1], [1, 0, 0], [0, 1, 2]], float)
    m = compute_metrics(y, logits)
    # predictions 0 0 0 1 1 0 2: recalls 3/4, 1/2, 1/1
    assert m["bacc"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    assert m["accuracy"] == pytest.approx(5 / 7)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    per_class = [auc_by_hand(probs[y == k, k], probs[y != k, k]) for k in range(3)]
    assert m["auc"] == pytest.approx(np.mean(per_class))
    assert abs(np.mean(per_class) - np.average(per_class, weights=[4, 2, 1])) > 0.01  # the test can tell


def test_binary_auc_ranks_by_the_positive_class():
    y = np.array([0, 0, 0, 1, 1])
    logits = np.array([[2, 0], [1, 0], [0, 0.5], [0, 1], [0.5, 0]], float)
    p1 = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    want = auc_by_hand(p1[y == 1], p1[y == 0])
    assert want == pytest.approx(5 / 6)
    assert compute_metrics(y, logits)["auc"] == pytest.approx(want)


def test_per_class_recall_keeps_a_class_absent_from_the_split():
    y = np.array([0, 0, 1, 1])
    logits = np.array([[2, 0, 0], [0, 2, 0], [0, 2, 0], [0, 2, 0]], float)
    m = compute_metrics(y, logits, {"head": [0], "medium": [1], "tail": [2]})
    assert m["per_class_recall"] == [0.5, 1.0, 0.0]
    assert np.isclose(m["tail_bacc"], 0.0)


def test_ece_by_hand_is_binned():
    """Confidences 0.95 (two right) and 0.55 (one right, one wrong): bins |1 - .95| and
    |.5 - .55|, each holding half the images: ECE 0.05, where one |accuracy - confidence| over
    all images would be 0."""
    def logit(p):
        return np.log(p / (1 - p))

    y = np.array([0, 0, 0, 1])
    logits = np.array([[logit(0.95), 0], [logit(0.95), 0], [logit(0.55), 0], [logit(0.55), 0]])
    assert compute_metrics(y, logits)["ece"] == pytest.approx(0.05)


def test_non_finite_logits_are_refused_and_train_counts_come_from_the_training_split(tmp_path):
    """evaluate_file: a NaN logit is an error naming the split, never a score; the record's
    training counts (the head/medium/tail groups are derived from them) are the training
    split's, not the scored split's."""
    rows_ = [(f"train{i}", int(i >= 5), "train", f"l{i}") for i in range(6)]  # 5 a, 1 b
    rows_ += [(f"{s}{i}", i % 2, s, f"l{s}{i}") for s in ("val", "test") for i in range(4)]
    table = make_manifest(tmp_path / "m.parquet", rows_)
    make_predictions(tmp_path / "p.h5", table)
    rec = evaluate_file(tmp_path / "p.h5", None, tmp_path / "m.json", manifest_path=tmp_path / "m.parquet")
    assert rec["train_counts"] == [5, 1]
    with h5py.File(tmp_path / "p.h5", "a") as f:
        logits = f["test/logits"][:]
        logits[1, 0] = np.nan
        f["test/logits"][...] = logits
    with pytest.raises(ValueError, match="non-finite logits in the test split"):
        evaluate_file(tmp_path / "p.h5", None, tmp_path / "m2.json", manifest_path=tmp_path / "m.parquet")
    assert not (tmp_path / "m2.json").exists()


def test_metrics_for_another_stage1_config_are_refused(tmp_path):
    """The predictions record their encoder's stage-1 config hash: scoring them for another
    stage-1 variant is an error naming both (no metrics written); for their own, it scores."""
    from lmdlt.io import ProvenanceError, sha256_json

    table = make_manifest(tmp_path / "m.parquet", rows())
    make_predictions(tmp_path / "p.h5", table)
    s1 = {"method": "ce", "epochs": 3}
    with h5py.File(tmp_path / "p.h5", "a") as f:
        h5_write_provenance(f, provenance("stage2", {}, {"split": content_hash(table),
                                                         "stage1_config": sha256_json(s1)}, 0))
    with pytest.raises(ProvenanceError, match=rf"p\.h5 was made for another stage-1 config "
                                              rf"\(config_hash {sha256_json(s1)}\)"):
        evaluate_file(tmp_path / "p.h5", None, tmp_path / "m.json", manifest_path=tmp_path / "m.parquet",
                      stage1_params={**s1, "epochs": 4})
    assert not (tmp_path / "m.json").exists()
    evaluate_file(tmp_path / "p.h5", None, tmp_path / "m.json", manifest_path=tmp_path / "m.parquet",
                  stage1_params=s1)
    assert (tmp_path / "m.json").exists()
