"""An optional MLP neck between the backbone's pooled features and DeepCluster's classifier.

The paper's AlexNet and VGG16 cluster and classify fc7, behind two fully connected layers, and are evaluated on
their convolutional layers; a ResNet clusters, classifies and is evaluated on the same pooled features. The neck
gives a ResNet the same shape: the pooled features -> (Linear - BatchNorm - ReLU) x 2 -> clustered and classified;
the kNN monitor and every evaluation read the pooled features below it. Not in the paper for ResNets.
"""

from __future__ import annotations

import torch
from torch import nn

NECKS = ("none", "mlp")


class MLPNeck(nn.Sequential):
    """Two Linear-BN-ReLU layers of `hidden` units (AlexNet's fc6/fc7, with BatchNorm): (B, in_dim) -> (B, hidden)."""

    def __init__(self, in_dim: int, hidden: int = 2048) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
        )
        self.out_dim = hidden


def build_neck(kind: str, in_dim: int) -> MLPNeck | None:
    """None for `none` (the paper); an MLPNeck for `mlp`."""
    if kind not in NECKS:
        raise ValueError(f"unknown neck {kind!r}; choose from {', '.join(NECKS)}")
    return MLPNeck(in_dim) if kind == "mlp" else None


class Trunk(nn.Module):
    """What DeepCluster trains: the backbone, and the neck when there is one. `backbone` is what the monitor and the
    evaluations read; `clustered(features)` maps the backbone's pooled features to the clustered (and classified)
    ones: the neck's output, or the features themselves (AlexNet/VGG: their fc7, the paper's)."""

    def __init__(self, backbone: nn.Module, neck: MLPNeck | None) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, neck
        self.out_dim = backbone.feature_dim if neck is None else neck.out_dim

    @property
    def project(self):
        """None without a neck; else clustered(), the map from the backbone's features to the clustered ones."""
        return None if self.neck is None else self.clustered

    def clustered(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.neck is None else self.neck(self.backbone.head_activation(features))

    def classifier_input(self, features: torch.Tensor) -> torch.Tensor:
        """(B, out_dim): what the pseudo-label classifier reads (the paper: ReLU after AlexNet's fc7)."""
        return self.backbone.head_activation(features) if self.neck is None else self.clustered(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
