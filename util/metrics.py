"""Clustering and classification metrics.

NMI uses geometric averaging, I(U;V) / sqrt(H(U) H(V)), the definition of the DeepCluster paper
(scikit-learn's default switched to arithmetic averaging in 0.22).

Every clustering metric reads one sparse contingency table: the non-zero cells of n[i, j] = #{a == i, b == j}, found
by one sort of the N pair codes. Between two ImageNet epochs (N = 1.28M, k = 10,000) the dense k x k table would hold
10^8 cells; the sparse one holds at most N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class Contingency:
    """The non-zero cells of the contingency table of two labelings of the same N items."""

    rows: np.ndarray  # (nnz,) row (a-value) index of every non-zero cell, 0..len(row_sums)-1
    cols: np.ndarray  # (nnz,) column (b-value) index
    counts: np.ndarray  # (nnz,) int64 n_ij > 0
    row_sums: np.ndarray  # (ka,) items per distinct a-value, all > 0
    col_sums: np.ndarray  # (kb,) items per distinct b-value, all > 0

    @property
    def total(self) -> int:
        return int(self.row_sums.sum())

    def dense(self) -> np.ndarray:
        """(ka, kb) int64: for the Hungarian match, where one side is small (labels)."""
        table = np.zeros((len(self.row_sums), len(self.col_sums)), dtype=np.int64)
        table[self.rows, self.cols] = self.counts
        return table


def contingency(a: np.ndarray, b: np.ndarray) -> Contingency:
    """The sparse contingency table of two labelings (any integer values; only the values present count)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in length ({a.size} vs {b.size})")
    _, a_idx = np.unique(a, return_inverse=True)
    _, b_idx = np.unique(b, return_inverse=True)
    kb = int(b_idx.max()) + 1 if b_idx.size else 1
    codes, counts = np.unique(a_idx.astype(np.int64) * kb + b_idx, return_counts=True)  # one sort of N codes
    rows, cols = codes // kb, codes % kb
    return Contingency(rows, cols, counts, np.bincount(a_idx), np.bincount(b_idx, minlength=kb))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized mutual information with geometric averaging (paper, eq. in section 4)."""
    table = contingency(a, b)
    h_a, h_b = _entropy(table.row_sums), _entropy(table.col_sums)
    if h_a == 0.0 or h_b == 0.0:
        return 1.0 if h_a == h_b else 0.0
    n = float(table.total)
    # I(a; b) = sum_ij p_ij log(p_ij / (p_i p_j)) over the non-zero cells, written as counts: n_ij n / (n_i n_j)
    n_ij = table.counts.astype(np.float64)
    outer = table.row_sums[table.rows].astype(np.float64) * table.col_sums[table.cols]
    mutual_info = float((n_ij / n * (np.log(n_ij) + np.log(n) - np.log(outer))).sum())
    return max(0.0, min(1.0, mutual_info / np.sqrt(h_a * h_b)))


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index (Hubert and Arabie, 1985)."""
    table = contingency(a, b)
    n = table.total

    def pairs(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    sum_ij, sum_a, sum_b = pairs(table.counts), pairs(table.row_sums), pairs(table.col_sums)
    expected = sum_a * sum_b / (n * (n - 1) / 2) if n > 1 else 0.0
    max_index = (sum_a + sum_b) / 2
    if max_index == expected:
        return 1.0
    return (sum_ij - expected) / (max_index - expected)


def cluster_accuracy(labels: np.ndarray, assignments: np.ndarray) -> float:
    """Accuracy under the best one-to-one map of clusters to labels (Hungarian algorithm).

    With more clusters than labels, only as many clusters as labels can be matched, as usual. Only the clusters that
    hold some image can be matched to anything, so the dense table is (non-empty clusters x labels present)."""
    table = contingency(np.asarray(assignments).ravel(), np.asarray(labels).ravel()).dense()
    rows, cols = linear_sum_assignment(table, maximize=True)
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
    best = np.zeros(len(table.row_sums), dtype=np.int64)
    np.maximum.at(best, table.rows, table.counts)  # per cluster, its largest cell
    return float(best.sum() / table.total)
