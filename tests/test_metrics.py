import numpy as np
import pytest
from sklearn import metrics as skm

from lmdlt.metrics import class_groups, compute_metrics


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
