"""Frozen-feature probes: per-tap pooling (Feature1..Feature5) and the linear heads (kNN: util/knn.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from models import Backbone, check_image_size

TAP_NAMES = ("feature1", "feature2", "feature3", "feature4", "feature5")
# mmselfsup's ResNet-50 multi-head protocol at 224 px: AvgPool2d(kernel, stride, padding) per tap, giving
# 9216, 9216, 8192, 9216, 8192 dims after flattening.
RESNET50_224_POOLING = ((10, 10, 4), (16, 8, 0), (13, 5, 0), (8, 3, 0), (6, 1, 0))
TARGET_DIMS = 9216


class TapPooling(nn.Module):
    """Pools each of the five taps to about 9k dims: the exact protocol for ResNet-50 at 224 px, else adaptive
    average pooling to s x s with s = round(sqrt(9216 / C)), never larger than the map itself."""

    def __init__(self, tap_shapes: list[tuple[int, int, int]], exact_resnet50: bool) -> None:
        super().__init__()
        pools: list[nn.Module] = []
        self.dims: list[int] = []
        for i, (channels, height, width) in enumerate(tap_shapes):
            if exact_resnet50:
                kernel, stride, pad = RESNET50_224_POOLING[i]
                pools.append(nn.AvgPool2d(kernel, stride, pad))
                side = (height + 2 * pad - kernel) // stride + 1
                side_w = (width + 2 * pad - kernel) // stride + 1
            else:
                side = side_w = max(1, min(round(math.sqrt(TARGET_DIMS / channels)), height, width))
                pools.append(nn.AdaptiveAvgPool2d((side, side_w)))
            self.dims.append(channels * side * side_w)
        self.pools = nn.ModuleList(pools)

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """taps: five (B, C_i, H_i, W_i) maps -> five pooled (B, C_i, s_i, s_i) maps."""
        return [pool(tap) for pool, tap in zip(self.pools, taps, strict=True)]


class NoTaps(nn.Module):
    """The pooling of a network without multi-head taps (the pixel baseline): no pooled tap."""

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return []


def build_tap_pooling(backbone: Backbone, arch: str, image_size: int, device: torch.device) -> TapPooling:
    check_image_size(backbone, arch, image_size)
    with torch.inference_mode():
        taps = backbone.forward_taps(torch.zeros(1, 3, image_size, image_size, device=device))
    shapes = [tuple(t.shape[1:]) for t in taps]
    return TapPooling(shapes, exact_resnet50=(arch == "resnet50" and image_size == 224)).to(device)


class MultiHead(nn.Module):
    """One BatchNorm (no affine) + Linear per pooled tap, all trained at once (mmselfsup's multi-head protocol)."""

    def __init__(self, tap_channels: list[int], tap_dims: list[int], num_classes: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for c in tap_channels)
        self.heads = nn.ModuleList(nn.Linear(d, num_classes) for d in tap_dims)
        for head in self.heads:
            nn.init.normal_(head.weight, 0.0, 0.01)
            nn.init.zeros_(head.bias)

    def forward(self, pooled: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            head(torch.flatten(norm(x.float()), 1))
            for norm, head, x in zip(self.norms, self.heads, pooled, strict=True)
        ]


class AvgPoolHead(nn.Module):
    """Global average pooling of the last tap -> Linear (the AvgPool protocol)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: (B, C) globally averaged last tap."""
        return self.fc(pooled.float())
