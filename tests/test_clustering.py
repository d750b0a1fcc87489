import numpy as np
import pytest
import torch

from util.errors import UserError
from util.knn import l2_normalize
from util.metrics import nmi
from util.pretrain.clustering import (
    ClusteringSpec,
    PCAWhitening,
    faiss_kmeans,
    power_iteration_clustering,
    pseudo_labels,
    run_clustering,
    torch_kmeans,
)


def planted(num_clusters=8, per_cluster=60, dim=32, spread=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = l2_normalize(torch.randn(num_clusters, dim, generator=gen))
    labels = torch.arange(num_clusters).repeat_interleave(per_cluster)
    x = centers[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    return l2_normalize(x), labels.numpy()


def test_pca_whitening_gives_identity_covariance():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 64, generator=gen) @ torch.randn(64, 64, generator=gen) + 3.0
    y = PCAWhitening(16).fit(x).apply(x).double()
    cov = torch.cov(y.T)
    assert y.shape == (3000, 16)
    assert torch.allclose(cov, torch.eye(16, dtype=torch.float64), atol=1e-3)
    assert y.mean(0).abs().max() < 1e-4


def test_pca_rejects_too_few_images_and_non_finite_features():
    with pytest.raises(UserError, match="too few"):
        PCAWhitening(16).fit(torch.randn(10, 40))
    with pytest.raises(UserError, match="NaN"):
        PCAWhitening(2).fit(torch.full((50, 4), float("nan")))


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_kmeans_recovers_planted_clusters(backend):
    # Over-clustering (k = 2x the planted clusters), as DeepCluster does: no cluster may straddle two planted
    # ones, and every planted cluster is found (a random init can split one in two, never merge two).
    x, labels = planted()
    result = run_clustering(x, ClusteringSpec(16, backend=backend), seed=3)
    table = np.zeros((16, 8), dtype=int)
    np.add.at(table, (result.assignments, labels), 1)
    assert ((table > 0).sum(1) <= 1).all()
    assert (table.sum(0) > 0).all() and result.empty_clusters == 0
    assert nmi(result.assignments, labels) > 0.8


def test_backends_agree_on_easy_data():
    # Two well-separated clusters: Lloyd's algorithm converges to them from any initialisation.
    for seed in range(5):
        x, labels = planted(num_clusters=2, per_cluster=150, seed=seed)
        a = faiss_kmeans(x, 2, 20, seed=seed).assignments
        b = torch_kmeans(x, 2, 20, seed=seed).assignments
        assert nmi(a, b) == pytest.approx(1.0) and nmi(a, labels) == pytest.approx(1.0)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_same_seed_same_assignments(backend):
    x, _ = planted(num_clusters=20, spread=0.5, seed=7)  # overlapping clusters: the seed matters
    first = run_clustering(x, ClusteringSpec(20, backend=backend), seed=11).assignments
    again = run_clustering(x, ClusteringSpec(20, backend=backend), seed=11).assignments
    other = run_clustering(x, ClusteringSpec(20, backend=backend), seed=12).assignments
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_torch_kmeans_handles_empty_clusters():
    # 3 distinct points repeated: k=6 leaves clusters empty whatever the re-seeding does.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]).repeat(20, 1)
    result = torch_kmeans(x, 6, 10, seed=0)
    assert result.empty_clusters == 3
    assert result.reseeded_clusters > 0
    labels, num = pseudo_labels(result.assignments)
    assert num == 3 and set(labels) == {0, 1, 2}


def test_faiss_counts_empty_clusters():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(30, 1)
    result = faiss_kmeans(x, 4, 10, seed=0)
    assert result.empty_clusters == 2
    assert pseudo_labels(result.assignments)[1] == 2


def test_k_larger_than_images_is_a_user_error():
    with pytest.raises(UserError, match="larger than the 10 images"):
        run_clustering(torch.randn(10, 4), ClusteringSpec(11, backend="torch"), seed=0)


def test_pic_finds_planted_clusters():
    x, labels = planted(num_clusters=5, per_cluster=80, spread=0.03)
    result = power_iteration_clustering(x, num_neighbors=5, sigma=0.2, alpha=0.001, niter=200)
    # PIC finds its own number of clusters; every found cluster must be pure (no merge across planted ones).
    table = np.zeros((result.num_clusters, 5), dtype=int)
    np.add.at(table, (result.assignments, labels), 1)
    assert (table > 0).sum(1).max() == 1
    assert result.num_clusters < len(labels) // 4  # it does group points


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pic_with_enough_neighbours_finds_about_the_planted_clusters(seed):
    """With 20 neighbours each blob's kNN degree has one peak, so PIC finds about the planted number of clusters
    (measured over 8 seeds: 5 or 6 clusters, NMI >= 0.96); at the paper's 5 neighbours it over-segments (below)."""
    from util.metrics import purity

    x, labels = planted(num_clusters=5, per_cluster=80, dim=16, spread=0.03, seed=seed)
    result = power_iteration_clustering(x, num_neighbors=20, sigma=0.2, alpha=0.001, niter=200)
    assert 5 <= result.num_clusters <= 7
    assert nmi(result.assignments, labels) > 0.9
    assert purity(labels, result.assignments) == 1.0


def test_pca_whitening_with_fewer_samples_than_dimensions():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 20, generator=gen) @ torch.randn(20, 500, generator=gen)  # rank 20 in 500 dims
    y = PCAWhitening(16).fit(x).apply(x).double()
    assert torch.allclose(torch.cov(y.T), torch.eye(16, dtype=torch.float64), atol=1e-6)


def test_pic_links_follow_the_weighted_gain_not_the_highest_neighbour():
    """Point 0 has two uphill neighbours: 1 (w=1, gain 1 x 0.4) and 2 (w=0.5, gain 0.5 x 0.5). The original rule
    follows the largest w_ij (v_j - v_i), so 0 joins 1, although 2 has the larger v."""
    from util.pretrain.clustering import _resolve_parents

    v = torch.tensor([0.1, 0.5, 0.6])
    src, dst = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 0, 2, 0])
    weight = torch.tensor([1.0, 1.0, 0.5, 0.5])
    assert _resolve_parents(v, src, dst, weight).tolist() == [1, 1, 2]


def test_pic_splits_but_never_merges_planted_clusters_and_leaves_no_singletons():
    """PIC's clusters are the basins of local maxima of v (about the weighted degree at alpha=0.001): on Gaussian
    blobs it over-segments (measured: 16 clusters for 5 planted at 5 neighbours), but a basin never spans two blobs."""
    from util.metrics import purity

    x, labels = planted(num_clusters=5, per_cluster=80, spread=0.03)
    result = power_iteration_clustering(x, num_neighbors=5, sigma=0.2, alpha=0.001, niter=200)
    assert np.bincount(result.assignments).min() >= 2, "singletons join their nearest non-singleton neighbour"
    assert purity(labels, result.assignments) == 1.0
    assert 5 <= result.num_clusters < len(labels) // 4


@pytest.mark.parametrize("block_elements", [100, 2**24])  # blocks of 10 x 10 (uneven at 997 rows), or one
def test_knn_graph_in_blocks_finds_the_true_neighbours(block_elements):
    """Against a brute-force float64 reference: the nnn returned similarities are the true nnn best, up to float32
    rounding of the dot products (<= 1e-5 for unit vectors of 16 dims), never the point itself, nearest first."""
    from util.pretrain.clustering import knn_graph

    x = torch.nn.functional.normalize(torch.randn(997, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    idx, sq = knn_graph(x, 7, block_elements=block_elements)
    sims = (x.double() @ x.double().T).fill_diagonal_(-float("inf"))
    true_best = sims.topk(7, dim=1).values
    np.testing.assert_allclose(1 - sq.double() / 2, true_best, atol=1e-5)
    np.testing.assert_allclose(sims.gather(1, idx), true_best, atol=1e-5)  # they are those points
    assert not (idx == torch.arange(997)[:, None]).any()
    assert all(len(set(row)) == 7 for row in idx.tolist())


def test_pca_fit_in_chunks_equals_the_dense_float64_reference(monkeypatch):
    """The covariance is accumulated over float64 chunks (bounded memory); against numpy's dense float64 PCA on
    data with well-separated variances, the whitening matrices agree (up to each column's sign) to 1e-8, far above
    float64 summation-order effects and far below anything that matters."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(3000, 12, generator=gen) * torch.linspace(0.5, 6.0, 12)) @ torch.linalg.qr(
        torch.randn(12, 12, generator=gen)
    )[0] + 3.0
    monkeypatch.setattr(PCAWhitening, "CHUNK_ELEMENTS", 12 * 7)  # chunks of 7 rows, uneven at the end
    pca = PCAWhitening(5).fit(x)
    data = x.double().numpy()
    values, vectors = np.linalg.eigh(np.cov(data, rowvar=False))
    expected = vectors[:, ::-1][:, :5] / np.sqrt(values[::-1][:5])
    got = pca.projection.numpy()
    np.testing.assert_allclose(got * np.sign(got[0] / expected[0]), expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pca.mean.numpy(), data.mean(0), rtol=1e-12)


def test_pca_fit_on_row_blocks_equals_the_fit_on_their_concatenation(monkeypatch):
    """A buffer of batches is fit without concatenating it; the float64 statistics are accumulated over the same
    chunks as for one tensor, so the result is bit for bit the same."""
    x = torch.randn(103, 9, generator=torch.Generator().manual_seed(4)) * torch.linspace(1, 3, 9)
    monkeypatch.setattr(PCAWhitening, "CHUNK_ELEMENTS", 9 * 10)  # chunks of 10 rows across batches of 7
    blocks = list(torch.split(x, 7))
    a, b = PCAWhitening(4).fit(x), PCAWhitening(4).fit(blocks)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.projection, b.projection)
