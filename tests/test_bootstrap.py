"""util/eval/bootstrap.py: intervals over the test images, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from util.eval.bootstrap import (
    RESAMPLES,
    accuracy_statistic,
    add_intervals,
    map_statistic,
    percentile_interval,
    resample_indices,
    resampled,
)
from util.eval.svm import voc_ap


def hits_with(n: int, correct: int, seed: int = 0) -> np.ndarray:
    hits = np.zeros(n, dtype=bool)
    hits[np.random.default_rng(seed).permutation(n)[:correct]] = True
    return hits


def test_accuracy_statistic_is_the_mean_of_the_drawn_images():
    """A second computation of every resample: count the drawn images' hits one index at a time."""
    hits = hits_with(57, 23)
    samples = resampled(accuracy_statistic(hits), len(hits), seed=3, resamples=120)
    expected = [
        100.0 * sum(int(hits[i]) for i in rows) / len(rows) for idx in resample_indices(57, 3, 120) for rows in idx
    ]
    assert samples.tolist() == pytest.approx(expected, rel=1e-12)
    assert len(samples) == 120


def test_accuracy_interval_follows_the_binomial_law():
    """Resampling n images of which m are hits draws Binomial(n, m/n) hits: the bootstrap interval estimates its
    2.5th and 97.5th percentiles (scipy's exact quantiles). The draws are integers from a fixed seed, the same on
    every machine; the bound is three Monte-Carlo standard errors of a percentile estimated from RESAMPLES draws."""
    n, m = 400, 280
    low, high = percentile_interval(resampled(accuracy_statistic(hits_with(n, m)), n, seed=0))
    exact = 100.0 * binom.ppf([0.025, 0.975], n, m / n) / n
    sd = 100.0 * np.sqrt(m / n * (1 - m / n) / n)
    tolerance = 3 * sd * np.sqrt(0.025 * 0.975 / RESAMPLES) / 0.058  # 0.058: the normal density at its 2.5th pct
    assert abs(low - exact[0]) <= tolerance and abs(high - exact[1]) <= tolerance, (low, high, exact, tolerance)


def test_map_statistic_equals_the_per_class_voc_ap():
    """The resampled mAP against the scalar all-point AP computed class by class on the same drawn images
    (difficult images ignored; a class without a positive in the set left out)."""
    rng = np.random.default_rng(1)
    n, classes = 80, 5
    labels = rng.choice([1, -1, -1, -1, 0], size=(n, classes))
    labels[:, 4] = np.where(labels[:, 4] == 1, -1, labels[:, 4])  # a class with no positive at all
    labels[0, 4] = 1  # ... but one, so that some resamples have it and some do not
    scores = rng.normal(size=(n, classes)) + 0.8 * (labels == 1)
    samples = resampled(map_statistic(scores, labels), n, seed=5, resamples=60)
    expected = []
    for idx in resample_indices(n, 5, 60):
        for rows in idx:
            aps = [voc_ap(scores[rows, c], labels[rows, c]) for c in range(classes)]
            expected.append(100.0 * np.nanmean(aps))
    assert samples.tolist() == pytest.approx(expected, rel=1e-12)
    no_positive = [not (labels[rows, 4] == 1).any() for idx in resample_indices(n, 5, 60) for rows in idx]
    assert any(no_positive) and not all(no_positive)  # both cases were exercised


def test_paired_gain():
    n = 300
    base = hits_with(n, 120, seed=1)
    better = base.copy()
    better[np.flatnonzero(~base)[:30]] = True  # right wherever the base is, and on 30 more images
    results = {"knn_top1": 100.0 * better.mean(), "random_init_knn_top1": 100.0 * base.mean()}
    added = add_intervals(
        results, {"knn_top1": accuracy_statistic(better), "random_init_knn_top1": accuracy_statistic(base)}, n, 7
    )
    assert set(added) == {
        "knn_top1_ci95",
        "random_init_knn_top1_ci95",
        "knn_top1_gain",
        "knn_top1_gain_ci95",
        "knn_top1_gain_over",
    }
    assert results["knn_top1_gain"] == results["knn_top1"] - results["random_init_knn_top1"]
    # every resample draws the same images for both networks: the gain is never negative, and its interval is the
    # percentiles of the differences of the two networks' resampled accuracies
    low, high = results["knn_top1_gain_ci95"]
    assert low >= 0
    apart = resampled(accuracy_statistic(better), n, 7) - resampled(accuracy_statistic(base), n, 7)
    assert [low, high] == percentile_interval(apart)
    # the same network twice: no gain, an interval of exactly zero width
    same = {"top1": 40.0, "random_init_top1": 40.0}
    add_intervals(same, {"top1": accuracy_statistic(base), "random_init_top1": accuracy_statistic(base)}, n, 7)
    assert same["top1_gain"] == 0.0 and same["top1_gain_ci95"] == [0.0, 0.0]


def test_the_gain_is_over_the_higher_random_network_and_apart_over_the_pixels():
    """Two random-init variants (BatchNorm initial / recomputed): KEY_gain pairs the pretrained network with the one
    of higher accuracy, KEY_gain_over names it; the pixels get their own paired gain."""
    n = 300
    trained, initial, recomputed, pixels = (hits_with(n, count, seed=s) for s, count in enumerate((200, 120, 150, 180)))
    statistics = {
        "knn_top1": accuracy_statistic(trained),
        "random_init_knn_top1": accuracy_statistic(initial),
        "random_init_recomputed_bn_knn_top1": accuracy_statistic(recomputed),
        "pixels_knn_top1": accuracy_statistic(pixels),
    }
    results = {
        key: 100.0 * hits.mean() for key, hits in zip(statistics, (trained, initial, recomputed, pixels), strict=True)
    }
    add_intervals(results, statistics, n, 3)
    assert results["knn_top1_gain_over"] == "random_init_recomputed_bn"
    assert results["knn_top1_gain"] == results["knn_top1"] - results["random_init_recomputed_bn_knn_top1"]
    apart = resampled(statistics["knn_top1"], n, 3) - resampled(statistics["random_init_recomputed_bn_knn_top1"], n, 3)
    assert results["knn_top1_gain_ci95"] == percentile_interval(apart)
    assert results["knn_top1_gain_pixels"] == results["knn_top1"] - results["pixels_knn_top1"]
    apart = resampled(statistics["knn_top1"], n, 3) - resampled(statistics["pixels_knn_top1"], n, 3)
    assert results["knn_top1_gain_pixels_ci95"] == percentile_interval(apart)


def test_intervals_follow_the_seed_and_only_the_seed():
    hits = hits_with(200, 90)
    one = percentile_interval(resampled(accuracy_statistic(hits), 200, seed=0))
    assert one == percentile_interval(resampled(accuracy_statistic(hits), 200, seed=0))
    assert one != percentile_interval(resampled(accuracy_statistic(hits), 200, seed=1))
    alone = {"random_init_top1": 45.0}
    add_intervals(alone, {"random_init_top1": accuracy_statistic(hits)}, 200, 0)
    assert set(alone) == {"random_init_top1", "random_init_top1_ci95"}  # no pretrained network: no gain


def test_a_reported_best_epoch_is_picked_again_on_every_resample():
    """A second computation: per resampled set, count each epoch's drawn hits one image at a time, take the first
    epoch with the most top-1 hits, report its top-5 share."""
    rng = np.random.default_rng(4)
    top1 = rng.random((6, 90)) < np.linspace(0.3, 0.6, 6)[:, None]
    top5 = top1 | (rng.random((6, 90)) < 0.4)
    samples = resampled(accuracy_statistic(top5, select=top1), 90, seed=2, resamples=80)
    expected = []
    for idx in resample_indices(90, 2, 80):
        for rows in idx:
            counts = [sum(int(top1[e, i]) for i in rows) for e in range(6)]
            best = counts.index(max(counts))
            expected.append(100.0 * sum(int(top5[best, i]) for i in rows) / 90)
    assert samples.tolist() == pytest.approx(expected, rel=1e-12)
    # on the test images themselves (no resampling) the pick is the protocol's: the reported number
    identity = np.arange(90)[None]
    best = int(np.argmax(top1.sum(1)))
    assert accuracy_statistic(top5, select=top1)(identity)[0] == pytest.approx(100.0 * top5[best].mean(), rel=1e-12)


def test_the_best_layers_map_is_picked_again_on_every_resample():
    rng = np.random.default_rng(6)
    labels = rng.choice([1, -1, -1, 0], size=(60, 3))
    layers = [rng.normal(size=(60, 3)) + shift * (labels == 1) for shift in (0.2, 1.0, 0.6)]
    samples = resampled(map_statistic(layers, labels), 60, seed=1, resamples=40)
    single = [resampled(map_statistic(scores, labels), 60, seed=1, resamples=40) for scores in layers]
    assert samples.tolist() == np.max(single, axis=0).tolist()  # the best of the layers, set by set
