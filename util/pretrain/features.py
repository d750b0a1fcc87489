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
    single = not current().distributed
    # Single process: (N, d) rows by dataset index, written as they arrive (the only copy of the features).
    # Distributed: this shard's rows in extraction order, gathered at the end.
    store: torch.Tensor | None = None

    def keep(idx: torch.Tensor, feats: torch.Tensor, first: int) -> None:
        nonlocal store
        if store is None:
            store = torch.empty((num if single else len(order), feats.shape[1]), dtype=torch.float32)
        store[idx if single else slice(first, first + len(idx))] = feats.cpu()

    bar = tqdm(total=len(order), desc=desc, disable=not progress, leave=False, unit="img")
    seen = 0
    for images, idx in source.eval_batches(order, batch_size, device):
        feats = forward(images).float()
        bar.update(len(idx))
        if on_raw_batch is not None:
            real = torch.from_numpy(~is_padding[seen : seen + len(idx)])
            on_raw_batch(feats[real.to(feats.device)], idx[real])
        if pca is None:
            keep(idx, feats, seen)
        elif pca.mean is not None:
            keep(idx, pca.apply(feats), seen)
        else:
            raw_buffer.append((idx, feats.cpu(), positions[seen : seen + len(idx)]))
        seen += len(idx)
        # every rank has now seen its first `seen` positions, in lockstep: all positions below seen x world
        if raw_buffer and seen * current().world_size >= fit_target:
            _fit(pca, raw_buffer, fit_target, device)
            first = seen - sum(len(b[0]) for b in raw_buffer)
            while raw_buffer:  # reduced and released batch by batch: the raw rows and the store barely overlap
                b_idx, b_raw, _ = raw_buffer.pop(0)
                keep(b_idx, pca.apply(b_raw), first)
                first += len(b_idx)
    bar.close()
    if single:
        out = store
    else:  # rows in extraction order; the wrapped-around duplicates are not gathered
        real = ~is_padding
        out = gather_rows_by_index(torch.from_numpy(order[real]), store[torch.from_numpy(real)], num)
    step = max(1, 2**24 // out.shape[1])
    if not all(bool(torch.isfinite(out[i : i + step]).all()) for i in range(0, num, step)):
        raise UserError(
            "features contain NaN or inf: the network diverged; lower --lr or restart from an earlier checkpoint"
        )
    if pca is not None:  # L2-normalised in place, a chunk at a time: no second copy of the features
        for i in range(0, num, step):
            out[i : i + step] = l2_normalize(out[i : i + step])
    return out


def _failure(error: Exception) -> UserError:
    """What the other ranks raise when rank 0's PCA fit failed (a picklable one-line error)."""
    return error if isinstance(error, UserError) else UserError(f"rank 0 failed to fit the PCA: {error!r}")


def _fit(
    pca: PCAWhitening,
    buffer: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]],
    fit_target: int,
    device: torch.device,
) -> None:
    """Fit the PCA on exactly the first `fit_target` images of the extraction order, in that order, whatever the
    batch size and the number of processes (gathered from every rank's buffer), on rank 0 alone, and broadcast it
    (ranks whose BLAS differ could otherwise rotate near-equal eigenvectors differently)."""
    # The buffer's rows at positions < fit_target, whole batches as they are (no copy in a single process)
    sample = [
        feats if (pos < fit_target).all() else feats[torch.from_numpy(pos < fit_target)] for _, feats, pos in buffer
    ]
    if current().distributed:  # gathered rank by rank, then put in extraction order
        positions = torch.from_numpy(np.concatenate([pos[pos < fit_target] for _, _, pos in buffer]))
        positions = all_gather_rows(positions.to(device)).cpu()
        sample = all_gather_rows(torch.cat(sample).to(device)).cpu()[torch.argsort(positions)]
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
