"""Feature extraction over a whole dataset, in a fixed order, optionally PCA-reduced on the fly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from util.clustering import PCAWhitening, l2_normalize
from util.data import ImageSource
from util.dist import all_gather_rows
from util.errors import UserError

EXTRACTION_ORDER_SEED = 12345  # fixed: the order never depends on --seed


def extraction_order(num: int) -> np.ndarray:
    """A fixed random permutation, so the first M extracted features are a uniform sample (PCA fit)."""
    return np.random.default_rng(EXTRACTION_ORDER_SEED).permutation(num)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


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
    arrives, so the host never holds N x D. Distributed: each rank extracts order[rank::world]; rows are gathered.
    on_raw_batch(raw (B, D) on device, dataset indices (B,)) sees every image's raw features exactly once across
    ranks, before PCA (the kNN monitor of main_deepcluster.py streams them).
    """
    num = len(source)
    order = extraction_order(num)
    is_padding = np.zeros(num, dtype=bool)
    if _distributed():  # equal shards (wrapped around) so that every rank runs the same collectives
        world, rank = dist.get_world_size(), dist.get_rank()
        padded = -(-num // world) * world
        order = np.resize(order, padded)[rank::world]
        is_padding = (np.arange(padded) >= num)[rank::world]  # the wrapped-around duplicates of this shard
    fit_target = num if pca_fit_samples <= 0 else min(pca_fit_samples, num)
    pca = PCAWhitening(pca_dim) if pca_dim else None
    raw_buffer: list[tuple[torch.Tensor, torch.Tensor]] = []  # (indices, raw features) until PCA is fit
    done: list[tuple[torch.Tensor, torch.Tensor]] = []  # (indices, final features)
    bar = tqdm(total=len(order), desc=desc, disable=not progress, leave=False, unit="img")
    seen = 0
    for images, idx in source.eval_batches(order, batch_size, device):
        feats = forward(images).float()
        bar.update(len(idx))
        if on_raw_batch is not None:
            real = torch.from_numpy(~is_padding[seen : seen + len(idx)])
            on_raw_batch(feats[real.to(feats.device)], idx[real])
        seen += len(idx)
        if pca is None:
            done.append((idx, feats.cpu()))
        elif pca.mean is not None:
            done.append((idx, pca.apply(feats).cpu()))
        else:
            raw_buffer.append((idx, feats.cpu()))
            if _gathered_count(raw_buffer, device) >= fit_target:
                done += _fit_and_reduce(pca, raw_buffer, device)
                raw_buffer = []
    bar.close()
    if raw_buffer:
        done += _fit_and_reduce(pca, raw_buffer, device)
    idx_all = all_gather_rows(torch.cat([d[0] for d in done]).to(device)).cpu()
    feats_all = all_gather_rows(torch.cat([d[1] for d in done]).to(device)).cpu()
    out = torch.empty((num, feats_all.shape[1]), dtype=torch.float32)
    out[idx_all] = feats_all  # wrapped-around duplicates write identical rows
    if not torch.isfinite(out).all():
        raise UserError(
            "features contain NaN or inf: the network diverged; lower --lr or restart from an earlier checkpoint"
        )
    return l2_normalize(out) if pca is not None else out


def _gathered_count(buffer: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> int:
    local = sum(len(b[0]) for b in buffer)
    if not _distributed():
        return local
    count = torch.tensor([local], dtype=torch.long, device=device)
    dist.all_reduce(count)
    return int(count.item())


def _fit_and_reduce(
    pca: PCAWhitening,
    buffer: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fit the PCA on the buffered raw features of every rank, then reduce the local buffer."""
    raw = torch.cat([b[1] for b in buffer])
    pca.fit(all_gather_rows(raw.to(device)).cpu() if _distributed() else raw)
    return [(idx, pca.apply(feats)) for idx, feats in buffer]
