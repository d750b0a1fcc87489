"""The random streams a run derives from --seed: one place, one rule."""

from __future__ import annotations

# Every random stream derived from --seed: derived = seed * multiplier + index (an epoch, or a draw). The multipliers
# are those the runs have always used, so every result is unchanged by this table.
SEED_STREAMS = {
    "probe-epoch": 7919,  # the linear probes' epoch order and augmentations (eval_linear.py)
    "loader-rank": 7919,  # a DataLoader's torch seed: rank * 7919 + the epoch's draw from its generator
    "cluster-sampler": 100_003,  # the uniform-over-clusters sample of an epoch (main_deepcluster.py)
    "finetune-epoch": 100_003,  # the semi-supervised fine-tuning epoch's order and views (eval_semisup.py)
    "pretrain-batches": 1_000_003,  # the pretraining epoch's batch augmentations (both pretraining scripts)
    "v2-order": 10_007,  # DeepCluster-v2: the epoch's image order (main_deepclusterv2.py)
    "v2-kmeans": 1_009,  # DeepCluster-v2: the initial centroids of epoch e, head h: index e * heads + h
    "v2-bank-fill": 100_019,  # DeepCluster-v2: the crops of the no-grad pass that fills the memory bank
    "cluster-grid": 100_003,  # the clusters and images of an epoch's cluster grid (training and report.py)
    "monitor-kmeans": 1_000_033,  # the kNN monitor's held-out k-means runs: index epoch * runs + run
    "unstable-clusters": 100_043,  # the sample images of report.py's least stable clusters: index the epoch
    "bootstrap": 1_000_037,  # the evaluations' resamples of the test images (util/eval/bootstrap.py)
}


def derive_seed(seed: int, stream: str, index: int) -> int:
    """The seed of one random stream (SEED_STREAMS): seed * multiplier + index (an epoch, or a draw)."""
    return seed * SEED_STREAMS[stream] + index
