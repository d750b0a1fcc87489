import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from util.metrics import ari, cluster_accuracy, nmi, topk_accuracy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_equals_sklearn_geometric(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 7, 500), rng.integers(0, 11, 500)
    b[:250] = a[:250]  # partly dependent
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b, average_method="geometric"), abs=1e-10)


def test_nmi_differs_from_sklearn_default_arithmetic():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 3, 300), rng.integers(0, 30, 300)
    b[:200] = a[:200]
    assert abs(nmi(a, b) - normalized_mutual_info_score(a, b)) > 1e-3  # the two averagings are not the same


def test_nmi_edge_cases():
    labels = np.array([0, 0, 1, 1])
    assert nmi(labels, labels) == pytest.approx(1.0)
    assert nmi(labels, np.array([5, 5, 9, 9])) == pytest.approx(1.0)  # invariant to renaming
    assert nmi(np.zeros(4), labels) == 0.0
    with pytest.raises(ValueError):
        nmi(labels, labels[:3])


def test_ari_equals_sklearn():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 5, 400), rng.integers(0, 6, 400)
    b[:300] = a[:300]
    assert ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-10)


def test_cluster_accuracy_hungarian():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_accuracy(labels, np.array([2, 2, 0, 0, 1, 1])) == 1.0
    assert cluster_accuracy(labels, np.array([2, 2, 0, 1, 1, 1])) == pytest.approx(5 / 6)


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 1, 0])
    top1, top2 = topk_accuracy(logits, target, ks=(1, 2))
    assert top1 == pytest.approx(100 / 3)
    assert top2 == pytest.approx(200 / 3)


def test_purity_is_the_majority_vote_accuracy():
    from util.metrics import purity

    rng = np.random.default_rng(4)
    labels, clusters = rng.integers(0, 10, 1000), rng.integers(0, 100, 1000)
    majority = sum(np.bincount(labels[clusters == c]).max() for c in np.unique(clusters))
    assert purity(labels, clusters) == pytest.approx(majority / 1000)
    assert purity(labels, np.arange(1000)) == 1.0  # one image per cluster: trivially pure


def test_sparse_metrics_equal_sklearn_and_a_dense_table_with_many_clusters():
    """Two epochs' assignments with k far above what a dense k x k table would be cheap for, and labels: NMI and
    ARI equal scikit-learn's; the Hungarian accuracy equals one computed on the full dense table (absent clusters
    and labels included)."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(7)
    num, k = 20_000, 3_000
    before = rng.integers(0, k, num) * 3  # sparse ids: values absent in between
    after = np.where(rng.random(num) < 0.6, before // 3, rng.integers(0, k, num))
    labels = rng.integers(0, 10, num)
    assert nmi(after, before) == pytest.approx(
        normalized_mutual_info_score(after, before, average_method="geometric"), abs=1e-12
    )
    assert nmi(after, labels) == pytest.approx(
        normalized_mutual_info_score(after, labels, average_method="geometric"), abs=1e-12
    )
    assert ari(after, labels) == pytest.approx(adjusted_rand_score(after, labels), abs=1e-12)
    dense = np.zeros((k, 10), dtype=np.int64)
    np.add.at(dense, (after, labels), 1)
    rows, cols = linear_sum_assignment(-dense)
    assert cluster_accuracy(labels, after) == dense[rows, cols].sum() / num
