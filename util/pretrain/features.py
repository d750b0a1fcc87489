"""Feature extraction over a whole dataset, in a fixed order, optionally PCA-reduced on the fly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from util.data import ImageSource
from util.dist import all_gather_rows, broadcast_object, current, gather_rows_by_index, shard_positions
from util.errors import UserError
from util.pretrain.clustering import PCAWhitening, l2_normalize

EXTRACTION_ORDER_SEED = 12345  # fixed: the order never depends on --seed


def extraction_order(num: int) -> np.ndarray:
    """A fixed random permutation, so the first M extracted features are a uniform sample (PCA fit)."""
    return np.random.default_rng(EXTRACTION_ORDER_SEED).permutation(num)


@torch.inference_mode()
def extract_features(
    forward: Callable[[torch.Tensor], torch.Tensor],
    source: ImageSource,
    batch_size: int,
    device: torch.device,
    pca_dim: int | None = None,
    pca_fit_samples: int = 0,
    progress: bool = False,
    desc: str = "extract",
    on_raw_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Features of every image, rows in dataset order, float32 on the host.

    Without pca_dim: (N, D) raw features. With pca_dim: (N, pca_dim) PCA-whitened and L2-normalised; PCA is fit
    on the first `pca_fit_samples` features of a fixed random order (0: all) and every later batch is reduced as it
    arrives, so the host never holds N x D. Distributed: each rank extracts its shard of that order
    (util.dist.shard_positions); rows are gathered.
    on_raw_batch(raw (B, D) on device, dataset indices (B,)) sees every image's raw features exactly once across
    ranks, before PCA (the kNN monitor of main_deepcluster.py streams them).
    """
    num = len(source)
    positions = shard_positions(num)  # equal shards (wrapped around): every rank runs the same collectives
    order = extraction_order(num)[positions % num]
    is_padding = positions >= num  # the wrapped-around duplicates of this shard
    fit_target = num if pca_fit_samples <= 0 else min(pca_fit_samples, num)
    pca = PCAWhitening(pca_dim) if pca_dim else None
    raw_buffer: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]] = []  # (indices, raw, positions) until fit
    done: list[tuple[torch.Tensor, torch.Tensor]] = []  # (indices, final features)
    bar = tqdm(total=len(order), desc=desc, disable=not progress, leave=False, unit="img")
    seen = 0
    for images, idx in source.eval_batches(order, batch_size, device):
        feats = forward(images).float()
        bar.update(len(idx))
        if on_raw_batch is not None:
            real = torch.from_numpy(~is_padding[seen : seen + len(idx)])
            on_raw_batch(feats[real.to(feats.device)], idx[real])
        if pca is None:
            done.append((idx, feats.cpu()))
        elif pca.mean is not None:
            done.append((idx, pca.apply(feats).cpu()))
        else:
            raw_buffer.append((idx, feats.cpu(), positions[seen : seen + len(idx)]))
        seen += len(idx)
        # every rank has now seen its first `seen` positions, in lockstep: all positions below seen x world
        if raw_buffer and seen * current().world_size >= fit_target:
            done += _fit_and_reduce(pca, raw_buffer, fit_target, device)
            raw_buffer = []
    bar.close()
    real = torch.from_numpy(~is_padding)  # rows in extraction order, as `done` holds them
    out = gather_rows_by_index(torch.cat([d[0] for d in done])[real], torch.cat([d[1] for d in done])[real], num)
    if not torch.isfinite(out).all():
        raise UserError(
            "features contain NaN or inf: the network diverged; lower --lr or restart from an earlier checkpoint"
        )
    return l2_normalize(out) if pca is not None else out


def _failure(error: Exception) -> UserError:
    """What the other ranks raise when rank 0's PCA fit failed (a picklable one-line error)."""
    return error if isinstance(error, UserError) else UserError(f"rank 0 failed to fit the PCA: {error!r}")


def _fit_and_reduce(
    pca: PCAWhitening,
    buffer: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]],
    fit_target: int,
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fit the PCA on exactly the first `fit_target` images of the extraction order, in that order, whatever the
    batch size and the number of processes (gathered from every rank's buffer), on rank 0 alone, and broadcast it
    (ranks whose BLAS differ could otherwise rotate near-equal eigenvectors differently); then reduce the local
    buffer."""
    raw = torch.cat([b[1] for b in buffer])
    positions = torch.from_numpy(np.concatenate([b[2] for b in buffer]))
    in_sample = positions < fit_target
    sample, sample_positions = raw[in_sample], positions[in_sample]
    if current().distributed:
        sample = all_gather_rows(sample.to(device)).cpu()
        sample_positions = all_gather_rows(sample_positions.to(device)).cpu()
    sample = sample[torch.argsort(sample_positions)]
    fitted: tuple | Exception | None = None
    if current().is_main:
        try:
            fitted = pca.fit(sample).mean, pca.projection
        except Exception as error:  # noqa: BLE001 - every rank must learn of it, not wait for a broadcast forever
            fitted = error
    shared = broadcast_object(fitted if not isinstance(fitted, Exception) else _failure(fitted))
    if isinstance(fitted, Exception):
        raise fitted
    if isinstance(shared, UserError):
        raise shared
    pca.mean, pca.projection = shared
    return [(idx, pca.apply(feats)) for idx, feats, _ in buffer]
