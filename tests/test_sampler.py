import numpy as np
import pytest

from util.pretrain.clustering import pseudo_labels
from util.pretrain.sampler import UniformClusterSampler, cluster_members, uniform_cluster_indices


def test_sampler_is_balanced_over_clusters():
    labels = np.concatenate([np.zeros(900), np.ones(90), np.full(10, 2)]).astype(int)
    indices = uniform_cluster_indices(labels, 1000, seed=0)
    counts = np.bincount(labels[indices], minlength=3)
    assert len(indices) == 1000
    assert counts.max() - counts.min() <= 2  # ceil(N / K) per cluster, then the shuffled list is cut to N
    assert set(indices[labels[indices] == 2]) == set(range(990, 1000))  # small clusters: every member used


def test_sampler_draws_without_replacement_from_large_clusters():
    labels = np.repeat(np.arange(4), 250)
    indices = uniform_cluster_indices(labels, 400, seed=1)
    assert len(np.unique(indices)) == 400


def test_sampler_is_reproducible_and_changes_with_epoch():
    labels = np.repeat(np.arange(10), 30)
    a = UniformClusterSampler(labels, 300, seed=0, epoch=3).indices
    b = UniformClusterSampler(labels, 300, seed=0, epoch=3).indices
    c = UniformClusterSampler(labels, 300, seed=0, epoch=4).indices
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_distributed_shards_partition_the_global_list():
    labels = np.repeat(np.arange(7), 13)
    full = UniformClusterSampler(labels, len(labels), seed=2, epoch=0).indices
    shards = [UniformClusterSampler(labels, len(labels), seed=2, epoch=0, rank=r, world_size=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # equal steps on every rank
    merged = np.empty(sum(len(s) for s in shards), dtype=int)
    for r, shard in enumerate(shards):
        merged[r::3] = shard.indices
    np.testing.assert_array_equal(merged[: len(full)], full)


def reference_uniform_indices(labels: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """The sampler written out the brute-force way (one pass over the labels per cluster), as a reference."""
    rng = np.random.default_rng(seed)
    clusters = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
    per_cluster = -(-num_samples // sum(m.size > 0 for m in clusters))
    draws = []
    for members in (m for m in clusters if m.size > 0):
        if members.size >= per_cluster:
            draws.append(rng.choice(members, per_cluster, replace=False))
        else:
            draws.append(np.concatenate([members, rng.choice(members, per_cluster - members.size, replace=True)]))
    indices = np.concatenate(draws)
    rng.shuffle(indices)
    return indices[:num_samples]


@pytest.mark.parametrize("num_clusters", [7, 300, 70_000])  # 70k: beyond 16-bit labels
def test_sampler_equals_the_brute_force_reference(num_clusters):
    rng = np.random.default_rng(num_clusters)
    labels = rng.integers(0, num_clusters, 5000) * 3  # two clusters in three stay empty
    np.testing.assert_array_equal(
        uniform_cluster_indices(labels, 4000, seed=5), reference_uniform_indices(labels, 4000, seed=5)
    )
    members = cluster_members(labels)
    assert len(members) == labels.max() + 1
    for c in rng.choice(labels.max() + 1, 50):
        np.testing.assert_array_equal(members[c], np.flatnonzero(labels == c))


def test_pseudo_labels_equal_the_sorted_unique_inverse():
    assignments = np.random.default_rng(0).integers(0, 1000, 3000) * 2
    labels, num = pseudo_labels(assignments)
    _, expected = np.unique(assignments, return_inverse=True)
    np.testing.assert_array_equal(labels, expected)
    assert num == len(np.unique(assignments)) and labels.dtype == np.int64
