"""ImageNet-shaped clustering on synthetic features, through the functions the epoch uses: streaming PCA
(fit on a sample, then every chunk reduced as it arrives) -> k-means -> the uniform-over-clusters sampler, with the
time of every phase and the peak host memory above the start (resident set size).

The features (default 1.28M x 2048, ResNet-50's avgpool size) are generated batch by batch and never all held: a
mixture of 1,000 Gaussian blobs through a ReLU (non-negative, like pooled ReLU activations), fed to the epoch's own
extract_features (identity network), so its buffering and storage are what is measured. Smaller N or fewer
k-means iterations may be timed and the rest extrapolated (per iteration, linear in N); the output says which.
The epoch's clustering metrics (NMI with the previous epoch's clusters and with 1,000 labels, ARI, the Hungarian
accuracy) on two assignments of N images to k clusters come first, with their time and the peak memory they allocate
above their inputs (tracemalloc: numpy's allocations are traced).
    .venv/bin/python benchmarks/bench_scale.py                      # 1.28M x 2048, PCA 256, k=10,000
    .venv/bin/python benchmarks/bench_scale.py --num 200000 --kmeans-iters 5
    .venv/bin/python benchmarks/bench_scale.py --only metrics       # the metrics alone (seconds)
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from util.metrics import ari, cluster_accuracy, nmi
from util.pretrain.clustering import ClusteringSpec, PCAWhitening, run_clustering
from util.pretrain.features import Extraction, extract_features
from util.pretrain.sampler import uniform_cluster_indices


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def current_rss_gb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**30


class SyntheticFeatures:
    """An ImageSource stand-in whose "images" are already feature rows (extract_features' forward is then the
    identity): a mixture of 1,000 Gaussian blobs through a ReLU, generated per batch, never all held."""

    def __init__(self, num: int, dim: int, seed: int = 0) -> None:
        self.num, self.dim, self.seed = num, dim, seed
        self.centres = torch.randn(1000, dim, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.num

    def eval_batches(self, indices: np.ndarray, batch_size: int, device: torch.device):
        for start in range(0, len(indices), batch_size):
            idx = torch.from_numpy(indices[start : start + batch_size])
            gen = torch.Generator().manual_seed(self.seed + 1 + start)
            rows = self.centres[idx % 1000] + 2.0 * torch.randn(len(idx), self.dim, generator=gen)
            yield torch.relu(rows).to(device), idx


def metrics_rows(num: int, k: int, classes: int = 1000) -> list[tuple[str, float, str]]:
    """Time and peak traced memory above the inputs of each clustering metric of an epoch: NMI between two epochs'
    assignments (k clusters each; the second a noisy copy of the first, as consecutive epochs are) and against
    `classes` labels, ARI, the Hungarian accuracy against the labels."""
    rng = np.random.default_rng(0)
    before = rng.integers(0, k, num)
    after = np.where(rng.random(num) < 0.5, before, rng.integers(0, k, num))
    labels = rng.integers(0, classes, num)
    inputs = (before.nbytes + after.nbytes + labels.nbytes) / 2**20
    rows = []
    for name, call in (
        ("NMI(t, t-1)", lambda: nmi(after, before)),
        ("NMI(t, labels)", lambda: nmi(after, labels)),
        ("ARI(t, labels)", lambda: ari(after, labels)),
        ("Hungarian accuracy(t, labels)", lambda: cluster_accuracy(labels, after)),
    ):
        tracemalloc.start()
        start = time.perf_counter()
        value = call()
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append((name, seconds, f"s, peak {peak / 2**20:.0f} MB above the inputs ({inputs:.0f} MB); {value:.4f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=1_281_167)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--pca-dim", type=int, default=256)
    parser.add_argument("--pca-fit-samples", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10_000)
    parser.add_argument("--kmeans-iters", type=int, default=20)
    parser.add_argument("--backend", default="faiss", choices=["faiss", "torch"])
    parser.add_argument("--chunk", type=int, default=8192, help="rows per streamed chunk (a batch of extraction)")
    parser.add_argument("--only", choices=("metrics",), default=None, help="run this phase alone")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"clustering metrics of {args.num} images, k={args.k}, 1,000 labels")
    for name, value, note in metrics_rows(args.num, args.k):
        print(f"{name:34} {value:8.2f}  {note}")
    if args.only == "metrics":
        return
    base = current_rss_gb()
    print(
        f"{args.num} x {args.dim} synthetic features, PCA {args.pca_dim} fit on {args.pca_fit_samples}, "
        f"k={args.k} ({args.backend}), {args.kmeans_iters} iterations, {torch.get_num_threads()} threads"
    )
    rows = []
    start = time.perf_counter()
    pca = PCAWhitening(args.pca_dim, args.pca_fit_samples)
    features = extract_features(
        lambda x: x, SyntheticFeatures(args.num, args.dim), Extraction(args.chunk, torch.device("cpu")), pca=pca
    )
    rows.append(("generate + streaming PCA", time.perf_counter() - start, "extract_features, PCA fit on a sample"))
    rows.append(("  peak memory so far", peak_rss_gb() - base, "GB above start"))
    start = time.perf_counter()
    result = run_clustering(features, ClusteringSpec(args.k, backend=args.backend, niter=args.kmeans_iters), seed=0)
    rows.append(
        (
            f"k-means ({args.kmeans_iters} iterations)",
            time.perf_counter() - start,
            f"{(time.perf_counter() - start) / max(1, args.kmeans_iters):.1f} s per iteration incl. final assignment",
        )
    )
    start = time.perf_counter()
    sample = uniform_cluster_indices(result.assignments, args.num, seed=0)
    rows.append(("uniform sampler", time.perf_counter() - start, f"{len(sample)} indices"))
    rows.append(("peak memory above start", peak_rss_gb() - base, f"features {features.numel() * 4 / 2**30:.2f} GB"))
    for name, value, note in rows:
        print(f"{name:34} {value:8.2f}  {note}")
    full = 1_281_167
    if args.num < full:
        print(
            f"(N = {args.num}: PCA, k-means and the sampler scale about linearly in N; x{full / args.num:.1f} "
            "for ImageNet, not measured)"
        )
    print(
        f"empty clusters {result.empty_clusters}, sizes min {np.bincount(result.assignments).min()} "
        f"max {np.bincount(result.assignments).max()}"
    )


if __name__ == "__main__":
    main()
