"""Spherical k-means of DeepCluster-v2 (Caron et al. 2020, appendix; SwAV's `cluster_memory`): unit-norm points,
assignment by the largest dot product, centroids re-normalised means, empty clusters keep their centroid."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from util import dist as dist_util
from util.pretrain.clustering import all_reduce_if, best_scores, exact_cluster_sums, fixed_point_scale

IGNORE = -100  # the assignment of an image the clustering did not see: cross-entropy's ignore_index


@dataclass
class SphericalResult:
    centroids: torch.Tensor  # (k, d) unit rows, on the points' device
    assignments: torch.Tensor  # (N,) int64 on the host, IGNORE for the rows not clustered
    counts: torch.Tensor  # (k,) int64 on the host: points per cluster at the final assignment


def spherical_kmeans(
    points: torch.Tensor, usable: torch.Tensor, k: int, niter: int, seed: int, chunk: int = 1 << 14
) -> SphericalResult:
    """k-means on the rows of `points` (N, d) flagged in `usable` (N,) bool, split across the processes.

    `points` is the same on every rank (the replicated memory bank); each rank scores its share of the usable rows
    (util.dist.shard) and the per-cluster sums and counts are all-reduced. The initial centroids are k usable rows
    drawn from `seed` (SwAV draws them on rank 0 and broadcasts them: the same rows, without the broadcast). Sums are
    exact fixed-point integers and every row is scored in a product of a fixed shape (see best_scores), so the
    result does not depend on the number of processes. `niter` updates, then a final assignment (SwAV: 10)."""
    info = dist_util.current()
    candidates = torch.nonzero(usable.cpu()).flatten()
    if len(candidates) < k:
        raise ValueError(f"{len(candidates)} points for {k} clusters")
    gen = torch.Generator().manual_seed(int(seed))
    centroids = points[candidates[torch.randperm(len(candidates), generator=gen)[:k]].to(points.device)].clone()
    rows = torch.from_numpy(dist_util.shard(candidates.numpy(), info, wrap=False)).to(points.device)
    x = points[rows]
    scale = fixed_point_scale(1.0, len(candidates))  # unit-norm rows: every coordinate is at most 1 in magnitude
    for _ in range(niter):
        _, assignments = best_scores(x, centroids)
        sums = all_reduce_if(exact_cluster_sums(x, assignments, k, scale, chunk), info.distributed)
        counts = all_reduce_if(torch.bincount(assignments, minlength=k), info.distributed)
        nonempty = counts > 0
        means = sums.double() / scale / counts.clamp_min(1)[:, None].double()
        centroids = torch.where(nonempty[:, None], F.normalize(means, dim=1).float(), centroids)
    _, assignments = best_scores(x, centroids)
    counts = all_reduce_if(torch.bincount(assignments, minlength=k), info.distributed)
    full = torch.full((len(points),), IGNORE, dtype=torch.long)
    if info.distributed:
        full[candidates] = dist_util.gather_rows_by_index(rows, assignments, len(points))[candidates]
    else:
        full[rows.cpu()] = assignments.cpu()
    return SphericalResult(centroids, full, counts.cpu())
