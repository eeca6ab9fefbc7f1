"""Every sampler's empirical class frequencies over many draws match its definition."""
import numpy as np
import pytest
import torch

from lmdlt.data.samplers import (available_samplers, class_probabilities, make_sampler,
                                 sample_weights, set_sampler_epoch)

COUNTS = np.array([60, 25, 10, 4, 1])
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)
rng = np.random.default_rng(0)
LABELS = LABELS[rng.permutation(len(LABELS))]  # order must not matter


def empirical(sampler, draws: int) -> np.ndarray:
    idx = []
    while len(idx) < draws:
        idx.extend(list(iter(sampler)))
    return np.bincount(LABELS[np.asarray(idx[:draws])], minlength=len(COUNTS)) / draws


def expected(q: float) -> np.ndarray:
    p = COUNTS.astype(float) ** q
    return p / p.sum()


def assert_frequencies(freq, p, draws):
    # 5 binomial standard deviations per class
    tol = 5 * np.sqrt(p * (1 - p) / draws) + 1e-9
    assert np.all(np.abs(freq - p) <= tol), (freq, p)


@pytest.mark.parametrize("name,kwargs,q", [
    ("sqrt", {}, 0.5),
    ("class_balanced", {}, 0.0),
    ("class_aware", {"gamma": 0.0}, 0.0),
    ("class_aware", {"gamma": 0.5}, -0.5),
    ("class_aware", {"gamma": 1.0}, -1.0),   # reverse: p(k) proportional to 1/n_k
])
def test_weighted_samplers_draw_classes_in_proportion_to_n_k_power_q(name, kwargs, q):
    draws = 200_000
    s = make_sampler(LABELS, name, torch.Generator().manual_seed(1), num_samples=draws, **kwargs)
    assert_frequencies(empirical(s, draws), expected(q), draws)
    np.testing.assert_allclose(class_probabilities(LABELS, name, **kwargs), expected(q))


def test_instance_sampler_is_a_shuffled_epoch():
    s = make_sampler(LABELS, "instance", torch.Generator().manual_seed(1))
    one_epoch = list(iter(s))
    assert sorted(one_epoch) == list(range(len(LABELS)))           # each image once
    np.testing.assert_allclose(empirical(s, len(LABELS) * 50), expected(1.0))


def test_reverse_sampler_puts_the_tail_first():
    p = class_probabilities(LABELS, "class_aware", gamma=1.0)
    assert np.all(np.diff(p) > 0) and p[-1] / p[0] == pytest.approx(COUNTS[0] / COUNTS[-1])


def test_progressive_sampler_moves_from_instance_to_balanced_with_the_epoch():
    epochs, draws = 5, 100_000
    s = make_sampler(LABELS, "progressive", torch.Generator().manual_seed(2), num_samples=draws,
                     epochs=epochs)
    for epoch in range(epochs):
        set_sampler_epoch(s, epoch)
        t = epoch / epochs
        p = (1 - t) * expected(1.0) + t * expected(0.0)
        assert_frequencies(empirical(s, draws), p, draws)
    with pytest.raises(ValueError, match="needs the number of epochs"):
        make_sampler(LABELS, "progressive", torch.Generator())


def test_sample_weights_share_a_class_probability_among_its_samples():
    w = sample_weights(LABELS, "class_balanced")
    assert w.sum() == pytest.approx(1.0)
    per_class = np.array([w[LABELS == k].sum() for k in range(len(COUNTS))])
    np.testing.assert_allclose(per_class, 1 / len(COUNTS))


def test_unknown_samplers_and_options_are_clear_errors():
    assert set(available_samplers()) == {"instance", "sqrt", "class_balanced", "class_aware", "progressive"}
    with pytest.raises(ValueError, match="unknown sampler 'balanced'"):
        make_sampler(LABELS, "balanced", torch.Generator())
    with pytest.raises(ValueError, match="takes no option"):
        make_sampler(LABELS, "sqrt", torch.Generator(), gamma=1.0)
    with pytest.raises(ValueError, match="takes no option"):
        make_sampler(LABELS, "instance", torch.Generator(), gamma=1.0)
