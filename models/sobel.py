"""Fixed Sobel front end (paper, section 4): grayscale, then horizontal and vertical Sobel filters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Sobel(nn.Module):
    """(B, 3, H, W) RGB -> (B, 2, H, W) Sobel x / y responses of the grayscale image. No learnable weights."""

    def __init__(self) -> None:
        super().__init__()
        # 1x1 conv averaging the channels (weights 1/3) then the two 3x3 Sobel kernels; buffers, never trained.
        self.register_buffer("gray_weight", torch.full((1, 3, 1, 1), 1.0 / 3.0))
        sobel_x = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("sobel_weight", torch.stack([sobel_x, sobel_x.T])[:, None])  # (2, 1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = F.conv2d(x, self.gray_weight)
        return F.conv2d(gray, self.sobel_weight, padding=1)
