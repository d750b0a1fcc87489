"""Weighted kNN classification on frozen features (Wu et al. 2018, as used by DINO and the AND/InstDisc papers).

One implementation serves `eval_linear.py` (all training features at once) and the monitor of
`main_deepcluster.py` (training features streamed batch by batch during the epoch's extraction pass, so the
monitor never holds N x D training features and costs one extra pass over the held-out split only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from util.dist import all_gather_rows, current

KNN_K, KNN_TEMPERATURE = 20, 0.07  # neighbours and vote temperature of every weighted kNN here (Wu et al. 2018)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows to unit L2 norm, float32: x / max(|x|, 1e-12). x: (N, D). The one normaliser of the code base (the SVM
    protocol's own, norm + 1e-5 in float64, is util/eval/svm.py's)."""
    return F.normalize(x.float(), dim=1)


class StreamingKnn:
    """Running top-k cosine neighbours of a fixed set of test features among streamed training features.

    Votes: every one of the k nearest training rows adds exp(sim / T) to its class (weighted kNN, k=20, T=0.07 by
    default, DINO's `knn_classifier`). The result does not depend on how the training rows are batched or sharded
    across processes (up to ties in similarity).
    """

    def __init__(
        self,
        test_feats: torch.Tensor,
        num_classes: int,
        k: int = KNN_K,
        temperature: float = KNN_TEMPERATURE,
        chunk: int = 4096,
    ) -> None:
        self.test = l2_normalize(test_feats)  # (M, D)
        self.num_classes, self.k, self.temperature, self.chunk = num_classes, k, temperature, chunk
        num_test, device = self.test.shape[0], self.test.device
        self.sims = torch.empty(num_test, 0, device=device)  # (M, <=k) best similarities so far
        self.labels = torch.empty(num_test, 0, dtype=torch.long, device=device)  # (M, <=k) their classes

    def update(self, train_feats: torch.Tensor, train_labels: torch.Tensor) -> StreamingKnn:
        """Fold in training rows. train_feats: (B, D) (any norm; normalised here), train_labels: (B,)."""
        train_feats, train_labels = train_feats.to(self.test.device), train_labels.to(self.test.device)
        for start in range(0, train_feats.shape[0], self.chunk):
            block = l2_normalize(train_feats[start : start + self.chunk])
            sims = self.test @ block.T  # (M, b)
            labels = train_labels[start : start + self.chunk].expand(sims.shape[0], -1)
            self._merge(torch.cat([self.sims, sims], 1), torch.cat([self.labels, labels], 1))
        return self

    def _merge(self, sims: torch.Tensor, labels: torch.Tensor) -> None:
        best, idx = sims.topk(min(self.k, sims.shape[1]), dim=1)
        self.sims, self.labels = best, labels.gather(1, idx)

    def all_reduce(self) -> StreamingKnn:
        """Distributed: merge every rank's running neighbours (each rank streamed its own shard)."""
        world = current().world_size
        if world > 1:
            sims = all_gather_rows(self.sims.T.contiguous()).reshape(world, self.sims.shape[1], -1)
            labels = all_gather_rows(self.labels.T.contiguous()).reshape(world, self.labels.shape[1], -1)
            self._merge(sims.permute(2, 0, 1).flatten(1), labels.permute(2, 0, 1).flatten(1))
        return self

    def scores(self) -> torch.Tensor:
        """(M, C) class votes."""
        votes = torch.zeros(self.sims.shape[0], self.num_classes, device=self.sims.device)
        return votes.scatter_add_(1, self.labels, (self.sims / self.temperature).exp())


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> torch.Tensor:
    """Weighted kNN class scores (M, C) of test_feats (M, D) given train_feats (N, D) with labels (N,)."""
    return StreamingKnn(test_feats, num_classes, k, temperature).update(train_feats, train_labels).scores()
