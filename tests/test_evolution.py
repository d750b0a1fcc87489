"""Cluster evolution against plain-Python references: best-match Jaccard, purity, clusters followed back."""

from __future__ import annotations

import numpy as np
import pytest

from util.report.evolution import Overlaps, evolution_rows, follow_back, purity


def members(assignments: np.ndarray) -> dict[int, set[int]]:
    return {int(c): set(np.flatnonzero(assignments == c).tolist()) for c in np.unique(assignments)}


@pytest.mark.parametrize("seed", range(4))
def test_best_jaccard_equals_sets(seed):
    rng = np.random.default_rng(seed)
    before, after = rng.integers(0, 7, 300), rng.integers(0, 9, 300)
    after[after == 4] = 5  # an empty cluster in the later epoch: not reported
    found = Overlaps.of(before, after).best_jaccard()
    old, new = members(before), members(after)
    expected = [max(len(b & a) / len(b | a) for a in old.values()) for _, b in sorted(new.items())]
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-15)


def test_purity_and_rows_against_counting():
    assignments = np.array([0, 0, 0, 1, 1, 3, 3, 3, 3])
    targets = np.array([2, 2, 1, 0, 0, 1, 1, 1, 0])
    np.testing.assert_allclose(purity(assignments, targets), [2 / 3, 1.0, 0.0, 3 / 4])
    rows = evolution_rows([0, 1], [assignments, assignments.copy()], targets)
    assert rows[1]["jaccard_median"] == 1.0 and rows[1]["surviving"] == 1.0 and rows[0]["clusters"] == 3
    assert rows[0]["purity_mean"] == pytest.approx((2 + 2 + 3) / 9)


def test_clusters_are_followed_back_through_their_largest_overlap():
    epoch0 = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    epoch1 = np.array([5, 5, 5, 1, 1, 1, 1, 0, 0, 0])  # 5 <- 0 (3 images), 1 <- 1 (3 of 4), 0 <- 2
    lineages = follow_back([epoch0, epoch1])
    assert lineages == [[1, 1], [2, 0], [0, 5]]  # by size, ties by id


@pytest.mark.parametrize("seed", range(3))
def test_least_stable_clusters_against_sets(seed):
    from util.report.evolution import least_stable

    rng = np.random.default_rng(seed)
    before, after = rng.integers(0, 6, 200), rng.integers(0, 9, 200)
    after[after == 2] = 3  # an empty cluster: never reported
    old, new = members(before), members(after)
    expected = []
    for c, images in new.items():
        scores = {a: len(images & m) / len(images | m) for a, m in old.items()}
        match = min(scores, key=lambda a: (-scores[a], a))
        expected.append((scores[match], -len(images), c, match))
    expected.sort()
    found = least_stable(Overlaps.of(before, after), 4)
    assert [(u.cluster, u.match, u.size, u.match_size) for u in found] == [
        (c, a, -size, len(old[a])) for _, size, c, a in expected[:4]
    ]
    np.testing.assert_allclose([u.jaccard for u in found], [j for j, *_ in expected[:4]], rtol=0, atol=1e-15)
    assert len(least_stable(Overlaps.of(before, after), 50)) == len(new)


def test_map_points_keep_the_geometry_of_the_normalised_features():
    """With fewer feature dimensions than MAP_DIMS the projection is a rotation of the centred, L2-normalised
    features: every pairwise distance is kept, up to float16 rounding (half an ulp of 2**-10 relative per
    coordinate, coordinates at most 2 in size: 2**-10 each, sqrt(d) * 2 * 2**-10 per distance)."""
    import torch

    from util.knn import l2_normalize
    from util.pretrain.maps import MAP_POINTS, map_points

    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=(300, 8)).astype(np.float32))
    labels = rng.integers(0, 4, 300)
    points, kept = map_points(features, labels, seed=3)
    rows = np.random.default_rng(3).permutation(300)[:MAP_POINTS]
    assert points.dtype == np.float16 and points.shape == (300, 8) and np.array_equal(kept, labels[rows])
    normalised = l2_normalize(features[torch.from_numpy(rows)]).double().numpy()
    expected = np.linalg.norm(normalised[:, None] - normalised[None], axis=2)
    found = np.linalg.norm(points.astype(np.float64)[:, None] - points.astype(np.float64)[None], axis=2)
    assert np.abs(found - expected).max() <= np.sqrt(8) * 2 * 2.0**-10
