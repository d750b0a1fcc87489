"""DeepCluster-v2's head (SwAV's): projection MLP -> L2-normalised embedding -> frozen prototype heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import Backbone


class ProjectionPrototypes(nn.Module):
    """Linear(in, hidden) - BN - ReLU - Linear(hidden, out), then one bias-free Linear(out, k) per prototype head.

    The prototypes are not trained: at every epoch's start each head's weights become the centroids of its k-means
    on the memory bank (SwAV freezes them for the whole DeepCluster-v2 run)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, prototypes: list[int]) -> None:
        super().__init__()
        self.projection = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
        )
        self.prototypes = nn.ModuleList(nn.Linear(out_dim, k, bias=False) for k in prototypes)
        self.prototypes.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """features (B, in_dim) pooled backbone features -> the (B, out_dim) unit embedding and, per head h, its
        (B, k_h) cosines to the head's prototypes (unit centroids)."""
        hidden = self.projection[:-1](features)  # (B, hidden) after Linear - BN - ReLU
        # float32 from the last projection layer on, under autocast too: the scores are divided by a temperature of
        # 0.1, which would turn bf16's 3-digit rounding into logit noise, and the bank keeps these embeddings.
        with torch.autocast(hidden.device.type, enabled=False):
            embedding = F.normalize(self.projection[-1](hidden.float()), dim=1)  # (B, out_dim), unit rows
            return embedding, [head(embedding) for head in self.prototypes]  # per head (B, k_h)


class MultiCropNet(nn.Module):
    """backbone + ProjectionPrototypes over a list of crops: crops of one resolution go through the backbone
    together (SwAV's multi-resolution forward). Returns the embeddings and each head's scores of every crop,
    crop-major: rows [c * B, (c + 1) * B) are crop c of the batch."""

    def __init__(self, backbone: Backbone, head: ProjectionPrototypes) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """crops: C tensors (B, 3, s_c, s_c) -> embeddings (C x B, out_dim) and per head (C x B, k_h) scores."""
        features, start = [], 0
        while start < len(crops):  # the crops of one resolution run through the backbone as one batch
            stop = start + 1
            while stop < len(crops) and crops[stop].shape[-1] == crops[start].shape[-1]:
                stop += 1
            features.append(self.backbone(torch.cat(crops[start:stop])))  # ((stop - start) x B, D)
            start = stop
        self.features = features[0].detach()  # the first resolution's pooled features, for the online probe
        return self.head(torch.cat(features))  # (C x B, D) in, crop-major
