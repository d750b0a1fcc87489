"""DeepCluster-v2's memory bank: the embeddings of every image's assignment crops, in dataset-index order."""

from __future__ import annotations

import numpy as np
import torch

from util import dist as dist_util


class MemoryBank:
    """(views, N, dim) embeddings, the same on every process, with two masks: `fresh`, the rows written since the last
    `rotate()`, and `usable`, those written during the previous epoch, the only ones the next clustering sees (as
    SwAV's bank, which holds the images of the previous epoch; an image dropped with the last partial batch of an
    epoch is left out of the next clustering and its assignment is ignored by the loss).

    Kept in dataset order rather than per process, so a checkpoint resumes on any number of processes."""

    def __init__(self, num_views: int, num_images: int, dim: int, device: torch.device) -> None:
        self.embeddings = torch.zeros(num_views, num_images, dim, device=device)
        self.fresh = torch.zeros(num_images, dtype=torch.bool)
        self.usable = torch.zeros(num_images, dtype=torch.bool)

    def write(self, idx: torch.Tensor, views: torch.Tensor) -> None:
        """Store this process's batch: idx (B,) dataset indices, views (views, B, dim). Distributed, every rank's
        batch is gathered so the banks stay identical; an image twice in one step (a wrapped-around duplicate)
        keeps its last copy in rank order."""
        idx = dist_util.all_gather_rows(idx.to(dist_util.collective_device())).cpu()  # (B x world,)
        views = dist_util.all_gather_rows(views.transpose(0, 1).contiguous()).transpose(0, 1)  # (views, B x world, dim)
        keep = last_occurrences(idx.numpy())
        self.embeddings[:, idx[keep].to(self.embeddings.device)] = views[:, keep.to(views.device)].to(self.embeddings)
        self.fresh[idx] = True

    def rotate(self) -> None:
        """At an epoch's start: the rows written since the last rotation become the ones to cluster."""
        self.usable, self.fresh = self.fresh.clone(), torch.zeros_like(self.fresh)

    def state_dict(self) -> dict:
        return {"embeddings": self.embeddings.cpu(), "fresh": self.fresh.clone(), "usable": self.usable.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state["embeddings"].shape != self.embeddings.shape:
            raise ValueError(
                f"memory bank of shape {tuple(state['embeddings'].shape)}, not {tuple(self.embeddings.shape)}"
            )
        self.embeddings.copy_(state["embeddings"])
        self.fresh.copy_(state["fresh"])
        self.usable.copy_(state["usable"])


def last_occurrences(idx: np.ndarray) -> torch.Tensor:
    """Positions of the last occurrence of every distinct value of idx, in increasing order."""
    _, first_in_reversed = np.unique(idx[::-1], return_index=True)
    return torch.from_numpy(np.sort(len(idx) - 1 - first_in_reversed))
