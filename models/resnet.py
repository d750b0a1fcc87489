"""ResNet-18/50 on torchvision's implementation, optionally with the CIFAR stem (3x3 conv, no max-pool)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from models.backbone import Backbone


class ResNet(Backbone):
    """torchvision ResNet without its fc layer; parameter names match torchvision's state dicts.

    Taps (as in mmselfsup's ResNet with out_indices 0..4): Feature1 after conv1+bn+relu (before the max-pool),
    Feature2..Feature5 after layer1..layer4.
    """

    def __init__(self, depth: int, sobel: bool = False, cifar_stem: bool = False) -> None:
        super().__init__(sobel)
        net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
        if cifar_stem:
            net.conv1 = nn.Conv2d(self.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif sobel:
            net.conv1 = nn.Conv2d(2, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if sobel or cifar_stem:
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = (
            net.conv1,
            net.bn1,
            net.relu,
            net.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = net.fc.in_features
        self.head_activation = nn.Identity()  # pooled ResNet features are already post-ReLU

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(self._front(x))))
        taps = [x]
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.forward_taps(x)[-1]), 1)
