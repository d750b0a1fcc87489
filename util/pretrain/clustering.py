"""Feature preprocessing and clustering: PCA-whitening, k-means (faiss or torch), Power Iteration Clustering.

Paper, section 3.3 / 4: features are PCA-reduced to 256 dimensions, whitened and L2-normalised, then clustered
with k-means (or PIC); the resulting assignments become the pseudo-labels of the next epoch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from util.blas import import_faiss
from util.errors import UserError

logger = logging.getLogger("deepcluster")


# ----------------------------------------------------------------------------------------------- PCA
class PCAWhitening:
    """PCA to `dim` dimensions with whitening (eigenvalue power -0.5), as faiss.PCAMatrix(d, dim, -0.5). In an
    extraction pass (util/pretrain/features.py) it is fit on the first `fit_samples` images of the pass's fixed order
    (0: all of them, the paper) and applied to every batch as it comes."""

    CHUNK_ELEMENTS = 2**24  # rows of x are converted to float64 this many values at a time (128 MB)

    def __init__(self, dim: int, fit_samples: int = 0) -> None:
        self.dim, self.fit_samples = dim, fit_samples
        self.mean: torch.Tensor | None = None  # (D,)
        self.projection: torch.Tensor | None = None  # (D, dim)

    def fit(self, x: torch.Tensor | list[torch.Tensor]) -> PCAWhitening:
        """x: (M, D) features, or a list of row blocks of them (so a caller's buffer need not be concatenated);
        statistics in float64 for stability."""
        parts = list(x) if isinstance(x, list | tuple) else [x]
        num, in_dim = sum(len(p) for p in parts), parts[0].shape[1]
        if num <= self.dim:
            raise UserError(
                f"{num} images are too few for --pca-dim {self.dim}: use more images or a smaller --pca-dim"
            )
        if not all(bool(torch.isfinite(p).all()) for p in parts):
            raise UserError(
                "features contain NaN or inf: the network diverged; lower --lr or restart from an earlier checkpoint"
            )
        out_dim = min(self.dim, in_dim)
        if out_dim < self.dim:
            logger.warning(
                "feature dimension %d < --pca-dim %d: whitening to %d dims",
                in_dim,
                self.dim,
                in_dim,
            )
        chunk = max(1, self.CHUNK_ELEMENTS // in_dim)
        chunks = list(_row_chunks(parts, chunk))  # the same chunks as one concatenated tensor: same float64 sums
        self.mean = sum(c.double().sum(0) for c in chunks) / num
        if num >= in_dim:  # covariance (D, D), accumulated over centred float64 chunks: never a float64 copy of x
            covariance = torch.zeros(in_dim, in_dim, dtype=torch.float64, device=parts[0].device)
            for c in chunks:
                centered = c.double() - self.mean
                covariance.addmm_(centered.T, centered)
            eigvals, eigvecs = torch.linalg.eigh(covariance / (num - 1))  # ascending
            eigvals, eigvecs = eigvals.flip(0)[:out_dim], eigvecs.flip(1)[:, :out_dim]
        else:  # fewer samples than dimensions: eigen-decompose the (M, M) Gram matrix instead, far cheaper
            centered = torch.cat(parts).double() - self.mean
            gram_vals, gram_vecs = torch.linalg.eigh(centered @ centered.T / (num - 1))
            eigvals, gram_vecs = gram_vals.flip(0)[:out_dim], gram_vecs.flip(1)[:, :out_dim]
            eigvecs = centered.T @ gram_vecs / (eigvals.clamp_min(1e-30) * (num - 1)).sqrt()
        # Guard against (near-)zero variance directions of degenerate features; whitening divides by sqrt.
        eigvals = eigvals.clamp_min(eigvals[0].clamp_min(1e-30) * 1e-10)
        # (D, dim): (x - mean) @ projection has unit variance along each of the dim leading principal directions
        # (faiss.PCAMatrix(D, dim, eigen_power=-0.5), the paper's preprocessing before k-means)
        self.projection = eigvecs / eigvals.sqrt()
        return self

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D) -> (B, dim) whitened, float32."""
        if self.mean is None or self.projection is None:
            raise RuntimeError("PCAWhitening.apply called before fit")
        mean, proj = self.mean.to(x.device), self.projection.to(x.device)
        chunk = max(1, self.CHUNK_ELEMENTS // x.shape[1])
        return torch.cat([((x[i : i + chunk].double() - mean) @ proj).float() for i in range(0, max(1, len(x)), chunk)])


def _row_chunks(parts: list[torch.Tensor], rows: int):
    """Consecutive blocks of exactly `rows` rows (the last shorter) of the concatenation of `parts`, without
    concatenating them: a block is a view when it lies in one part, else a small copy of its pieces."""
    pieces, held = [], 0
    for part in parts:
        start = 0
        while start < len(part):
            take = min(rows - held, len(part) - start)
            pieces.append(part[start : start + take])
            held, start = held + take, start + take
            if held == rows:
                yield pieces[0] if len(pieces) == 1 else torch.cat(pieces)
                pieces, held = [], 0
    if pieces:
        yield pieces[0] if len(pieces) == 1 else torch.cat(pieces)


# ------------------------------------------------------------------------------------------- results
@dataclass
class ClusteringResult:
    assignments: np.ndarray  # (N,) int64 cluster index in [0, num_clusters)
    num_clusters: int  # clusters asked for (k-means) or found (PIC)
    empty_clusters: int  # clusters with no member after the final assignment
    reseeded_clusters: int | None  # empty clusters re-seeded during the iterations (None: faiss does not say)
    objective: float  # k-means: mean squared distance to the centroid; PIC: nan


def pseudo_labels(assignments: np.ndarray) -> tuple[np.ndarray, int]:
    """Assignments -> labels 0..K'-1 over the non-empty clusters only, in cluster order (docs/training.md, step 4);
    O(N + K)."""
    nonempty = np.bincount(assignments) > 0
    labels = (np.cumsum(nonempty) - 1)[assignments]
    return labels.astype(np.int64), int(nonempty.sum())


def cluster_sizes(assignments: np.ndarray, num_clusters: int) -> np.ndarray:
    return np.bincount(assignments, minlength=num_clusters)


# ------------------------------------------------------------------------------------------- k-means
def check_pic_neighbors(num_points: int, num_neighbors: int) -> None:
    if num_points <= num_neighbors:
        raise UserError(
            f"PIC needs more than --pic-neighbors {num_neighbors} images, got {num_points}: use more images or a "
            "smaller --pic-neighbors"
        )


def check_k(num_points: int, k: int) -> None:
    if k < 2:
        raise UserError(f"--k {k} is too small: k-means needs at least 2 clusters")
    if k > num_points:
        raise UserError(f"--k {k} is larger than the {num_points} images: use --k <= {num_points} (or more images)")


def faiss_kmeans(x: torch.Tensor, k: int, niter: int, seed: int, use_gpu: bool = False) -> ClusteringResult:
    """faiss k-means on all points (no subsampling), k-means as in the paper. x: (N, d) float32 (copied to the
    host: faiss takes numpy arrays). use_gpu: the assignment step on the current CUDA device, which needs faiss-gpu
    (faiss-cpu, or faiss-gpu without a visible GPU, runs on the CPU and says so once)."""
    faiss = import_faiss()

    x_np = np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
    num, dim = x_np.shape
    check_k(num, k)
    clus = faiss.Clustering(dim, k)
    clus.niter = niter
    clus.seed = int(seed) % (2**31)
    clus.max_points_per_centroid = num + 1  # never subsample (faiss default: 256 points per centroid)
    clus.min_points_per_centroid = 1  # silence the "too few points" warning for small k-means
    if use_gpu and faiss.get_num_gpus() == 0:
        _warn_once("k-means runs on the CPU: this faiss has no GPU support (install faiss-gpu) or sees no GPU")
    if use_gpu and faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = torch.cuda.current_device()
        index = faiss.GpuIndexFlatL2(res, dim, cfg)
    else:
        index = faiss.IndexFlatL2(dim)
    clus.train(x_np, index)
    dists, labels = index.search(x_np, 1)
    assignments = labels.ravel().astype(np.int64)
    sizes = cluster_sizes(assignments, k)
    return ClusteringResult(assignments, k, int((sizes == 0).sum()), None, float(dists.mean()))


ASSIGN_BLOCK = 768  # rows per matrix product of the assignment step, always (a multiple of common BLAS tile heights)


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row. Returns (assignments (N,), squared distances (N,))."""
    # argmax of <x, c> - |c|^2 / 2 == argmin of |x - c|^2; max(1) is much faster than argmin on CPU.
    best, assignments = best_scores(x, centroids, -0.5 * (centroids * centroids).sum(1))
    return assignments, ((x * x).sum(1) - 2 * best).clamp_min(0)


def best_scores(
    x: torch.Tensor, centroids: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """max over c of <x, c> + bias[c] for every row of x: (scores (N,), argmax (N,)).

    The scores come from products of exactly ASSIGN_BLOCK rows (the last block zero-padded), whatever N: BLAS
    libraries pick their kernels by the shape of the product (measured with MKL: a product of 1-5 rows gives
    other low bits than a larger one), so a fixed shape keeps each row's scores, and its assignment, the same
    however the points are split across processes. (No BLAS promises this; it holds for the libraries tested.)"""
    bias = centroids.new_zeros(centroids.shape[0]) if bias is None else bias
    scores, assignments = [x.new_zeros(0)], [torch.zeros(0, dtype=torch.long, device=x.device)]
    block = x.new_zeros(ASSIGN_BLOCK, x.shape[1])
    for start in range(0, x.shape[0], ASSIGN_BLOCK):
        rows = x[start : start + ASSIGN_BLOCK]
        block[: len(rows)] = rows
        block[len(rows) :] = 0
        best, idx = torch.addmm(bias, block, centroids.T)[: len(rows)].max(1)
        scores.append(best)
        assignments.append(idx)
    return torch.cat(scores), torch.cat(assignments)


def all_reduce_if(tensor: torch.Tensor, distributed: bool, maximum: bool = False) -> torch.Tensor:
    if distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if maximum else dist.ReduceOp.SUM)
    return tensor


def torch_kmeans(
    x: torch.Tensor,
    k: int,
    niter: int,
    seed: int,
    distributed: bool = False,
    rows: torch.Tensor | None = None,
    num_total: int | None = None,
    chunk_elements: int = 2**26,
) -> ClusteringResult:
    """Lloyd k-means in torch on x's device. x: (n, d) float32, the local shard when `distributed`, whose dataset
    indices are `rows` (n,) of `num_total` points in all (default: all of them, in order).

    The result does not depend on how the points are sharded: the initial centroids are the same k dataset
    indices whatever the shards (drawn from `seed` over num_total), the per-cluster sums are exact (fixed point,
    see exact_cluster_sums) and so independent of their order, and counts are integers; each point's
    assignment then depends only on it and the centroids. Empty clusters are re-seeded by splitting the largest
    cluster (as faiss does), with the same random draws on every rank. Returns the assignments of the local rows.
    """
    num_local, dim = x.shape  # n points of this rank, d = --pca-dim after PCA-whitening
    rows = torch.arange(num_local) if rows is None else rows.cpu()
    num_total = num_local if num_total is None else num_total
    check_k(num_total, k)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    chosen = torch.randperm(num_total, generator=gen)[:k]  # dataset indices of the initial centroids
    position = torch.full((num_total,), -1, dtype=torch.long)
    position[rows] = torch.arange(num_local)
    mine = position[chosen] >= 0
    centroids = torch.zeros(k, dim, device=x.device)  # (k, d)
    centroids[mine.to(x.device)] = x[position[chosen][mine].to(x.device)]
    all_reduce_if(centroids, distributed)  # each row comes from the one rank holding it; the others add zeros
    largest = x.abs().amax() if num_local else x.new_zeros(())  # a rank may hold no point (more ranks than points)
    largest = all_reduce_if(largest.reshape(1).float(), distributed, maximum=True)
    scale = fixed_point_scale(float(largest), num_total)
    chunk = max(1, chunk_elements // max(k, dim))
    reseeded = 0
    for _ in range(niter):
        # Lloyd's two steps: assign every point to its nearest centroid, move every centroid to its points' mean
        assignments, _ = _assign(x, centroids)  # (n,) cluster of each local point
        sums = all_reduce_if(exact_cluster_sums(x, assignments, k, scale, chunk), distributed)  # (k, d) int64
        counts = all_reduce_if(torch.bincount(assignments, minlength=k), distributed).double()  # (k,)
        nonempty = counts > 0
        means = sums.double() / scale / counts.clamp_min(1)[:, None]  # (k, d): fixed point back to float
        centroids = torch.where(nonempty[:, None], means, centroids.double()).float()
        reseeded += _split_largest(centroids, counts, gen)
    assignments, sq_dists = _assign(x, centroids)
    counts = all_reduce_if(torch.bincount(assignments, minlength=k), distributed)
    total_sq = all_reduce_if(sq_dists.double().sum().reshape(1), distributed)
    return ClusteringResult(
        assignments.cpu().numpy().astype(np.int64),
        k,
        int((counts == 0).sum().item()),
        reseeded,
        float(total_sq.item() / num_total),
    )


def fixed_point_scale(largest: float, num_total: int) -> float:
    """A power of two s such that num_total values of magnitude <= largest, each times s and rounded, sum within
    int64 (below 2^62): the quantum 1 / s is about 2^-42 for unit-norm features at N = 1.28M, far under float32
    resolution."""
    if largest <= 0:
        return 1.0
    return 2.0 ** min(900, 61 - math.ceil(math.log2(largest * num_total)))  # capped for (absurdly) tiny data


def exact_cluster_sums(x: torch.Tensor, assignments: torch.Tensor, k: int, scale: float, chunk: int) -> torch.Tensor:
    """Per-cluster sums of the rows of x, (k, d) int64 in units of 1 / scale: integer additions are exact and
    associative, so any split of the rows across ranks or chunks gives the same sums, bit for bit. Computed in
    row chunks (never a float64 or int64 copy of all of x)."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], chunk):
        fixed = torch.round(x[start : start + chunk].double() * scale).long()
        sums.index_add_(0, assignments[start : start + chunk], fixed)
    return sums


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _split_largest(centroids: torch.Tensor, counts: torch.Tensor, gen: torch.Generator) -> int:
    """Re-seed each empty cluster next to the currently largest one (in place). Returns how many."""
    empty = torch.nonzero(counts == 0).flatten().tolist()
    for empty_idx in empty:
        largest = int(counts.argmax())
        noise = 1e-4 * torch.randn(centroids.shape[1], generator=gen).to(centroids.device)
        centroids[empty_idx] = centroids[largest] + noise
        centroids[largest] = centroids[largest] - noise
        counts[empty_idx] = counts[largest] / 2
        counts[largest] = counts[largest] / 2
    return len(empty)


# ---------------------------------------------------------------------------- power iteration clustering
def knn_graph(x: torch.Tensor, num_neighbors: int, block_elements: int = 2**24) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbours (excluding self) of L2-normalised rows. Returns (indices, sq_dists), each (N, nnn),
    nearest first.

    Exact (brute force), in bounded memory: similarities are computed block by block, at most `block_elements`
    (64 MB in float32) at a time, and every query row keeps only its best nnn candidates; memory is
    O(N nnn + block_elements) whatever N (a dense query-block x N matrix would be 21 GB per 4096 rows at
    ImageNet size)."""
    num = x.shape[0]
    side = max(num_neighbors + 1, math.isqrt(block_elements))
    indices, sq_dists = [], []
    for q in range(0, num, side):
        queries = x[q : q + side]
        best = torch.full((queries.shape[0], 0), -float("inf"), device=x.device)
        best_idx = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=x.device)
        for d in range(0, num, side):
            sims = queries @ x[d : d + side].T  # (Bq, Bd) cosine similarities
            rows = torch.arange(q, q + queries.shape[0], device=x.device)
            self_col = rows - d
            inside = (self_col >= 0) & (self_col < sims.shape[1])
            sims[inside.nonzero().flatten(), self_col[inside]] = -float("inf")  # never its own neighbour
            top, idx = sims.topk(min(num_neighbors, sims.shape[1]), dim=1)
            merged, merged_idx = torch.cat([best, top], 1), torch.cat([best_idx, idx + d], 1)
            best, pick = merged.topk(min(num_neighbors, merged.shape[1]), dim=1)
            best_idx = merged_idx.gather(1, pick)
        indices.append(best_idx)
        sq_dists.append((2 - 2 * best).clamp_min(0))  # |a - b|^2 = 2 - 2 <a, b> for unit vectors
    return torch.cat(indices), torch.cat(sq_dists)


def power_iteration_clustering(
    x: torch.Tensor,
    num_neighbors: int = 5,
    sigma: float = 0.2,
    alpha: float = 0.001,
    niter: int = 200,
) -> ClusteringResult:
    """PIC as described in the paper (section 4, "Power Iteration Clustering").

    x: (N, d) L2-normalised features. A symmetric nearest-neighbour graph with Gaussian weights
    w_ij = exp(-|x_i - x_j|^2 / sigma^2) is diffused by power iteration with a uniform restart term,
    v <- alpha * W^T v + (1 - alpha) / N, normalised each step; each point i then links to the neighbour j that
    maximises w_ij (v_j - v_i) when that is positive (else to itself), as the original implementation, and every
    chain of links ends in a local maximum of v: one cluster each. Singleton clusters then join the cluster of their
    most similar neighbour that is not a singleton (the original redistributes them the same way), so the uniform
    sampler never repeats one image N/K times. The number of clusters is found, not chosen.
    """
    num = x.shape[0]
    check_pic_neighbors(num, num_neighbors)
    nbr, sq = knn_graph(x, num_neighbors)
    rows = torch.arange(num, device=x.device).repeat_interleave(num_neighbors)
    cols, weights = nbr.flatten(), torch.exp(-sq.flatten() / sigma**2)
    # Symmetric W = A + A^T as a sparse matrix (duplicate entries are summed by coalesce()).
    w_sparse = torch.sparse_coo_tensor(
        torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
        torch.cat([weights, weights]),
        (num, num),
        check_invariants=False,  # indices come from the kNN graph: in range by construction
    ).coalesce()
    v = torch.full((num,), 1.0 / num, device=x.device)
    w_transposed = w_sparse.t().coalesce()
    for _ in range(niter):
        v = alpha * torch.sparse.mm(w_transposed, v[:, None]).squeeze(1) + (1 - alpha) / num
        v = v / v.sum()
    src, dst = w_sparse.indices()
    parent = _resolve_parents(v, src, dst, w_sparse.values())
    assignments = torch.unique(parent, return_inverse=True)[1]
    assignments = _join_singletons(assignments, nbr).cpu().numpy().astype(np.int64)
    return ClusteringResult(assignments, int(assignments.max()) + 1, 0, 0, float("nan"))


def _resolve_parents(v: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """parent[i] = the neighbour j maximising w_ij (v_j - v_i) when positive, else i; then links to their roots."""
    num = v.shape[0]
    gain = weight * (v[dst] - v[src])  # (E,) over the edges i -> j of the symmetric graph
    best_gain = torch.zeros(num, device=v.device, dtype=gain.dtype).scatter_reduce_(0, src, gain, "amax")
    chosen = (gain == best_gain[src]) & (gain > 0)
    parent = torch.arange(num, device=v.device)
    parent[src[chosen]] = dst[chosen]  # on an exact tie either neighbour is a valid uphill link
    for _ in range(num):  # pointer jumping; depth halves every step, so this ends in O(log N) steps
        grand = parent[parent]
        if torch.equal(grand, parent):
            break
        parent = grand
    return parent


def _join_singletons(assignments: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Each point alone in its cluster joins the cluster of its nearest neighbour (neighbours: (N, nnn), nearest
    first) that belongs to a cluster of two or more points; it stays alone if none does. Returns labels 0..K'-1."""
    sizes = torch.bincount(assignments)
    alone = torch.nonzero(sizes[assignments] == 1).flatten()
    if alone.numel() == 0:
        return assignments
    candidate = assignments[neighbours[alone]]  # (S, nnn) clusters of the neighbours, nearest first
    usable = sizes[candidate] > 1
    first = usable.float().argmax(1)  # the nearest usable neighbour (0 when none: checked below)
    target = candidate.gather(1, first[:, None]).squeeze(1)
    out = assignments.clone()
    out[alone] = torch.where(usable.any(1), target, assignments[alone])
    return torch.unique(out, return_inverse=True)[1]


# ------------------------------------------------------------------------------------------- dispatch
@dataclass(frozen=True)
class PicParams:
    """Power Iteration Clustering's graph and iterations (the paper's section 4.3 study)."""

    neighbors: int = 5
    sigma: float = 0.2
    alpha: float = 0.001
    iters: int = 200


@dataclass(frozen=True)
class ClusteringSpec:
    """How an epoch clusters its features: k-means with k clusters (faiss or torch, niter Lloyd iterations; faiss on
    the GPU with use_gpu) or PIC, which finds its own number of clusters."""

    k: int
    method: str = "kmeans"
    backend: str = "faiss"
    niter: int = 20
    pic: PicParams = PicParams()
    use_gpu: bool = False


def run_clustering(features: torch.Tensor, spec: ClusteringSpec, seed: int) -> ClusteringResult:
    """Cluster (N, d) preprocessed features with k-means (faiss or torch backend, each on the features' device) or
    PIC, as `spec` says; `seed` draws the initial centroids."""
    if spec.method == "pic":
        pic = spec.pic
        return power_iteration_clustering(features, pic.neighbors, pic.sigma, pic.alpha, pic.iters)
    if spec.backend == "faiss":
        return faiss_kmeans(features, spec.k, spec.niter, seed, use_gpu=spec.use_gpu)
    return torch_kmeans(features, spec.k, spec.niter, seed)
