import numpy as np

from util.sampler import UniformClusterSampler, uniform_cluster_indices


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
