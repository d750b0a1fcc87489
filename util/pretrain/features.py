"""Feature extraction over a whole dataset, in a fixed order, optionally PCA-reduced on the fly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from util.data import ImageSource, extraction_order
from util.dist import all_gather_rows, broadcast_object, current, gather_rows_by_index, shard_positions
from util.errors import UserError
from util.knn import l2_normalize
from util.precision import autocast
from util.pretrain.clustering import PCAWhitening


@dataclass(frozen=True)
class Extraction:
    """How a pass over the images runs: images per forward, on which device, under bf16 autocast or not, and the
    progress bar it shows (interactive terminals only)."""

    batch_size: int
    device: torch.device
    amp: bool = False
    progress: bool = False
    desc: str = "extract"


@torch.inference_mode()
def extract_features(
    forward: Callable[[torch.Tensor], torch.Tensor],
    source: ImageSource,
    how: Extraction,
    pca: PCAWhitening | None = None,
    on_raw_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Features of every image, rows in dataset order, float32 on the host (computed under bf16 autocast with amp).

    Without pca: (N, D) raw features. With an unfitted `pca` the caller keeps (fitted here): (N, pca.dim)
    PCA-whitened and L2-normalised; the PCA is fit on the first pca.fit_samples features of a fixed random order (0:
    all) and every later batch is reduced as it arrives, so the host never holds N x D. Distributed: each rank
    extracts its shard of that order (util.dist.shard_positions); rows are gathered.
    on_raw_batch(raw (B, D) on device, dataset indices (B,)) sees every image's raw features exactly once across
    ranks, before PCA (the kNN monitor's votes); `project` (a neck) then maps them to the features that are kept
    (and PCA-reduced).
    """
    device = how.device
    num = len(source)
    positions = shard_positions(num)  # equal shards (wrapped around): every rank runs the same collectives
    order = extraction_order(num)[positions % num]
    is_padding = positions >= num  # the wrapped-around duplicates of this shard
    fit_target = 0 if pca is None else (num if pca.fit_samples <= 0 else min(pca.fit_samples, num))
    sink = _Sink(num, len(order), pca, fit_target, device)
    bar = tqdm(total=len(order), desc=how.desc, disable=not how.progress, leave=False, unit="img")
    seen = 0
    for images, idx in source.eval_batches(order, how.batch_size, device):
        with autocast(device, how.amp):
            feats = forward(images).float()  # (B, D) pooled backbone features
        bar.update(len(idx))
        if on_raw_batch is not None:
            real = torch.from_numpy(~is_padding[seen : seen + len(idx)])
            on_raw_batch(feats[real.to(feats.device)], idx[real])
        if project is not None:
            with autocast(device, how.amp):
                feats = project(feats).float()  # (B, D') the neck's features
        sink.add(idx, feats, seen, positions[seen : seen + len(idx)])
        seen += len(idx)
    store = sink.store
    bar.close()
    if sink.single:
        return _checked(store, normalize=pca is not None)
    real = ~is_padding  # rows in extraction order; the wrapped-around duplicates are not gathered
    gathered = gather_rows_by_index(torch.from_numpy(order[real]), store[torch.from_numpy(real)], num)
    return _checked(gathered, normalize=pca is not None)


class _Sink:
    """Where extracted batches go. Single process: (N, d) rows by dataset index, written as they arrive (the only
    copy of the features). Distributed: this shard's rows in extraction order, gathered at the end. With a PCA to
    fit, raw batches wait in a buffer until the first fit_target positions of the extraction order have been seen
    by all ranks together; then the PCA is fit and the buffer reduced and released batch by batch."""

    def __init__(self, num: int, shard_rows: int, pca: PCAWhitening | None, fit_target: int, device) -> None:
        self.num, self.shard_rows, self.pca, self.fit_target, self.device = num, shard_rows, pca, fit_target, device
        self.single = not current().distributed
        self.store: torch.Tensor | None = None
        self.raw_buffer: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]] = []  # (indices, raw, positions)

    def keep(self, idx: torch.Tensor, feats: torch.Tensor, first: int) -> None:
        if self.store is None:
            rows = self.num if self.single else self.shard_rows
            self.store = torch.empty((rows, feats.shape[1]), dtype=torch.float32)
        self.store[idx if self.single else slice(first, first + len(idx))] = feats.cpu()

    def add(self, idx: torch.Tensor, feats: torch.Tensor, seen: int, positions: np.ndarray) -> None:
        """One batch of this rank, the positions seen..seen+B of its shard."""
        if self.pca is None:
            self.keep(idx, feats, seen)
        elif self.pca.mean is not None:
            self.keep(idx, self.pca.apply(feats), seen)  # (B, pca_dim)
        else:
            self.raw_buffer.append((idx, feats.cpu(), positions))
        seen += len(idx)
        # every rank has now seen its first `seen` positions, in lockstep: all positions below seen x world
        if self.raw_buffer and seen * current().world_size >= self.fit_target:
            _fit(self.pca, self.raw_buffer, self.fit_target, self.device)
            first = seen - sum(len(b[0]) for b in self.raw_buffer)
            while self.raw_buffer:  # reduced and released batch by batch: the raw rows and the store barely overlap
                b_idx, b_raw, _ = self.raw_buffer.pop(0)
                self.keep(b_idx, self.pca.apply(b_raw), first)
                first += len(b_idx)


def _checked(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Refuse non-finite features (a diverged network) in one line; L2-normalise the rows of PCA-whitened ones in
    place, a chunk at a time: no second copy of the (N, d) features."""
    step = max(1, 2**24 // features.shape[1])
    if not all(bool(torch.isfinite(features[i : i + step]).all()) for i in range(0, len(features), step)):
        raise UserError(
            "features contain NaN or inf: the network diverged; lower --lr or restart from an earlier checkpoint"
        )
    if normalize:
        for i in range(0, len(features), step):
            features[i : i + step] = l2_normalize(features[i : i + step])
    return features


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
