"""Clustering and classification metrics.

NMI uses geometric averaging, I(U;V) / sqrt(H(U) H(V)), the definition of the DeepCluster paper
(scikit-learn's default switched to arithmetic averaging in 0.22).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense contingency table n[i, j] = #{a == i-th value, b == j-th value}."""
    _, a_idx = np.unique(a, return_inverse=True)
    _, b_idx = np.unique(b, return_inverse=True)
    table = np.zeros((a_idx.max() + 1, b_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (a_idx, b_idx), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized mutual information with geometric averaging (paper, eq. in section 4)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"nmi: label arrays differ in length ({a.size} vs {b.size})")
    table = contingency(a, b)
    h_a, h_b = _entropy(table.sum(1)), _entropy(table.sum(0))
    if h_a == 0.0 or h_b == 0.0:
        return 1.0 if h_a == h_b else 0.0
    n = table.sum()
    nz = table > 0
    p_ab = table[nz] / n
    p_a = table.sum(1, keepdims=True) / n
    p_b = table.sum(0, keepdims=True) / n
    outer = (p_a @ p_b)[nz]
    mutual_info = float((p_ab * np.log(p_ab / outer)).sum())
    return max(0.0, min(1.0, mutual_info / np.sqrt(h_a * h_b)))


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index (Hubert and Arabie, 1985)."""
    table = contingency(np.asarray(a).ravel(), np.asarray(b).ravel())
    n = table.sum()

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    sum_ij, sum_a, sum_b = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = sum_a * sum_b / (n * (n - 1) / 2) if n > 1 else 0.0
    max_index = (sum_a + sum_b) / 2
    if max_index == expected:
        return 1.0
    return (sum_ij - expected) / (max_index - expected)


def cluster_accuracy(labels: np.ndarray, assignments: np.ndarray) -> float:
    """Accuracy under the best one-to-one map of clusters to labels (Hungarian algorithm).

    With more clusters than labels, only as many clusters as labels can be matched, as usual.
    """
    table = contingency(np.asarray(assignments).ravel(), np.asarray(labels).ravel())
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Per image, whether the target is among the k highest scores: one (B,) bool tensor per k."""
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices  # (B, max_k)
    hits = top.eq(target[:, None])
    return [hits[:, : min(k, max_k)].any(1) for k in ks]


def hit_rate(hits: torch.Tensor) -> float:
    """The share of hits in percent (float32 mean, as every reported accuracy is computed)."""
    return 100.0 * hits.float().mean().item()


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracies in percent. logits: (B, C), target: (B,)."""
    return [hit_rate(hits) for hits in topk_hits(logits, target, ks)]


def purity(labels: np.ndarray, assignments: np.ndarray) -> float:
    """Cluster purity: every cluster votes for its majority label (meaningful when k >> number of classes, where
    Hungarian accuracy can match only as many clusters as there are labels)."""
    table = contingency(np.asarray(assignments).ravel(), np.asarray(labels).ravel())
    return float(table.max(1).sum() / table.sum())
