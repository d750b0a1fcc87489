"""Uniform-over-clusters sampling of the training images (paper, section 3.4 "Avoiding trivial solutions")."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from util.seeds import derive_seed


def uniform_cluster_indices(pseudo_labels: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """About `num_samples` image indices drawn uniformly over clusters, shuffled.

    Every non-empty cluster contributes ceil(num_samples / K') images: all of its members (without replacement)
    when it is large enough, each of them at least once then the rest with replacement when it is smaller.
    """
    rng = np.random.default_rng(seed)
    clusters = [members for members in cluster_members(pseudo_labels) if members.size > 0]
    per_cluster = -(-num_samples // len(clusters))  # ceil(N / K') for the K' non-empty clusters
    draws = []
    for members in clusters:
        if members.size >= per_cluster:
            draws.append(rng.choice(members, per_cluster, replace=False))
        else:
            extra = rng.choice(members, per_cluster - members.size, replace=True)
            draws.append(np.concatenate([members, extra]))
    indices = np.concatenate(draws)  # (K' x per_cluster,) >= num_samples
    rng.shuffle(indices)
    return indices[:num_samples]


def cluster_members(pseudo_labels: np.ndarray) -> list[np.ndarray]:
    """The image indices of every cluster 0..max, each in increasing order, in O(N) (one stable counting sort)
    rather than one pass over the N labels per cluster (O(N K): 1.3e10 comparisons per ImageNet epoch)."""
    labels = np.asarray(pseudo_labels)
    small = labels.astype(np.uint16) if labels.max() < 2**16 else labels  # numpy radix-sorts 16-bit integers
    order = np.argsort(small, kind="stable")
    return np.split(order, np.cumsum(np.bincount(labels))[:-1])


class UniformClusterSampler(torch.utils.data.Sampler[int]):
    """Distributed-aware sampler: every rank draws the same global list from (seed, epoch), takes its shard.

    The global list is padded (by wrapping around) to a multiple of the world size so that every rank
    runs the same number of steps.
    """

    def __init__(
        self,
        pseudo_labels: np.ndarray,
        num_samples: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.seed, self.epoch, self.rank, self.world_size = (
            seed,
            epoch,
            rank,
            world_size,
        )
        global_indices = uniform_cluster_indices(
            pseudo_labels, num_samples, seed=derive_seed(seed, "cluster-sampler", epoch)
        )
        padded = -(-global_indices.size // world_size) * world_size
        global_indices = np.resize(global_indices, padded)
        self.indices = global_indices[rank::world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return int(self.indices.size)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}
