"""Where probes get their inputs: frozen-backbone features computed live (the protocol) or cached once (fast mode)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from models import Backbone
from util.data import ImageSource
from util.dist import current, shard, sharded_map
from util.eval.probes import TapPooling
from util.seeds import derive_seed

# One batch of probe inputs: the five pooled taps (B, C_i, s_i, s_i), the global average of the last tap (B, C5),
# the class labels (B,) and the dataset indices (B,). Distributed: every rank sees its shard of the data.
ProbeBatch = tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]


def probe_inputs(
    backbone: Backbone, pooling: TapPooling, images: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Frozen forward: pooled taps and the globally averaged last tap (never tracked by autograd)."""
    with torch.no_grad():
        taps = backbone.forward_taps(images)
        return pooling(taps), taps[-1].float().mean((2, 3))


class LiveFeatures:
    """The protocol: every epoch sees new training augmentations through the frozen backbone."""

    def __init__(
        self,
        backbone: Backbone,
        pooling: TapPooling,
        train: ImageSource,
        val: ImageSource,
        batch_size: int,
        device: torch.device,
        seed: int,
        progress: bool = False,
    ) -> None:
        self.backbone, self.pooling, self.train, self.val = backbone, pooling, train, val
        self.batch_size, self.device, self.seed, self.progress = batch_size, device, seed, progress
        self.train_labels = torch.from_numpy(train.targets)
        self.val_labels = torch.from_numpy(val.targets)

    def train_epoch(self, epoch: int) -> Iterator[ProbeBatch]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "probe-epoch", epoch))
        order = shard(torch.randperm(len(self.train), generator=gen).numpy())
        info = current()
        batches = self.train.train_batches(order, self.batch_size, self.device, gen, info.rank, info.world_size)
        for images, idx in tqdm(batches, desc=f"probe epoch {epoch}", disable=not self.progress, leave=False):
            pooled, avg = probe_inputs(self.backbone, self.pooling, images)
            yield pooled, avg, self.train_labels[idx].to(self.device), idx

    def val_batches(self) -> Iterator[ProbeBatch]:
        for images, idx in self.val.eval_batches(shard(np.arange(len(self.val))), 2 * self.batch_size, self.device):
            pooled, avg = probe_inputs(self.backbone, self.pooling, images)
            yield pooled, avg, self.val_labels[idx].to(self.device), idx

    def avgpool_features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C5) globally averaged last-tap features of the deterministic view, with labels, for kNN."""
        source = self.train if split == "train" else self.val
        (feats,) = sharded_map(
            np.arange(len(source)),
            lambda shard: source.eval_batches(shard, 2 * self.batch_size, self.device),
            lambda images: [probe_inputs(self.backbone, self.pooling, images)[1]],
            len(source),
        )
        return feats, torch.from_numpy(source.targets)


class CachedFeatures:
    """Fast mode: the frozen features of the deterministic view are extracted once, kept as float16 on the host,
    and the heads train on them (no training augmentation: a departure from the protocol, said in --help)."""

    def __init__(
        self,
        backbone: Backbone,
        pooling: TapPooling,
        train: ImageSource,
        val: ImageSource,
        batch_size: int,
        device: torch.device,
        seed: int,
        progress: bool = False,
    ) -> None:
        self.batch_size, self.device, self.seed = batch_size, device, seed
        self.train_pooled, self.train_avg = self._extract(backbone, pooling, train, progress, "cache train")
        self.val_pooled, self.val_avg = self._extract(backbone, pooling, val, progress, "cache val")
        self.train_labels = torch.from_numpy(train.targets)
        self.val_labels = torch.from_numpy(val.targets)

    def _extract(
        self, backbone: Backbone, pooling: TapPooling, source: ImageSource, progress: bool, desc: str
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        def pooled_half_and_average(images: torch.Tensor) -> list[torch.Tensor]:
            pooled, avg = probe_inputs(backbone, pooling, images)
            return [*(p.half() for p in pooled), avg]

        *pooled, avg = sharded_map(
            np.arange(len(source)),
            lambda shard: tqdm(self._eval_batches(source, shard), desc, disable=not progress, leave=False),
            pooled_half_and_average,
            len(source),
        )
        return pooled, avg

    def _eval_batches(self, source: ImageSource, indices: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return source.eval_batches(indices, 2 * self.batch_size, self.device)

    def _batches(self, pooled, avg, labels, order: torch.Tensor, drop_last: bool) -> Iterator[ProbeBatch]:
        size = self.batch_size
        stop = len(order) - (len(order) % size if drop_last and len(order) >= size else 0)
        for start in range(0, stop, size):
            idx = order[start : start + size]
            pooled_batch = [p[idx].to(self.device).float() for p in pooled]
            yield pooled_batch, avg[idx].to(self.device), labels[idx].to(self.device), idx

    def train_epoch(self, epoch: int) -> Iterator[ProbeBatch]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "probe-epoch", epoch))
        order = torch.from_numpy(shard(torch.randperm(len(self.train_labels), generator=gen).numpy()))
        yield from self._batches(self.train_pooled, self.train_avg, self.train_labels, order, drop_last=True)

    def val_batches(self) -> Iterator[ProbeBatch]:
        order = torch.from_numpy(shard(np.arange(len(self.val_labels))))
        yield from self._batches(self.val_pooled, self.val_avg, self.val_labels, order, drop_last=False)

    def avgpool_features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self.train_avg, self.train_labels
        return self.val_avg, self.val_labels
