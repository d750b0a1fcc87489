"""DeepCluster-v2's memory bank: the embeddings of every image's assignment crops, in dataset-index order."""

from __future__ import annotations

import torch

from util import dist as dist_util


class MemoryBank:
    """(views, N, dim) embeddings, the same on every process, with two masks: `fresh`, the rows written since the last
    `rotate()`, and `usable`, those written during the previous epoch, the only ones the next clustering sees (as
    SwAV's bank, which holds the images of the previous epoch; an image dropped with the last partial batch of an
    epoch is left out of the next clustering and its assignment is ignored by the loss).

    Kept in dataset order rather than per process, so a checkpoint resumes on any number of processes."""

    def __init__(self, num_views: int, num_images: int, dim: int, device: torch.device) -> None:
        self.embeddings = torch.zeros(num_views, num_images, dim, device=device)  # (views, N, dim) unit rows
        self.fresh = torch.zeros(num_images, dtype=torch.bool, device=device)  # (N,) written since the last rotate
        self.usable = torch.zeros(num_images, dtype=torch.bool, device=device)  # (N,) written in the epoch before

    def write(self, idx: torch.Tensor, views: torch.Tensor) -> None:
        """Store this process's batch: idx (B,) dataset indices, views (views, B, dim), without a host-device
        synchronisation. Distributed, every rank's batch (B the same on every rank) is gathered so the banks stay
        identical; an image twice in one step (a wrapped-around duplicate) keeps its last copy in rank order: every
        copy writes the last one."""
        if dist_util.current().distributed:
            idx = dist_util.all_gather_equal_rows(idx.to(dist_util.collective_device()))  # (B x world,)
            views = views.to(dist_util.collective_device()).transpose(0, 1)
            views = dist_util.all_gather_equal_rows(views).transpose(0, 1)  # (views, B x world, dim)
        idx = idx.to(self.embeddings.device)  # (B x world,) dataset indices
        last = last_occurrences(idx, self.fresh.numel())  # (B x world,) the position of each image's last copy
        self.embeddings[:, idx] = views[:, last.to(views.device)].to(self.embeddings)  # (views, B x world, dim) rows
        self.fresh[idx] = True

    def rotate(self) -> None:
        """At an epoch's start: the rows written since the last rotation become the ones to cluster."""
        self.usable, self.fresh = self.fresh.clone(), torch.zeros_like(self.fresh)

    def state_dict(self) -> dict:
        return {"embeddings": self.embeddings.cpu(), "fresh": self.fresh.cpu(), "usable": self.usable.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if state["embeddings"].shape != self.embeddings.shape:
            raise ValueError(
                f"memory bank of shape {tuple(state['embeddings'].shape)}, not {tuple(self.embeddings.shape)}"
            )
        self.embeddings.copy_(state["embeddings"])
        self.fresh.copy_(state["fresh"])
        self.usable.copy_(state["usable"])


def last_occurrences(idx: torch.Tensor, num_images: int) -> torch.Tensor:
    """For every position of idx (values < num_images), the position of the last occurrence of its value: computed
    on idx's device with a scatter of the positions (max is order-free, so the result is deterministic)."""
    positions = torch.arange(len(idx), device=idx.device)
    last = torch.zeros(num_images, dtype=positions.dtype, device=idx.device)
    last.scatter_reduce_(0, idx, positions, reduce="amax", include_self=False)
    return last[idx]
