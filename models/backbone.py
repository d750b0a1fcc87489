"""The interface every architecture implements: pooled features for clustering and five layer taps."""

from __future__ import annotations

import torch
from torch import nn

from models.sobel import Sobel


class Backbone(nn.Module):
    """Base class. Subclasses set `feature_dim`, `head_activation` and implement `_stages`.

    forward(x) -> (B, feature_dim): the representation that is clustered and fed to the classifier head.
    forward_taps(x) -> five feature maps, Feature1..Feature5 of the evaluation protocols.
    """

    feature_dim: int
    head_activation: nn.Module

    def __init__(self, sobel: bool) -> None:
        super().__init__()
        self.sobel = Sobel() if sobel else None

    @property
    def in_channels(self) -> int:
        return 2 if self.sobel is not None else 3

    def _front(self, x: torch.Tensor) -> torch.Tensor:
        return self.sobel(x) if self.sobel is not None else x

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
